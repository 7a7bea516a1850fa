"""The benchmark scripts end to end (tiny sizes): allreduce.py, dp_overhead.py, train_throughput.py
under mpirun -n 2; wire_casts.py, run twice: two records."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from twinhpc import ops
from twinhpc.io.bench_results import read_records

ROOT = Path(__file__).resolve().parents[2]


def only_record(folder: Path, benchmark: str) -> Path:
    """The one record of ``benchmark`` in ``folder`` (FOLDER/<benchmark>/*.h5)."""
    (path,) = sorted((folder / benchmark).glob("*.h5"))
    return path


pytestmark = [
    pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun"),
    pytest.mark.skipif(not ops.available(), reason=f"the compiled extension is not built; {ops.BUILD_HINT}"),
]


def test_allreduce_benchmark_writes_rows_ratios_and_hdf5(tmp_path):
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", TWINHPC_CACHE=str(tmp_path / "cache"))
    cmd = [
        "mpirun",
        "-n",
        "2",
        sys.executable,
        str(ROOT / "benchmarks" / "allreduce.py"),
        "--min-bytes",
        "4KiB",
        "--max-bytes",
        "16KiB",
        "--rounds",
        "2",
        "--no-gloo",
        "--json",
        "--results",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout[out.stdout.index("[") :])
    impls = {r["impl"] for r in rows}
    assert {"memcpy", "mpi4py", "twinhpc:auto", "twinhpc:shared", "twinhpc:mpi"} <= impls
    for r in rows:
        assert set(r) >= {"impl", "ranks", "bytes", "time_s", "algbw_gbps", "busbw_gbps"}
        assert r["ranks"] == 2 and r["bytes"] in (4096, 16384) and r["time_s"] > 0
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"])  # 2(n-1)/n = 1 at two ranks
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
    with h5py.File(only_record(tmp_path, "allreduce")) as f:
        assert len(f["rows"]) == len(rows)
        assert list(f["ratios"]["bytes"]) == [4096, 16384]
        assert all(r > 0 for r in f["ratios"]["core_vs_mpi4py"])
        assert f.attrs["world_size"] == 2 and f.attrs["rounds"] == 2
        assert f.attrs["ranks"] == 2 and f.attrs["device"] == "cpu" and "allreduce.py" in f.attrs["command"]


def _run_json(script: str, args: list[str], tmp_path, timeout: int = 600):
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", TWINHPC_CACHE=str(tmp_path / "cache"))
    cmd = [
        "mpirun",
        "-n",
        "2",
        "--bind-to",
        "none",
        sys.executable,
        str(ROOT / "benchmarks" / script),
        *args,
        "--json",
        "--results",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    rows, _ = json.JSONDecoder().raw_decode(out.stdout[out.stdout.index("[") :])  # a "results:" line may follow
    return rows


def test_dp_overhead_benchmark_reports_both_step_times(tmp_path):
    rows = _run_json(
        "dp_overhead.py",
        ["--width", "64", "--layers", "1", "--steps", "2", "--rounds", "1", "--overlap", "auto,on,off"],
        tmp_path,
    )
    assert [(r["overlap_setting"], r["overlap"]) for r in rows[1:]] == [("on", 1), ("off", 0)]
    r = rows[0]
    assert r["ranks"] == 2 and r["step_s_comm"] > 0 and r["step_s_nocomm"] > 0 and r["ratio"] > 0
    assert r["ratio_min"] == r["ratio"] == r["ratio_max"]  # one round: its ratio is the median and the spread
    assert r["max_rel_diff"] == 0.0  # float32 wire: every rank ends with the same parameters
    assert r["memcpy_s"] > 0 and r["memcpy_gbps"] == pytest.approx(r["bytes"] / r["memcpy_s"] / 1e9)
    with h5py.File(only_record(tmp_path, "dp_overhead")) as f:
        assert f.attrs["memcpy_s"] == r["memcpy_s"] and f.attrs["model"] == "MLP 1x64"
        assert [x.decode() for x in f["float32"]["overlap_setting"]] == ["auto", "on", "off"]


def test_train_throughput_benchmark_compares_plain_ddp_and_twinhpc(tmp_path):
    rows = _run_json(
        "train_throughput.py", ["--models", "cnn", "--batch", "8", "--steps", "2", "--rounds", "1"], tmp_path
    )
    (r,) = rows
    assert r["model"] == "cnn" and r["ranks"] == 2
    for key in ("plain_sps", "ddp_sps", "twinhpc_sps"):
        assert r[key] > 0, key
    assert r["ratio"] == pytest.approx(r["twinhpc_sps"] / r["plain_sps"])  # one round: the ratio of that round
    assert r["ratio_ddp"] == pytest.approx(r["twinhpc_sps"] / r["ddp_sps"])
    assert r["ratio_ddp_min"] == r["ratio_ddp"] == r["ratio_ddp_max"]
    assert 0 <= r["data_wait"] < 1
    with h5py.File(only_record(tmp_path, "train_throughput")) as f:
        assert "cnn" in f and f.attrs["device"] == "cpu" and f.attrs["machine_memory_gbps"] > 0


@pytest.mark.skipif(not ops.available() or not ops._load().simd16_available(), reason="no AVX2/F16C here")
def test_wire_casts_benchmark_run_twice_leaves_two_records(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "wire_casts.py"),
        "--mib",
        "0.1",
        "--rounds",
        "2",
        "--repeat",
        "1",
        "--json",
        "--results",
        str(tmp_path),
    ]
    runs = []
    for _ in range(2):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        rows, _ = json.JSONDecoder().raw_decode(out.stdout[out.stdout.index("[") :])
        runs.append(rows)
    rows = runs[-1]
    assert [r["name"] for r in rows] == [
        f"{op}_{d}" for d in ("bfloat16", "float16") for op in ("pack", "unpack", "sum")
    ]
    for r in rows:
        assert r["same_bits"] and r["vector_ms"] > 0 and r["scalar_ms"] > 0 and r["speedup"] > 0
    records = read_records(tmp_path)["wire_casts"]
    assert len(records) == 2 and len({r.path for r in records}) == 2
    for record, rows in zip(records, runs):
        assert [x["speedup"] for x in record.rows("wire_casts")] == [r["speedup"] for r in rows]
        assert record.attrs["names"] == [r["name"] for r in rows]
        assert "wire_casts.py --mib 0.1" in record.attrs["command"] and record.attrs["machine_cores"] >= 1
