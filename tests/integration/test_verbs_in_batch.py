"""Verbs as a batch job sees them, in real `twinhpc` processes: SIGUSR2 / SIGTERM in every
verb (twinhpc/cli/main.py), progress lines off a terminal, the Python API's log lines.

Signals: a "storm".
Once the process has its handlers (/proc/PID/status lists the signal as caught),
the signal is sent every 0.2 s until the process ends, so some arrive while it imports, some
while it works and some while it shuts down. A verb must finish its work and exit with the
status twinhpc/cli/main.py's ON_SIGNAL gives it — never die of the signal (exit -12/-15).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.fixtures import small_cnn_job
from tests.integration.procs import ENV, TWINHPC, run
from twinhpc.io.results import read_results

JOB = small_cnn_job("data/images")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """data/images (96 8×8 grey images, 3 classes), preprocessed, and runs/job trained (2 epochs)."""
    work = tmp_path_factory.mktemp("signals")
    rng = np.random.default_rng(3)
    np.savez(
        work / "images.npz", image=rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), label=rng.integers(0, 3, 96)
    )
    (work / "job.toml").write_text(JOB)
    run(TWINHPC + ["ingest", "npz", "images.npz", "--out", "data/images", "--label", "label"], work)
    run(TWINHPC + ["preprocess", "job.toml"], work)
    run(TWINHPC + ["train", "job.toml"], work)
    return work


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def storm(args, cwd, sig=signal.SIGUSR2, timeout=240, ranks=0) -> tuple[int, str, str, int]:
    """Run ``args``; once the process started (with ``ranks``: that many of its children, the
    ranks mpirun starts) catches ``sig``, send it to the process every 0.2 s until it ends —
    with ``ranks``, until its ranks have ended: mpirun forwards signals while its job runs, and
    one arriving while it shuts down after the ranks exited can end mpirun itself (Open MPI's
    handlers are gone by then), which says nothing about twinhpc.
    Returns (exit status, stdout, stderr, signals sent)."""
    proc = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, sent = time.monotonic() + timeout, 0

    def ready() -> bool:
        pids = children(proc.pid) if ranks else [proc.pid]
        return len(pids) >= max(ranks, 1) and all(catches(pid, sig) for pid in pids)

    try:
        while not ready():
            assert proc.poll() is None, f"ended before it caught {sig!r}: {proc.communicate()}"
            assert time.monotonic() < deadline, "no handler installed in time"
            time.sleep(0.01)
        while proc.poll() is None and (not ranks or children(proc.pid)):
            assert time.monotonic() < deadline, "did not end in time"
            proc.send_signal(sig)
            sent += 1
            time.sleep(0.2)
        out, err = proc.communicate(timeout=max(30, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err, sent


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["USR2", "TERM"])
def test_validate_finishes_its_report_and_exits_0(work, sig):
    code, out, err, sent = storm(TWINHPC + ["validate", "job.toml", "--run", "runs/job"], work, sig)
    assert code == 0 and sent >= 2, (code, sent, out, err)
    assert "val split" in out and "confusion (row: true class" in out, out  # the whole report
    assert f"twinhpc validate: {signal.Signals(sig).name} received: finished first" in err, err


def test_preprocess_finishes_then_asks_for_a_requeue(work):
    code, out, err, sent = storm(TWINHPC + ["preprocess", "job.toml", "--force"], work)
    assert code == 255 and sent >= 2, (code, sent, out, err)
    assert "wrote " in out and "images-pre (train 76, val 10, test 10)" in out, out
    assert "twinhpc preprocess: SIGUSR2 received: finished first; exit status 255 asks for a requeue" in err, err
    again = run(TWINHPC + ["preprocess", "job.toml"], work)  # what it wrote is whole and current
    assert "up to date" in again.stdout, again.stdout


def test_predict_and_report_finish(work):
    code, out, err, _ = storm(
        TWINHPC
        + ["predict", "job.toml", "--run", "runs/job", "--input", "data/images", "--split", "val", "--out", "p.h5"],
        work,
    )
    assert code == 0 and "wrote" in out, (code, out, err)
    with h5py.File(work / "p.h5") as f:
        assert len(f["prediction"]) == len(f["index"]) > 0
    code, out, err, _ = storm(TWINHPC + ["report", "runs/job", "--no-plots"], work)
    assert code == 0 and "twinhpc report: SIGUSR2 received: finished first" in err, (code, out, err)
    assert out.strip(), "the report printed nothing"


def test_train_signalled_from_its_start_checkpoints_and_asks_for_a_requeue(work):
    """Signals from the first instant on (during imports and set-up too): the run stops after
    its first steps with a checkpoint, exit 255, its attempt recorded as preempted."""
    code, out, err, sent = storm(
        TWINHPC + ["train", "job.toml", "--out", "runs/cut", "--set", "train.epochs=50"], work, timeout=300
    )
    assert code == 255, (code, sent, out, err)
    results = read_results(work / "runs" / "cut")
    (attempt,) = results["attempts"]
    assert attempt["reason"] == "preempted" and 0 < attempt["last_step"] < 50 * 12, attempt
    assert (work / "runs" / "cut" / "ckpt" / f"step-{attempt['last_step']}.h5").is_file()


def test_validate_under_mpirun_finishes(work):
    """Two ranks; the signals go to mpirun, which forwards them to both ranks."""
    code, out, err, sent = storm(
        ["mpirun", "-n", "2"] + TWINHPC + ["validate", "job.toml", "--run", "runs/job"], work, timeout=300, ranks=2
    )
    assert code == 0 and sent >= 1, (code, sent, out, err)
    assert "confusion (row: true class" in out, out


def test_off_a_terminal_train_prints_progress_lines_and_epoch_lines(work):
    """stderr is a pipe: a progress line every train.progress_seconds (tiny here) besides the
    epoch lines; they reach the rank log file too."""
    r = run(
        TWINHPC
        + ["train", "job.toml", "--out", "runs/progress", "--set", "train.progress_seconds=0.001"]
        + ["--set", "train.epochs=1"],
        work,
    )
    lines = [line for line in r.stderr.splitlines() if line.startswith("epoch 1/1: step ")]
    assert len(lines) >= 5, r.stderr
    assert all(re.fullmatch(r"epoch 1/1: step \d+/9 \(\d+%\) - \d+ samples/s - ETA \d+s", x) for x in lines), lines
    assert re.search(r"^epoch 1/1 - 9 steps - loss: ", r.stderr, re.M), r.stderr
    log = (work / "runs" / "progress" / "logs" / "twinhpc-train.rank0.log").read_text()
    assert lines[0] in log


API = """
import sys
from twinhpc.config import load_job
from twinhpc.train import train
result = train(load_job("job.toml", ["train.epochs=2"]), out="runs/api")
print(result.status, file=sys.stdout)
"""


def test_the_python_api_logs_the_epoch_lines_of_the_cli(work):
    r = run([sys.executable, "-c", API], work)
    assert r.stdout.strip() == "finished", r.stdout
    for epoch in (1, 2):
        assert re.search(rf"^epoch {epoch}/2 - 9 steps - loss: [\d.]+ - accuracy: ", r.stderr, re.M), r.stderr
    assert "training cnn on 1 rank(s)" in r.stderr, r.stderr
