"""A CLI start that does not need torch does not import it: ``--help``, the parser, the
dataset verbs (``ingest``, ``inspect``, ``verify``), ``report SWEEP`` and ``jobs SWEEP`` run
without torch, numba or the extension."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import pytest

from twinhpc.cli.main import build_parser, main

#: runs in a fresh interpreter: build the parser, print every verb's help, run the dataset verbs,
#: then print the heavy modules that were imported (none expected)
PROBE = """
import contextlib, io, sys
import numpy as np
from twinhpc.cli.main import build_parser, main, VERBS
src, out, sweep = sys.argv[1], sys.argv[2], sys.argv[3]
np.savez(src, x=np.arange(40, dtype=np.float32).reshape(20, 2), y=np.arange(20) % 2)
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for verb in VERBS:
        try:
            main([verb, "--help"])
        except SystemExit:
            pass
    for bench in ("loader", "allreduce"):
        try:
            main(["bench", bench, "--help"])
        except SystemExit:
            pass
    codes = [main(["ingest", "npz", src, "--out", out, "--label", "y"]), main(["inspect", out]), main(["verify", out])]
    codes += [main(["report", sweep]), main(["jobs", sweep])]
print(codes, sorted(m for m in ("torch", "twinhpc._C", "numba") if m in sys.modules))
"""


def test_parser_help_dataset_verbs_and_sweep_report_do_not_import_torch(tmp_path):
    from tests import sweep_builder

    sweep_builder.build(tmp_path, str(tmp_path / "data"))  # a finished sweep with the trials' results.h5
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "a.npz"), str(tmp_path / "ds"), str(tmp_path / "sweep")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 0, 0, 0] []", proc.stdout + proc.stderr
    assert (tmp_path / "sweep" / "report" / "metric_vs_epochs.png").is_file()


def help_text(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_bench_allreduce_help_states_the_benchmark_defaults(capsys):
    from twinhpc.bench.allreduce import DEFAULT_MAX_BYTES, DEFAULT_MIN_BYTES

    text = " ".join(help_text("bench", "allreduce", capsys=capsys).split())
    assert f"(default {DEFAULT_MIN_BYTES >> 10}KiB)" in text
    assert f"(default {DEFAULT_MAX_BYTES >> 20}MiB;" in text


def test_bench_allreduce_sizes_are_optional_and_parsed():
    parser = build_parser()
    args = parser.parse_args(["bench", "allreduce"])
    assert args.min_bytes is None and args.max_bytes is None
    args = parser.parse_args(["bench", "allreduce", "--min-bytes", "64KiB", "--max-bytes", "1MiB"])
    assert (args.min_bytes, args.max_bytes) == (64 << 10, 1 << 20)


def test_every_verb_has_help(capsys):
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for verb in verbs:
        assert len(help_text(verb, capsys=capsys)) > 200, verb


#: `twinhpc sweep status` on a sweep created here (debug executor, never run), then the heavy
#: modules imported: none (the status reads sweep.h5 alone)
STATUS_PROBE = """
import contextlib, io, sys, tomllib
from twinhpc.config import Job
from twinhpc.config.reference import EXAMPLE
from twinhpc.tune import Sweep
from twinhpc.cli.main import main
space = '[sweep]\\nstrategy = "random"\\ntrials = 2\\n[sweep.space."optim.lr"]\\nloguniform = [1e-4, 1e-1]\\n'
Sweep.create(Job.from_dict(tomllib.loads(EXAMPLE + "\\n" + space)), sys.argv[1], executor="debug")
out = io.StringIO()
with contextlib.redirect_stdout(out):
    codes = [main(["sweep", "status", sys.argv[1]]), main(["sweep", "status", sys.argv[1], "--json"])]
heavy = sorted(m for m in ("torch", "twinhpc._C", "numba", "submitit") if m in sys.modules)
print(codes, "trials: none started of 2" in out.getvalue(), heavy)
"""


def test_sweep_status_does_not_import_torch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", STATUS_PROBE, str(tmp_path / "sweep")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0] True []", proc.stdout + proc.stderr


def test_sweep_status_of_an_unknown_folder_names_it(tmp_path, capsys):
    assert main(["sweep", "status", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: not a sweep folder" in capsys.readouterr().err
    assert main(["sweep", "resume", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: not a sweep folder" in capsys.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly_with_status_141(monkeypatch, capsys):
    """``twinhpc ... | head -1``: the reader leaves early and the next write fails with EPIPE;
    the command ends without a traceback, with 128 + SIGPIPE."""

    class ClosedPipe(io.TextIOBase):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            raise io.UnsupportedOperation("no file descriptor")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info"]) == 141
    assert "Traceback" not in capsys.readouterr().err
