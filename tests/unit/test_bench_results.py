"""Benchmark records: one compound dataset per table with typed columns, the caller's attributes
and the stamp (machine, commit, command, date, device); a new file per run, never over an
earlier one; the single-file layout read as legacy records; an unwritable folder is named."""

from __future__ import annotations

import math
import re

import h5py
import numpy as np
import pytest

from twinhpc import __version__
from twinhpc.errors import TwinError
from twinhpc.io import bench_results as br
from twinhpc.io.bench_results import read_record, read_records, table_array, write_record, write_results
from twinhpc.io.results import source_commit

ROWS = [
    {"impl": "mpi4py", "bytes": 4096, "time_s": 1.5e-5, "ok": True},
    {"impl": "twinhpc:auto", "bytes": np.int64(16384), "time_s": 2.0, "ok": False},
]
MACHINE = {
    "machine_host": "box",
    "machine_cpu": "Test CPU",
    "machine_cores": 4,
    "machine_memory_bytes": 8 << 30,
    "machine_memory_gbps": 12.5,
    "machine_gpus": "",
}


def test_columns_follow_the_first_row():
    t = table_array(ROWS)
    assert t.dtype.names == ("impl", "bytes", "time_s", "ok")
    assert [t.dtype[k] for k in t.dtype.names] == [np.dtype("S40"), np.int64, np.float64, np.int64]
    assert t["impl"].tolist() == [b"mpi4py", b"twinhpc:auto"] and t["bytes"].tolist() == [4096, 16384]


