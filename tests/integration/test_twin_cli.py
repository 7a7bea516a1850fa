"""`twinhpc twin rollout` and `twinhpc twin monitor` as a user runs them, on a real twin: a tiny
plate job (16×16 grid, 16 scenarios of 20 steps, one source) simulated, preprocessed and trained
(the hybrid twin of jobs/plate_twin.toml with a small fno2d, 3 epochs) once for the module, and
sensor streams of the same plate."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from tests.integration.procs import TWINHPC, run

pytestmark = pytest.mark.slow

JOB = """\
[data]
dataset = "data/plate"
batch_size = 4

[model]
name = "fno2d"

[model.structure]
width = 8
modes = 4
layers = 2
projection = 16
padding = 2

[optim]
name = "adamw"
lr = 3e-3

[train]
task = "field"
prior = "plate"
forcing_window = 3
epochs = 3
metric = "nrmse"
keep_best = true
out = "runs/twin"

[simulate]
scenarios = 16
val_fraction = 0.125
test_fraction = 0.125
shards = 1
grid = [16, 16]
steps = 20
sources = 1
"""

#: strong faults, so that a twin trained for seconds catches each of them
FAULTS = (
    "drift:sensor=1,start=200,end=500,rate=0.2;stuck:sensor=0,start=700,end=1000;"
    "source:start=1100,end=1400,power=40,x=0.3,y=0.7"
)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    d = tmp_path_factory.mktemp("twin")
    (d / "plate.toml").write_text(JOB)
    run([*TWINHPC, "simulate", "plate.toml"], d)
    run([*TWINHPC, "preprocess", "plate.toml"], d)
    run([*TWINHPC, "train", "plate.toml"], d, timeout=400)
    stream = [*TWINHPC, "simulate", "plate.toml", "--stream-steps", "300", "--stream"]
    # the fault-free histories of the monitored plate (plate seed 0), on other days (stream seeds)
    run([*stream, "calib.h5", "--stream-seed", "1", "--plate-seed", "0"], d)
    run([*stream, "calib2.h5", "--stream-seed", "2", "--plate-seed", "0"], d)
    run([*stream, "other-plate.h5", "--stream-seed", "3"], d)
    run([*stream, "faults.h5", "--faults", FAULTS, "--csv", "faults.csv"], d)
    return d


def twin(d, *args, check=True, timeout=300):
    return run([*TWINHPC, "twin", *args], d, check=check, timeout=timeout)


@pytest.mark.timeout(900)
def test_rollout_against_the_simulator_warns_out_of_range_and_writes_hdf5(plate):
    r = twin(
        plate, "rollout", "runs/twin", "--set", "scenario.k=69", "--set", "scenario.source0.power=5", "--out", "w.h5"
    )
    assert re.search(r"warning.*scenario\.k = 69 lies 9 W/\(m K\) above the trained range \[15, 60\]", r.stderr), (
        r.stderr
    )
    assert "source0.power" not in r.stderr  # inside its range: no warning
    m = re.search(r"twin time (\S+) s\s+simulator time (\S+) s\s+speed-up (\S+)x", r.stdout)
    assert m, r.stdout
    twin_s, sim_s, speedup = (float(v) for v in m.groups())
    assert speedup == pytest.approx(sim_s / twin_s, rel=2e-5)
    with h5py.File(plate / "w.h5", "r") as f:
        assert f.attrs["format"] == "twinhpc-twin-rollout"
        tw, sim = f["twin/field"][...], f["simulator/field"][...]
        assert tw.shape == sim.shape == (21, 16, 16) and f["twin/sensors"].shape == (21, 5)
        assert f["twin/field"].attrs["units"] == "K" and f["simulator/field"].attrs["description"]
        names = json.loads(f["params"].attrs["names"])
        assert f["params"][names.index("k")] == 69.0
        nrmse = f["error/nrmse"][...]
        report = json.loads(f.attrs["errors"])
    np.testing.assert_allclose(
        nrmse,
        np.linalg.norm((tw - sim).reshape(21, -1), axis=1) / np.linalg.norm(sim.reshape(21, -1), axis=1),
        rtol=1e-5,
    )
    assert report["nrmse_end"] == pytest.approx(nrmse[-1])
    assert re.search(rf"nRMSE {nrmse[-1]:.4g}", r.stdout)
    assert np.isfinite(sim).all() and sim.max() < 400  # the simulator stays stable at the larger k
    assert (plate / "w-field.png").stat().st_size > 1000 and (plate / "w-sensors.png").stat().st_size > 1000
    held = twin(plate, "rollout", "runs/twin", "--scenario-index", "1", "--steps", "5", "--out", "held.h5", "--json")
    rep = json.loads(held.stdout.strip().splitlines()[-1])
    assert rep["scenario"].startswith("test scenario 1 of") and rep["steps"] == 5 and rep["warnings"] == []
    # a plate simulated on a GPU (simulate.device = "cuda"): the twin still runs the CPU solver
    (plate / "plate-cuda.toml").write_text(JOB.replace("[simulate]\n", '[simulate]\ndevice = "cuda"\n'))
    gpu_job = twin(plate, "rollout", "runs/twin", "--job", "plate-cuda.toml", "--steps", "3", "--out", "g.h5", "--json")
    assert json.loads(gpu_job.stdout.strip().splitlines()[-1])["steps"] == 3


@pytest.mark.timeout(600)
def test_rollout_errors_exit_2(plate):
    r = twin(plate, "rollout", "runs/twin", "--set", "scenario.conductivity=3", check=False)
    assert r.returncode == 2 and "unknown scenario key 'conductivity'; the scenario's keys are k, h, t_inf" in r.stderr
    (plate / "empty").mkdir(exist_ok=True)
    r = twin(plate, "rollout", "empty", check=False)
    assert r.returncode == 2 and "empty: no trained twin" in r.stderr
    assert not (plate / "empty" / "twin").exists()


@pytest.mark.timeout(900)
def test_monitor_detects_each_fault_with_levels_from_fault_free_data(plate):
    r = twin(
        plate, "monitor", "runs/twin", "--stream", "faults.h5", "--calibrate", "calib.h5", "--out", "m.h5", "--json"
    )
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert "another plate" not in r.stderr
    faults = rep["scores"]["faults"]
    assert [f["kind"] for f in faults] == ["drift", "stuck", "source"]
    assert all(f["detected"] and np.isfinite(f["delay_s"]) for f in faults), faults
    with h5py.File(plate / "m.h5", "r") as f:
        assert f.attrs["format"] == "twinhpc-twin-monitor"
        alarm, label = f["alarm"][...], f["label"][...]
        levels = {k: f[f"calibration/levels/{k}"][...] for k in ("mean", "spatial", "flat")}
        peaks = {k: f[f"calibration/peaks/{k}"][...] for k in ("mean", "spatial", "flat")}
    # the levels are the calibration stream's maxima times the threshold (2); the mean statistic's
    # one level for every sensor, from the largest sensor's
    for k in ("spatial", "flat"):
        np.testing.assert_allclose(levels[k], 2 * peaks[k])
    np.testing.assert_allclose(levels["mean"], np.full(5, 2 * peaks["mean"].max()))
    tp = int((alarm.astype(bool) & (label > 0)).sum())
    assert tp / max(1, alarm.sum()) == pytest.approx(rep["scores"]["precision"])
    assert (plate / "m-panel.png").stat().st_size > 1000
    # another fault-free stream, another threshold: other levels
    r2 = twin(
        plate,
        "monitor",
        "runs/twin",
        "--stream",
        "faults.h5",
        "--calibrate",
        "calib2.h5",
        "--threshold",
        "3",
        "--out",
        "m2.h5",
        "--json",
    )
    rep2 = json.loads(r2.stdout.strip().splitlines()[-1])
    assert rep2["levels"]["spatial"] != rep["levels"]["spatial"]
    with h5py.File(plate / "m2.h5", "r") as f:
        np.testing.assert_allclose(f["calibration/levels/mean"][...], 3 * f["calibration/peaks/mean"][...].max())
    # a fault-free stream of another plate calibrates, with a warning naming what differs
    r4 = twin(plate, "monitor", "runs/twin", "--stream", "faults.h5", "--calibrate", "other-plate.h5", "--out", "m4.h5")
    assert re.search(r"--calibrate other-plate.h5 is another plate than faults.h5: k \S+ against \S+", r4.stderr)
    # a stream with faults is refused for calibration
    r3 = twin(plate, "monitor", "runs/twin", "--stream", "calib.h5", "--calibrate", "faults.h5", check=False)
    assert r3.returncode == 2 and "faults.h5: the stream has" in r3.stderr and "faulty samples" in r3.stderr


@pytest.mark.timeout(900)
def test_monitor_reads_csv_and_refuses_bad_streams(plate):
    r = twin(
        plate, "monitor", "runs/twin", "--stream", "faults.csv", "--calibrate", "calib.h5", "--out", "c.h5", "--json"
    )
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["scores"]["fault_samples"] > 0 and all(f["detected"] for f in rep["scores"]["faults"])
    lines = (plate / "faults.csv").read_text().splitlines()
    header = lines[0].split(",")
    cases = {
        "nocol.csv": "\n".join(",".join(v for i, v in enumerate(row.split(",")) if i != 3) for row in lines),
        "nan.csv": "\n".join([*lines[:5], re.sub(r"^([^,]*),[^,]*", r"\1,nan", lines[5]), *lines[6:]]),
        "order.csv": "\n".join([*lines[:5], lines[6], lines[5], *lines[7:]]),
    }
    expect = {
        "nocol.csv": rf"nocol.csv: missing column\(s\) {header[3]}",
        "nan.csv": r"nan.csv: column 's0', row 6: the reading is nan",
        "order.csv": r"order.csv: column 'time', row 7: timestamps out of order",
    }
    for name, text in cases.items():
        (plate / name).write_text(text + "\n")
        bad = twin(
            plate,
            "monitor",
            "runs/twin",
            "--stream",
            name,
            "--inputs",
            "faults.h5",
            "--calibrate",
            "calib.h5",
            check=False,
        )
        assert bad.returncode == 2 and re.search(expect[name], bad.stderr), (name, bad.stderr)
    with h5py.File(plate / "faults.h5", "r") as f, h5py.File(plate / "broken.h5", "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for k in f:
            if k != "forcing":
                f.copy(k, g)
    bad = twin(plate, "monitor", "runs/twin", "--stream", "broken.h5", "--calibrate", "calib.h5", check=False)
    assert bad.returncode == 2 and "broken.h5: missing dataset(s) /forcing" in bad.stderr
