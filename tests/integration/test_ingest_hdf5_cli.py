"""``twinhpc ingest hdf5`` as a user starts it, under ``mpirun -n 2``: the same shards as one
process; a missing path ends both ranks with status 2, each naming the file and the path."""

from __future__ import annotations

import json
import shutil

import pytest

from tests import fixtures as fx
from tests.integration.procs import MPIRUN2, TWINHPC, run

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")


def digests(directory):
    m = json.loads((directory / "manifest.json").read_text())
    return m["provenance"]["details"], {
        s: [(sh["file"], sh["count"], sh["sha256"]) for sh in v["shards"]] for s, v in m["splits"].items()
    }


def test_two_ranks_write_what_one_writes_and_fail_together(tmp_path):
    fx.write_pdebench_2d(tmp_path / "2D_rdb.h5", n=17, t=3, x=6, y=6)
    ingest = [*TWINHPC, "ingest", "hdf5", tmp_path / "2D_rdb.h5", "--field", "h=*/data", "--shards", "3"]
    run([*ingest, "--out", tmp_path / "one"], tmp_path)
    run([*MPIRUN2, *ingest, "--out", tmp_path / "two"], tmp_path)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")

    bad = [*MPIRUN2, *TWINHPC, "ingest", "hdf5", tmp_path / "2D_rdb.h5", "--field", "h=*/u", "--out", tmp_path / "bad"]
    r = run(bad, tmp_path, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    for rank in (0, 1):
        src = tmp_path / "2D_rdb.h5"
        line = f"[rank {rank}] twinhpc ingest: error: {src}: --field h=*/u: sample group /0000 has no 'u'"
        assert line in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2D_rdb.h5", "one", "two"]
