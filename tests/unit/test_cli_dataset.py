"""The dataset commands as a user runs them, in this process: ``twinhpc ingest/inspect/verify``
(under mpirun: tests/integration/test_cli_mpirun.py)."""

from __future__ import annotations

import json

import numpy as np


def test_inspect_and_verify(cli, npz_source, tmp_path):
    out = tmp_path / "ds"
    assert cli("ingest", "npz", npz_source, "--out", out, "--shards", 2).returncode == 0
    r = cli("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sum(s["count"] for s in report["splits"].values()) == 101
    x = np.load(npz_source)["x"]
    stats = report["stats"]["train"]["x"]
    assert x.min() <= stats["min"] <= stats["max"] <= x.max()
    assert sum(report["class_counts"]["train"].values()) == report["splits"]["train"]["count"]
    text = cli("inspect", out)
    assert text.returncode == 0 and "train" in text.stdout and "float32" in text.stdout
    ok = cli("verify", out)
    assert ok.returncode == 0, ok.stderr
    (out / "val-1-of-2.h5").write_bytes(b"not hdf5")
    bad = cli("verify", out)
    assert bad.returncode == 1
    assert "val-1-of-2.h5" in bad.stderr and "checksum mismatch" in bad.stderr


def test_errors_name_the_path(cli, tmp_path):
    missing = tmp_path / "nope.npz"
    r = cli("ingest", "npz", missing, "--out", tmp_path / "ds")
    assert r.returncode == 2 and str(missing) in r.stderr
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("hello")
    r = cli("ingest", "npz", not_npz, "--out", tmp_path / "ds")
    assert r.returncode == 2 and str(not_npz) in r.stderr
    r = cli("verify", tmp_path / "nodir")
    assert r.returncode == 2 and "nodir" in r.stderr
    r = cli("ingest", "nosuchkind", not_npz, "--out", tmp_path / "ds")
    assert r.returncode == 2 and "unknown KIND 'nosuchkind'" in r.stderr
    assert not (tmp_path / "ds").exists()
