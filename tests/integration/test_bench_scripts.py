"""The benchmark scripts end to end (tiny sizes): allreduce.py, dp_overhead.py, train_throughput.py
under mpirun -n 2; wire_casts.py, run twice: two records; tune.py --quick (sweeps on the local
executor); twin.py --quick on a tiny plate twin."""

import json
import math
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


def _sweep_h5(path: Path) -> dict:
    """What tune.py's figures come from, read with h5py alone (not through twinhpc)."""
    with h5py.File(path) as f:
        a = f.attrs
        return {
            "trials": f["trials"][()],
            "reports": f["reports"][()],
            "rungs": list(a["rungs"]),
            "first_start": float(a["first_start"]),
            "updated_at": float(a["updated_at"]),
            "utilisation": float(a["utilisation"]),
            "busy_s": float(a["busy_s"]),
            "direction": a["direction"] if isinstance(a["direction"], str) else a["direction"].decode(),
            "params": [k for k, _ in json.loads(a["params"])],
        }


@pytest.mark.timeout(960)
def test_tune_benchmark_quick_takes_its_figures_from_the_sweeps(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tune.py"), "--quick", "--work", str(work), "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ASHA against random search" in r.stdout and "(<= 1/3: " in r.stdout and "(>= 0.9: " in r.stdout

    (record,) = (out / "tune").glob("*.h5")  # one run: one new record
    with h5py.File(record) as f:
        assert set(f) == {"sweeps", "comparisons", "summary"}
        rows = [
            {k: (v.decode() if isinstance(v, bytes) else v.item()) for k, v in zip(f["sweeps"].dtype.names, row)}
            for row in f["sweeps"][()]
        ]
        comparisons = f["comparisons"][()]
        summary = f["summary"][()]
        assert f.attrs["trials"] == 4 and f.attrs["max_epochs"] == 3 and list(f.attrs["rungs"]) == [1, 3]
        assert f.attrs["executor"] == "local" and f.attrs["concurrent"] == 2 and f.attrs["ranks"] == 1
        assert f.attrs["target_best_points"] == 0.01 and f.attrs["target_utilisation"] == 0.9
        assert f.attrs["target_epochs_ratio"] == pytest.approx(1 / 3) and f.attrs["repeat"] == 1
    assert sorted((s["job"], s["scheduler"]) for s in rows) == [
        ("digits", "asha"),
        ("digits", "none"),
        ("synthetic", "asha"),
        ("synthetic", "none"),
    ]
    assert (out / "tune.txt").read_text().strip().splitlines()[-1] == r.stdout.strip().splitlines()[-2]

    (stamp,) = (work / "sweeps").iterdir()  # one run: one folder of sweeps
    by = {}
    for s in rows:
        name = {"asha": "asha", "none": "random"}[s["scheduler"]]
        h = _sweep_h5(stamp / f"{s['job']}-{name}-s0" / "sweep.h5")
        by[s["job"], s["scheduler"]] = (s, h)
        trials = h["trials"]
        assert s["seed"] == 0 and s["executor"] == "local" and s["trials"] == len(trials) == 4
        assert s["epochs"] == int(trials["epochs"].sum())  # epochs summed over the sweep's trials
        assert s["reports"] == len(h["reports"]) and s["failed"] == 0
        assert s["wall_s"] == pytest.approx(h["updated_at"] - h["first_start"])
        assert s["utilisation"] == h["utilisation"] and s["busy_s"] == h["busy_s"]
        assert s["utilisation"] == pytest.approx(h["busy_s"] / (2 * s["wall_s"]))
        assert s["pass_utilisation"] == (s["utilisation"] >= 0.9)
        last = trials["metric"][:, -1]
        assert s["best"] == max(m for m in last if not math.isnan(m))  # val_accuracy: larger is better
        assert h["direction"] == "max"
    for job in ("digits", "synthetic"):
        (a, ha), (n, hn) = by[job, "asha"], by[job, "none"]
        assert hn["rungs"] == [3] and ha["rungs"] == [1, 3]
        assert n["epochs"] == 4 * 3  # random search: every trial at the full budget
        assert a["epochs"] < n["epochs"]
        for key in ha["params"]:  # the same trials: trial i has the same values in both sweeps
            assert list(ha["trials"][key]) == list(hn["trials"][key]), key
        target = n["best"]
        for s, h in ((a, ha), (n, hn)):
            assert s["target"] == target
            hit = [rep["at"] for rep in h["reports"] if rep["metric"] >= target]
            if hit:
                assert s["time_to_target_s"] == pytest.approx(hit[0] - h["first_start"]) and s["gap"] == 0
            else:
                assert math.isnan(s["time_to_target_s"])
                assert s["gap"] == pytest.approx(target - max(h["reports"]["metric"]))
        assert not math.isnan(n["time_to_target_s"])  # random search reaches its own best
        (c,) = [c for c in comparisons if c["job"].decode() == job]
        assert c["best_diff"] == pytest.approx(target - a["best"])
        assert c["epochs_ratio"] == pytest.approx(a["epochs"] / n["epochs"])
        assert c["wall_ratio"] == pytest.approx(a["wall_s"] / n["wall_s"])
        assert c["pass_epochs"] == (c["epochs_ratio"] <= 1 / 3) and c["pass_best"] == (c["best_diff"] <= 0.01)
        med = {(m["scheduler"].decode(), m["figure"].decode()): m for m in summary if m["job"].decode() == job}
        assert med["ASHA", "epochs"]["median"] == med["ASHA", "epochs"]["min"] == a["epochs"]  # one run
        assert med["ASHA/random", "epochs_ratio"]["median"] == pytest.approx(c["epochs_ratio"])


def test_tune_benchmark_help_names_the_targets():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tune.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for text in ("--repeat", "--quick", "--slurm", "--executor", "--work", "utilisation >= 0.9", "best_diff <= 0.01"):
        assert text in r.stdout, text


@pytest.mark.timeout(900)
def test_twin_benchmark_quick_records_times_ratios_and_accuracy(tmp_path):
    from tests.fixtures import tiny_plate_twin_job
    from tests.integration.procs import TWINHPC, run
    from twinhpc.bench.targets import TARGETS

    (tmp_path / "job.toml").write_text(tiny_plate_twin_job(epochs=1))
    run([*TWINHPC, "simulate", "job.toml"], tmp_path, timeout=300)
    run([*TWINHPC, "preprocess", "job.toml"], tmp_path)
    run([*TWINHPC, "train", "job.toml"], tmp_path, timeout=300)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "twin.py"), "--job", "job.toml", "--quick", "--json"]
    r = run([*cmd, "--results", "out"], tmp_path, timeout=600)
    assert "speed-up" in r.stdout and "break-even" in r.stdout and "(--quick: not judged)" in r.stdout
    printed = json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])
    rec = read_records(tmp_path / "out")["twin"]
    assert len(rec) == 1
    a = rec[0].attrs
    assert a["quick"] == 1 and a["split"] == "test" and a["scenarios"] == 4 and a["steps"] == 8
    assert a["grid"] == "10x10" and a["threads"] == 1 and json.loads(a["batches"]) == [1, 4]
    assert a["sim_seconds"] > 0 and a["twin_seconds_batch1"] > 0
    # the speed-ups are the ratios of the recorded times
    assert a["speedup_batch1"] == pytest.approx(a["sim_seconds"] / a["twin_seconds_batch1"])
    assert a["speedup_best"] == pytest.approx(a["sim_seconds"] / a["twin_seconds_best"])
    batches = rec[0].rows("batches")
    assert [b["batch"] for b in batches] == [1, 4]
    for b in batches:
        assert b["speedup"] == pytest.approx(a["sim_seconds"] / b["seconds_per_trajectory"])
    assert a["twin_seconds_best"] == min(b["seconds_per_trajectory"] for b in batches)
    saving = a["sim_seconds"] - a["twin_seconds_best"]
    cost = a["data_core_s"] + a["train_core_s"]
    assert a["data_core_s"] > 0 and a["train_core_s"] > 0
    assert a["break_even_solves"] == (pytest.approx(cost / saving) if saving > 0 else math.inf)
    # accuracy: one step (horizon 0), the horizons 1 and 8 (clipped), the full rollout (-1), per model
    acc = rec[0].rows("accuracy")
    got = {(x["model"], x["metric"], x["horizon"]) for x in acc}
    for model in ("twin", "persistence", "linear"):
        assert {(model, "nrmse_rise", h) for h in (0, 1, 8, -1)} <= got, model
    (one,) = [x["value"] for x in acc if (x["model"], x["metric"], x["horizon"]) == ("twin", "nrmse_rise", 0)]
    assert a["one_step_nrmse_rise"] == pytest.approx(one) and printed["one_step_nrmse_rise"] == pytest.approx(one)
    (h8,) = [x["value"] for x in acc if (x["model"], x["metric"], x["horizon"]) == ("twin", "nrmse_rise", 8)]
    assert a["h50_nrmse_rise"] == pytest.approx(h8)  # 50 clipped to T = 8
    # validate's stability check, recorded beside the targets
    assert a["stability_steps"] == 500 and a["stability_diverged"] == 0 and "stability (500 steps" in r.stdout
    assert 0 <= a["stability_excursion_median"] <= a["stability_excursion_max"]
    # a --quick record of a tiny job is not the default configuration: no target reads it
    for t in TARGETS:
        if t.benchmark == "twin":
            assert t.select(rec[0]) is None, t.key


def test_twin_benchmark_help_names_the_targets():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "twin.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for text in ("--quick", "--batches", "--results", "Break-even", "<= 0.01", "<= 0.05", ">= 100", "core-seconds"):
        assert text in r.stdout, text
