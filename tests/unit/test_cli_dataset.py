"""The dataset commands as a user runs them: ``twinhpc ingest/inspect/verify``, alone and under mpirun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MPIRUN = shutil.which("mpirun")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMP_NUM_THREADS": "1"}


def twinhpc(*args, ranks: int | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "twinhpc", *map(str, args)]
    if ranks is not None:
        cmd = [MPIRUN, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture
def source(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "src.npz"
    np.savez(path, x=rng.random((101, 8), dtype=np.float32), y=rng.integers(0, 3, 101))
    return path


def shard_digests(directory: Path) -> dict:
    m = json.loads((directory / "manifest.json").read_text())
    return {s: [(sh["file"], sh["count"], sh["sha256"]) for sh in v["shards"]] for s, v in m["splits"].items()}


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_ingest_is_the_same_at_1_2_and_3_ranks(source, tmp_path):
    digests = {}
    for n in (1, 2, 3):
        r = twinhpc("ingest", "npz", source, "--out", tmp_path / f"ds{n}", "--shards", 3, ranks=n)
        assert r.returncode == 0, r.stderr
        digests[n] = shard_digests(tmp_path / f"ds{n}")
    assert digests[1] == digests[2] == digests[3]


def test_inspect_and_verify(source, tmp_path):
    out = tmp_path / "ds"
    assert twinhpc("ingest", "npz", source, "--out", out, "--shards", 2).returncode == 0
    r = twinhpc("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sum(s["count"] for s in report["splits"].values()) == 101
    x = np.load(source)["x"]
    stats = report["stats"]["train"]["x"]
    assert x.min() <= stats["min"] <= stats["max"] <= x.max()
    assert sum(report["class_counts"]["train"].values()) == report["splits"]["train"]["count"]
    text = twinhpc("inspect", out)
    assert text.returncode == 0 and "train" in text.stdout and "float32" in text.stdout
    ok = twinhpc("verify", out)
    assert ok.returncode == 0, ok.stderr
    (out / "val-1-of-2.h5").write_bytes(b"not hdf5")
    bad = twinhpc("verify", out)
    assert bad.returncode == 1
    assert "val-1-of-2.h5" in bad.stderr and "checksum mismatch" in bad.stderr


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_bad_input_exits_non_zero_on_every_rank(source, tmp_path):
    r = twinhpc("ingest", "npz", source, "--out", tmp_path / "ds", "--shards", 500, ranks=2)
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}] twinhpc ingest: error: --shards 500 is larger than the sample count (101)" in r.stderr
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.npz"]


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.npz"
    r = twinhpc("ingest", "npz", missing, "--out", tmp_path / "ds")
    assert r.returncode == 2 and str(missing) in r.stderr
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("hello")
    r = twinhpc("ingest", "npz", not_npz, "--out", tmp_path / "ds")
    assert r.returncode == 2 and str(not_npz) in r.stderr
    r = twinhpc("verify", tmp_path / "nodir")
    assert r.returncode == 2 and "nodir" in r.stderr
    r = twinhpc("ingest", "nosuchkind", not_npz, "--out", tmp_path / "ds")
    assert r.returncode == 2 and "unknown KIND 'nosuchkind'" in r.stderr
    assert not (tmp_path / "ds").exists()


def test_help_explains_every_verb():
    r = twinhpc("--help")
    assert r.returncode == 0
    for verb in ("info", "ingest", "inspect", "verify", "bench"):
        assert verb in r.stdout
        h = twinhpc(verb, "--help")
        assert h.returncode == 0 and len(h.stdout) > 200, verb
