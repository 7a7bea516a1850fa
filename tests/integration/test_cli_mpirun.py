"""The command line as a user starts it: ``python -m twinhpc`` in a fresh process, alone and under
``mpirun -n N`` (the same commands run in-process in tests/unit/test_cli_*.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
ROOT = Path(__file__).resolve().parents[2]
#: code that runs `twinhpc info --json` as if twinhpc._C were not built
WITHOUT_EXTENSION = (
    "import sys; sys.modules['twinhpc._C'] = None; "
    "from twinhpc.cli.main import main; sys.exit(main(['info', '--json']))"
)


def clean_env() -> dict:
    """This environment without launcher variables (the test process may be an MPI singleton)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "SLURM_"))}
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMP_NUM_THREADS="1",
    )
    return env


def twinhpc(*args, ranks: int | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "twinhpc", *map(str, args)]
    if ranks is not None:
        cmd = [MPIRUN, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=clean_env())


def shard_digests(directory: Path) -> dict:
    m = json.loads((directory / "manifest.json").read_text())
    return {s: [(sh["file"], sh["count"], sh["sha256"]) for sh in v["shards"]] for s, v in m["splits"].items()}


def test_the_module_entry_point_prints_help():
    r = twinhpc("--help")
    assert r.returncode == 0 and "ingest" in r.stdout and "train" in r.stdout, r.stderr


@needs_mpirun
def test_ingest_is_the_same_at_1_2_and_3_ranks(npz_source, tmp_path):
    digests = {}
    for n in (1, 2, 3):
        r = twinhpc("ingest", "npz", npz_source, "--out", tmp_path / f"ds{n}", "--shards", 3, ranks=n)
        assert r.returncode == 0, r.stderr
        digests[n] = shard_digests(tmp_path / f"ds{n}")
    assert digests[1] == digests[2] == digests[3]


@needs_mpirun
def test_bad_input_exits_non_zero_on_every_rank(npz_source, tmp_path):
    r = twinhpc("ingest", "npz", npz_source, "--out", tmp_path / "ds", "--shards", 500, ranks=2)
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}] twinhpc ingest: error: --shards 500 is larger than the sample count (101)" in r.stderr
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.npz"]


@needs_mpirun
def test_info_json_under_mpirun_has_a_row_per_rank():
    r = twinhpc("info", "--json", ranks=2)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # printed by rank 0 only: exactly one JSON object
    rows = report["ranks"]
    assert [r["rank"] for r in rows] == [0, 1]
    assert all(r["size"] == 2 and r["launcher_size"] == 2 for r in rows)
    assert len({r["pid"] for r in rows}) == 2
    assert not [w for w in report["warnings"] if "launcher" in w]


def test_info_works_without_the_extension():
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTENSION],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["extension"]["built"] is False
    assert "not built" in report["extension"]["error"]
    assert any("build_ext --inplace" in w for w in report["warnings"])
