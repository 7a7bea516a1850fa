"""``[simulate]`` and ``twinhpc simulate`` on one process: the stability check, bad input, the
scenario draws, the fault stream's labels, jobs/plate*.toml and jobs/simulate.sbatch."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from twinhpc.config import JobFileError, SimulateConfig, load_job
from twinhpc.config.simulate import DT_SAFETY, RangesConfig
from twinhpc.data.split import assign_splits, plan_shards, shards_of_rank
from twinhpc.io.stream import KINDS, read_stream
from twinhpc.kernels.heat import stable_dt
from twinhpc.sim.plate import draw_params
from twinhpc.sim.stream import make_stream, parse_faults

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "plate.toml"
SMALL = ["simulate.scenarios=5", "simulate.grid=[8, 9]", "simulate.steps=3", "simulate.shards=2"]


# -- the table ----------------------------------------------------------------------------------
def test_default_dt_is_under_the_limit_and_divides_dt_save():
    cfg = load_job(JOB).simulate
    dy, dx = cfg.spacing
    alpha, beta = cfg.alpha_beta(cfg.ranges.k[1], cfg.ranges.h[1])
    assert cfg.dt_limit == pytest.approx(stable_dt(alpha, beta, dx, dy), rel=1e-12)
    assert cfg.solver_dt <= DT_SAFETY * cfg.dt_limit < cfg.dt_save / (cfg.substeps - 1)
    assert cfg.substeps * cfg.solver_dt == pytest.approx(cfg.dt_save)


def test_an_unstable_dt_is_an_error_naming_the_limit():
    with pytest.raises(JobFileError, match=r"simulate\.dt: 0\.5 s is unstable: .*≤ .* = 0\.1558 s .* k = 60 .*h = 40"):
        SimulateConfig(dt=0.5)
    SimulateConfig(dt=0.125)  # 40 steps per 5 s, under the limit


def test_the_limit_is_taken_over_the_whole_range():
    """dt = 0.125 s is stable for k ≤ 60 but not once the range reaches k = 80."""
    with pytest.raises(JobFileError, match="unstable.*k = 80"):
        SimulateConfig(dt=0.125, ranges=RangesConfig(k=(15.0, 80.0)))
    with pytest.raises(JobFileError, match="unstable.*h = 20000"):
        SimulateConfig(dt=0.125, ranges=RangesConfig(h=(5.0, 20000.0)))


@pytest.mark.parametrize(
    "sets, match",
    [
        (["simulate.ranges.k=[60, 15]"], r"simulate\.ranges\.k: is empty: low 60 is above high 15"),
        (["simulate.scenarios=0"], r"simulate\.scenarios: must be ≥ 1, got 0"),
        (["simulate.dt=0.3"], r"simulate\.dt: 0\.3 s does not divide dt_save 5 s"),
        (["simulate.sensors=[[0.2, 0.05]]"], r"simulate\.sensors: sensor 0 at \[0\.2, 0\.05\] m lies outside"),
        (["simulate.val_fraction=0.6", "simulate.test_fraction=0.5"], "val_fraction \\+ test_fraction must be < 1"),
        (["simulate.ranges.source_x=[0.2, 1.5]"], r"simulate\.ranges\.source_x: must lie in \[0, 1\]"),
        (["simulate.device='gpu'"], r"simulate\.device: .*gpu"),
    ],
)
def test_bad_values_are_errors_naming_the_key(sets, match):
    with pytest.raises(JobFileError, match=match):
        load_job(JOB, [f"{s}" for s in sets])


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(JOB.read_text().replace("scenarios = 256", "scenarioz = 256"))
    with pytest.raises(JobFileError, match=r"simulate\.scenarioz: unknown key \(did you mean 'scenarios'\?\)"):
        load_job(bad)
    with pytest.raises(JobFileError, match=r"simulate\.ranges\.kk: unknown key"):
        load_job(JOB, ["simulate.ranges.kk=[1, 2]"])


def test_the_job_round_trips_through_toml(tmp_path):
    job = load_job(JOB)
    (tmp_path / "j.toml").write_text(job.to_toml())
    assert load_job(tmp_path / "j.toml").simulate == job.simulate


# -- scenarios ----------------------------------------------------------------------------------
def test_scenario_parameters_depend_on_seed_and_index_only():
    cfg = load_job(JOB).simulate
    other = dataclasses.replace(cfg, scenarios=7, shards=1, val_fraction=0.3)
    a = [draw_params(cfg, i) for i in range(5)]
    assert all(np.array_equal(draw_params(other, i), a[i]) for i in range(5))
    assert not np.array_equal(draw_params(dataclasses.replace(cfg, seed=1), 0), a[0])
    lows, highs = np.array(cfg.param_ranges()).T
    assert all(((lows <= p) & (p <= highs)).all() for p in a) and len(a[0]) == len(cfg.param_names) == 29


@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_every_scenario_is_simulated_once_whatever_the_rank_count(ranks):
    plans = plan_shards(assign_splits(13, 0.1, 0.1, 0), 4)
    got = sorted(int(i) for r in range(ranks) for p in shards_of_rank(plans, r, ranks) for i in p.indices)
    assert got == list(range(13))


# -- the command line ---------------------------------------------------------------------------
def test_simulate_writes_the_dataset_of_the_layout(cli, tmp_path):
    from twinhpc.data.format import Manifest

    out = tmp_path / "plate"
    r = cli("simulate", JOB, "--out", out, *(a for s in SMALL for a in ("--set", s)))
    assert r.returncode == 0, r.stderr
    assert "simulate done" in r.stderr
    m = Manifest.load(out)
    assert {f.name: (f.dtype, f.shape) for f in m.fields} == {
        "params": ("float32", (29,)),
        "field": ("float32", (4, 8, 9)),
        "forcing": ("float32", (3, 8, 9)),
        "sensors": ("float32", (4, 5)),
        "sim_seconds": ("float64", ()),
    }
    sim = m.provenance["simulate"]
    assert [p["name"] for p in sim["params"]][:6] == ["k", "h", "t_inf", "t_edge", "t0", "source0.x"]
    assert sim["grid"]["H"] == 8 and sim["dt_save"] == 5.0 and sim["constants"]["rho_c"] == 3.6e6
    assert sum(s.count for s in m.splits) == 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "simulate.dt=1.0"], "simulate.dt: 1 s is unstable"),
        (["--set", "simulate.scenarios=0"], "simulate.scenarios: must be ≥ 1"),
        (["--set", "simulate.ranges.h=[50, 5]"], "simulate.ranges.h: is empty"),
    ],
)
def test_bad_input_is_one_error_exit_2_and_nothing_written(cli, tmp_path, extra, message):
    r = cli("simulate", JOB, "--out", tmp_path / "plate", *extra)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("error:") == 1, r.stderr
    assert os.listdir(tmp_path) == []


def test_an_out_that_holds_something_else_is_refused(cli, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    sets = [a for s in SMALL for a in ("--set", s)]
    for flags, said in (([], "already exists"), (["--overwrite"], "not a dataset")):
        r = cli("simulate", JOB, "--out", other, *sets, *flags)
        assert r.returncode == 2 and said in r.stderr, r.stderr
        assert os.listdir(other) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["mine"]


def test_the_cuda_solver_without_cupy_or_a_gpu_is_an_error_naming_the_key(monkeypatch):
    from twinhpc.errors import TwinError
    from twinhpc.sim.plate import Plate

    cfg = load_job(JOB, [*SMALL, "simulate.device='cuda'"]).simulate
    monkeypatch.setitem(sys.modules, "cupy", None)  # importing it fails, as without the [gpu] extra
    with pytest.raises(TwinError, match=r'simulate\.device = "cuda": CuPy is not installed .*twinhpc\[gpu\]'):
        Plate(cfg)
    Plate(load_job(JOB, SMALL).simulate)  # the default, the Numba kernel, needs neither


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_simulate_on_cuda_without_cupy_exits_2_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "plate"
    r = cli("simulate", JOB, "--out", out, *(a for s in [*SMALL, "simulate.device='cuda'"] for a in ("--set", s)))
    assert r.returncode == 2, r.stderr
    assert 'simulate.device = "cuda": CuPy is not installed' in r.stderr
    assert not out.exists()


def test_a_job_without_simulate_is_refused(cli, tmp_path):
    r = cli("simulate", ROOT / "jobs" / "digits.toml", "--out", tmp_path / "x")
    assert r.returncode == 2 and "no [simulate] table" in r.stderr


# -- the fault stream ---------------------------------------------------------------------------
def small_cfg():
    return load_job(JOB, ["simulate.grid=[12, 12]", "simulate.steps=10"]).simulate


def test_stream_labels_mark_each_fault_at_its_times():
    cfg = small_cfg()
    steps = 60  # 300 s, 6 cycles
    faults = parse_faults(
        "drift:sensor=1,start=50,end=100,rate=0.02; stuck:sensor=3,start=120,end=160;"
        "source:start=200,end=260,power=10,x=0.3,y=0.6",
        steps * cfg.dt_save,
        5,
    )
    arrays, rows, attrs = make_stream(cfg, steps, faults, noise=0.0)
    clean, _, _ = make_stream(cfg, steps, [], noise=0.0)
    t = arrays["time"]
    assert len(t) == steps + 1 and (np.diff(t) == cfg.dt_save).all()
    kinds = {1: (50, 100, 1), 2: (120, 160, 3), 3: (200, 260, -1)}
    for code, (a, b, sensor) in kinds.items():
        on = (t >= a) & (t < b)
        assert (arrays["label"][on] == code).all() and (arrays["label_sensor"][on] == sensor).all()
    assert (arrays["label"][(t < 50) | ((t >= 100) & (t < 120)) | ((t >= 160) & (t < 200)) | (t >= 260)] == 0).all()
    assert [r["kind"] for r in rows] == ["drift", "stuck", "source"] and set(KINDS.values()) == {0, 1, 2, 3}
    # what each fault does to the readings (noise 0: readings = truth but for the faults)
    drift = (t >= 50) & (t < 100)
    np.testing.assert_allclose(
        arrays["sensors"][drift, 1] - arrays["truth"][drift, 1], 0.02 * (t[drift] - 50), atol=1e-3
    )
    stuck = (t >= 120) & (t < 160)
    assert np.ptp(arrays["sensors"][stuck, 3]) == 0 and np.ptp(arrays["truth"][stuck, 3]) > 0
    ok = arrays["label"] != 1
    ok &= arrays["label"] != 2
    assert np.array_equal(arrays["sensors"][ok], arrays["truth"][ok])
    # the unexpected source heats the plate from its start on, and is not in the recorded forcing
    assert np.array_equal(arrays["truth"][t <= 200], clean["truth"][t <= 200])
    assert (arrays["truth"][t == 255] - clean["truth"][t == 255]).max() > 0.5
    assert np.array_equal(arrays["forcing"], clean["forcing"]) and np.array_equal(arrays["params"], clean["params"])
    assert arrays["forcing"].shape == (steps, 12, 12) and arrays["params"].shape == (steps, 29)
    assert attrs["param_names"][0] == "k"


def test_the_plate_seed_picks_the_plate_and_the_stream_seed_its_schedule():
    cfg = small_cfg()
    g = 5  # k, h, t_inf, t_edge, t0
    a, _, attrs = make_stream(cfg, 20, [], noise=0.05, stream_seed=1, plate_seed=0)
    b, _, _ = make_stream(cfg, 20, [], noise=0.05, stream_seed=2, plate_seed=0)
    own, _, _ = make_stream(cfg, 20, [], noise=0.05, stream_seed=0)
    default, _, _ = make_stream(cfg, 20, [], noise=0.05, stream_seed=1)
    # one plate, two days: the same plate parameters, other sources and other noise
    assert np.array_equal(a["params"][:, :g], b["params"][:, :g])
    assert np.array_equal(a["params"][:, :g], own["params"][:, :g])
    assert not np.array_equal(a["params"][:, g:], b["params"][:, g:])
    assert attrs["plate_seed"] == 0 and attrs["stream_seed"] == 1
    # without a plate seed the stream seed draws the plate too, as before
    assert not np.array_equal(default["params"][:, :g], a["params"][:, :g])
    assert np.array_equal(default["params"][:, g:], a["params"][:, g:])


def test_stream_command_writes_hdf5_and_csv_that_read_back(cli, tmp_path):
    h5, csv_path = tmp_path / "s.h5", tmp_path / "s.csv"
    r = cli(
        "simulate",
        JOB,
        "--set",
        "simulate.grid=[10, 10]",
        "--stream",
        h5,
        "--csv",
        csv_path,
        "--faults",
        "default",
        "--stream-steps",
        "80",
        "--noise",
        "0.1",
    )
    assert r.returncode == 0, r.stderr
    arrays, faults, attrs = read_stream(h5)
    assert [f["kind"] for f in faults] == ["drift", "stuck", "source"] and attrs["noise"] == 0.1
    with open(csv_path) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["time", "s0", "s1", "s2", "s3", "s4", "label", "label_sensor", "label_fault"]
    assert len(rows) == 82
    got = np.array([[float(v) for v in row] for row in rows[1:]])
    np.testing.assert_allclose(got[:, 1:6], arrays["sensors"], atol=1e-5)
    assert np.array_equal(got[:, 6], arrays["label"]) and (got[:, 6] > 0).sum() == (arrays["label"] > 0).sum() > 0
    # a fault-free stream for calibration: another realisation, every label 0
    calib = tmp_path / "calib.h5"
    r = cli(
        "simulate",
        JOB,
        "--set",
        "simulate.grid=[10, 10]",
        "--stream",
        calib,
        "--stream-steps",
        "20",
        "--stream-seed",
        "1",
    )
    assert r.returncode == 0, r.stderr
    c, cf, _ = read_stream(calib)
    assert cf == [] and (c["label"] == 0).all() and (c["label_fault"] == -1).all()
    assert not np.array_equal(c["params"][0], arrays["params"][0])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("melt:sensor=1,start=0,end=5", "unknown kind 'melt'"),
        ("drift:sensor=9,start=0,end=5", "sensor must be an index 0..4"),
        ("stuck:sensor=1,start=5", "missing end"),
        ("drift:sensor=1,start=50,end=5", "need 0 ≤ start < end ≤ 100 s"),
        ("drift:sensor=1,start=0,end=50;stuck:sensor=2,start=40,end=60", "overlap"),
        ("source:start=0,end=5,x=2", "fractions of the plate"),
        ("drift:sensor=1,start=0,end=5,speed=3", "'speed=3' is not KEY=VALUE"),
    ],
)
def test_bad_fault_specs_are_errors_naming_the_part(spec, message):
    from twinhpc.errors import TwinError

    with pytest.raises(TwinError, match="--faults"):
        parse_faults(spec, 100.0, 5)
    with pytest.raises(TwinError) as e:
        parse_faults(spec, 100.0, 5)
    assert message in str(e.value)


def test_stream_options_need_stream(cli, tmp_path):
    r = cli("simulate", JOB, "--csv", tmp_path / "x.csv")
    assert r.returncode == 2 and "--csv needs --stream" in r.stderr


# -- job files and the batch script -----------------------------------------------------------
def test_cluster_job_is_the_plate_at_cluster_size_and_the_sbatch_script_matches_it():
    plate, cluster = load_job(JOB), load_job(ROOT / "jobs" / "plate_cluster.toml")
    assert cluster.simulate.scenarios >= 1000 and cluster.slurm.nodes >= 2
    same = {"grid", "size", "thickness", "rho_c", "sources", "source_width", "steps", "dt_save", "sensors", "ranges"}
    assert {k: getattr(cluster.simulate, k) for k in same} == {k: getattr(plate.simulate, k) for k in same}
    script = ROOT / "jobs" / "simulate.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    text = script.read_text()
    assert f"#SBATCH --nodes={cluster.slurm.nodes}" in text
    assert f"#SBATCH --ntasks-per-node={cluster.slurm.ntasks_per_node}" in text
    assert "srun twinhpc simulate" in text and "srun twinhpc verify" in text
    assert tomllib.loads((ROOT / "jobs" / "plate_cluster.toml").read_text())["data"]["dataset"] != "data/plate"


def test_nvcc_compiles_the_cupy_kernel_source(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc")
    from twinhpc.kernels.heat_cupy import SOURCE

    (tmp_path / "heat.cu").write_text(SOURCE)
    proc = subprocess.run(
        [nvcc, "--ptx", "-fmad=false", "-o", str(tmp_path / "heat.ptx"), str(tmp_path / "heat.cu")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert ".entry heat_step" in (tmp_path / "heat.ptx").read_text()
