"""A benchmark's results file: one compound dataset per table with typed columns, the caller's
attributes then the version stamp; an unwritable folder is a TwinError naming it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from twinhpc import __version__
from twinhpc.errors import TwinError
from twinhpc.io.bench_results import table_array, write_results

ROWS = [
    {"impl": "mpi4py", "bytes": 4096, "time_s": 1.5e-5, "ok": True},
    {"impl": "twinhpc:auto", "bytes": np.int64(16384), "time_s": 2.0, "ok": False},
]


def test_columns_follow_the_first_row():
    t = table_array(ROWS)
    assert t.dtype.names == ("impl", "bytes", "time_s", "ok")
    assert [t.dtype[k] for k in t.dtype.names] == [np.dtype("S40"), np.int64, np.float64, np.int64]
    assert t["impl"].tolist() == [b"mpi4py", b"twinhpc:auto"] and t["bytes"].tolist() == [4096, 16384]


@pytest.mark.parametrize("created", [True, False])
def test_tables_and_attributes_written(tmp_path, created):
    path = write_results(
        tmp_path / "sub" / "x.h5",
        {"rows": ROWS, "total": [{"rank": -1, "mb_s": 9.5}]},
        {"world_size": 2, "dataset": "d"},
        created=created,
    )
    assert path == tmp_path / "sub" / "x.h5"
    with h5py.File(path, "r") as f:
        assert list(f) == ["rows", "total"]
        np.testing.assert_array_equal(f["rows"][()], table_array(ROWS))
        assert f["total"][0]["mb_s"] == 9.5
        stamp = ["twinhpc_version", "created"] if created else ["twinhpc_version"]
        assert sorted(f.attrs) == sorted(["world_size", "dataset", *stamp])
        assert f.attrs["world_size"] == 2 and f.attrs["twinhpc_version"] == __version__
    assert [p.name for p in path.parent.iterdir()] == ["x.h5"]


def test_an_unwritable_folder_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TwinError, match=rf"--results {tmp_path / 'file'}: cannot write x.h5"):
        write_results(tmp_path / "file" / "x.h5", {"rows": ROWS}, {})