def test_a_record_holds_the_tables_the_attributes_and_the_stamp(tmp_path, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4000000000")
    path = write_results(
        tmp_path / "sub" / "x.h5", {"rows": ROWS, "total": [{"rank": -1, "mb_s": 9.5}]}, {"world_size": 2}
    )
    assert path.parent == tmp_path / "sub" / "x"
    commit = source_commit()
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{commit[:7]}\.h5", path.name)
    with h5py.File(path, "r") as f:
        assert list(f) == ["rows", "total"]
        np.testing.assert_array_equal(f["rows"][()], table_array(ROWS))
        assert sorted(f.attrs) == sorted(["world_size", *br.STAMP])
        a = f.attrs
        assert a["world_size"] == 2 and a["twinhpc_version"] == __version__ and a["benchmark"] == "x"
        assert a["format"] == br.FORMAT and a["version"] == br.VERSION
        assert a["source_commit"] == commit and a["ranks"] == 2 and a["device"] == "cpu"
        assert a["allocator"] == "MALLOC_TRIM_THRESHOLD_=4000000000"
        assert "pytest" in a["command"] or "python" in a["command"]
        assert path.name.startswith(a["created"].replace("-", "").replace(":", ""))
        assert a["machine_cores"] >= 1 and a["machine_memory_bytes"] > 0 and a["machine_memory_gbps"] > 0
        assert a["machine_cpu"] and a["machine_host"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_benchmark_written_twice_leaves_two_records(tmp_path):
    """Two runs in the same second at the same commit: the second gets -2, the first is intact."""
    kw = dict(created="2026-12-01T10:00:00Z", commit="a" * 40, machine=MACHINE, command="bench")
    first = write_record(tmp_path, "loader", {"t": [{"ratio": 0.8}]}, {"run": 1}, **kw)
    second = write_record(tmp_path, "loader", {"t": [{"ratio": 0.9}]}, {"run": 2}, **kw)
    assert first.name == "20261201T100000Z-aaaaaaa.h5" and second.name == "20261201T100000Z-aaaaaaa-2.h5"
    records = read_records(tmp_path)["loader"]
    assert [r.attrs["run"] for r in records] == [1, 2]
    assert [r.rows("t")[0]["ratio"] for r in records] == [0.8, 0.9]


def test_a_record_reads_back_as_python_values(tmp_path):
    path = write_record(
        tmp_path,
        "kernels",
        {"rows": ROWS},
        {"names": ["a", "b"], "flag": True},
        created="2026-12-01T10:00:00Z",
        commit="unknown",
        machine=MACHINE,
        command="python benchmarks/kernels.py",
    )
    assert path.name == "20261201T100000Z-unknown.h5"
    r = read_record(path)
    assert r.benchmark == "kernels" and r.created == "2026-12-01T10:00:00Z" and not r.legacy
    assert r.attrs["names"] == ["a", "b"] and r.attrs["flag"] is True and r.attrs["machine_cpu"] == "Test CPU"
    assert r.rows("rows") == [
        {"impl": "mpi4py", "bytes": 4096, "time_s": 1.5e-5, "ok": 1},
        {"impl": "twinhpc:auto", "bytes": 16384, "time_s": 2.0, "ok": 0},
    ]
    assert r.rows("missing") == []


def test_the_single_file_layout_is_read_as_legacy_records(tmp_path):
    """FOLDER/NAME.h5 without a stamp: benchmark NAME, legacy, unknown commit; listed with the
    records of FOLDER/NAME/, oldest first."""
    with h5py.File(tmp_path / "loader.h5", "w") as f:
        f.create_dataset("total", data=table_array([{"rank": -1, "ratio": 0.82}]))
        f.attrs["created"] = "2026-11-28T23:08:26+00:00"
        f.attrs["ratio"] = 0.82
    write_record(tmp_path, "loader", {"total": [{"rank": -1, "ratio": 0.9}]}, {}, created="2026-12-01T00:00:00Z")
    (old, new) = read_records(tmp_path)["loader"]
    assert old.legacy and old.benchmark == "loader" and old.attrs["source_commit"] == "unknown"
    assert old.attrs["ratio"] == 0.82 and old.rows("total")[0]["ratio"] == 0.82
    assert not new.legacy and new.rows("total")[0]["ratio"] == 0.9


def test_device_is_the_gpu_model_for_cuda_runs(tmp_path):
    gpus = tmp_path / "gpus"
    for bus, model in (("0000:01:00.0", "NVIDIA H200"), ("0000:02:00.0", "NVIDIA H100")):
        (gpus / bus).mkdir(parents=True)
        (gpus / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:  42\n")
    assert br.gpu_models(gpus) == ["NVIDIA H200", "NVIDIA H100"]
    assert br.gpu_models(tmp_path / "none") == []
    assert br.device_name("cuda", "NVIDIA H200; NVIDIA H100") == "NVIDIA H200"
    assert br.device_name("cuda", "") == "cuda" and br.device_name("cpu", "NVIDIA H200") == "cpu"
    path = write_record(
        tmp_path / "r",
        "train_throughput",
        {"t": [{"x": 1}]},
        {"device": "cuda"},
        machine=MACHINE | {"machine_gpus": "NVIDIA H200"},
    )
    assert read_record(path).attrs["device"] == "NVIDIA H200"


def test_allocator_and_ranks_come_from_the_environment():
    assert br.allocator_setting({}) == "default"
    assert br.allocator_setting({"LD_PRELOAD": "libjemalloc.so", "MALLOC_ARENA_MAX": "2"}) == (
        "MALLOC_ARENA_MAX=2 LD_PRELOAD=libjemalloc.so"
    )
    assert br.launched_ranks({}) == 1 and br.launched_ranks({"SLURM_NTASKS": "4"}) == 4


def test_memory_bandwidth_is_measured():
    gbps = br.memory_gbps(1 << 20, repeat=3)
    assert math.isfinite(gbps) and gbps > 0.01


def test_an_unwritable_folder_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TwinError, match=rf"--results {tmp_path / 'file'}: cannot write x/"):
        write_results(tmp_path / "file" / "x.h5", {"rows": ROWS}, {})


def test_a_folder_without_records_is_named(tmp_path):
    with pytest.raises(TwinError, match=f"{tmp_path / 'no'}: not a folder of benchmark records"):
        read_records(tmp_path / "no")
    (tmp_path / "bad.h5").write_text("not HDF5")
    with pytest.raises(TwinError, match=f"{tmp_path / 'bad.h5'}: not a readable benchmark record"):
        read_records(tmp_path)
