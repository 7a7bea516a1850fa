"""``twinhpc validate`` of a twin, end to end on a tiny plate: simulate (2 ranks), preprocess,
train, then validate under ``mpirun -n 2`` and on one rank: the same figures, the persistence
and the truth's energy figures equal what the test computes from the dataset itself, the
``/twin_validation`` group of results.h5 with units and descriptions, the plots."""

from __future__ import annotations

import glob
import json

import h5py
import numpy as np
import pytest

from tests.fixtures import tiny_plate_twin_job
from tests.integration.procs import MPIRUN2, TWINHPC, run
from twinhpc.data.format import Manifest
from twinhpc.io.results import read_twin_validation
from twinhpc.train.twin_metrics import PlatePhysics, energy_terms, persistence, residual_fraction, step_errors

pytestmark = pytest.mark.slow


def _test_split(tmp_path):
    u, f, p = [], [], []
    for path in sorted(glob.glob(str(tmp_path / "data/plate/test-*.h5"))):
        with h5py.File(path) as h:
            u.append(h["field"][()])
            f.append(h["forcing"][()])
            p.append(h["params"][()])
    return np.concatenate(u), np.concatenate(f), np.concatenate(p)


@pytest.mark.timeout(900)
def test_validate_twin_on_two_ranks_and_one(tmp_path):
    (tmp_path / "job.toml").write_text(tiny_plate_twin_job())
    run([*MPIRUN2, *TWINHPC, "simulate", "job.toml"], tmp_path, timeout=300)
    run([*TWINHPC, "preprocess", "job.toml"], tmp_path)
    run([*TWINHPC, "train", "job.toml"], tmp_path, timeout=300)
    args = ["validate", "job.toml", "--horizons", "1,4,50"]
    two = run([*MPIRUN2, *TWINHPC, *args, "--json"], tmp_path, timeout=300).stdout.strip().splitlines()[-1]
    rep = json.loads(two)
    tv = rep["twin_validation"]
    assert rep["split"] == "test" and tv["split"] == "test" and tv["n"] == 4 and tv["ranks"] == 2
    assert tv["horizons"] == [1, 4, 8] and tv["steps"] == 8  # 50 clipped to T = 8
    assert tv["judged_on"] == "nrmse_rise" and tv["linear_rank"] > 0 and tv["linear_params"]
    assert set(tv["models"]) == {"twin", "persistence", "linear", "truth"}
    st = tv["stability"]  # the default check: 500 steps from u[T] with the sources off
    assert st["steps"] == 500 and st["span"] == "u[T], t_edge and T∞" and st["stable"] in (True, False)
    assert 0 <= st["excursion_median"] <= st["excursion_max"] and st["diverged"] == 0, st

    # persistence and the truth's energy balance, computed here from the test split itself
    u, f, p = _test_split(tmp_path)
    prov = Manifest.load(tmp_path / "data/plate").provenance["simulate"]
    phys = PlatePhysics.from_provenance(prov, p.shape[1])
    e = step_errors(persistence(u[:, 0], 8), u, p[:, phys.t_inf])
    per = tv["models"]["persistence"]
    assert per["nrmse_rise"] == pytest.approx(e["nrmse_rise"][:, [0, 3, 7]].mean(0), rel=1e-6)
    assert per["nrmse"] == pytest.approx(e["nrmse"][:, [0, 3, 7]].mean(0), rel=1e-6)
    assert per["max_abs_full"] == pytest.approx(e["max_abs"].max(), rel=1e-6)
    assert per["rmse_full"] == pytest.approx(np.sqrt(e["sq"].sum() / e["sq"].size / 100), rel=1e-6)
    truth = residual_fraction(energy_terms(u, f, p, phys))
    assert tv["models"]["truth"]["energy_residual_full"] == pytest.approx(np.nanmean(truth), rel=1e-6)
    assert np.nanmean(truth[:, 1:]) < 0.05  # the simulator's own fields balance after the first interval

    # the group in results.h5, every dataset described; the JSON's figures
    stored = read_twin_validation(tmp_path / "runs/twin")
    assert stored["attrs"]["split"] == "test" and stored["attrs"]["ranks"] == 2
    assert list(stored["horizon"]) == [1, 4, 8] and list(stored["step"]) == list(range(1, 9))
    assert sorted(stored["scenario_index"]) == [0, 1, 2, 3]
    assert stored["twin/nrmse_rise"] == pytest.approx(tv["models"]["twin"]["nrmse_rise"])
    assert stored["linear/one_step_nrmse"] == pytest.approx(tv["models"]["linear"]["one_step_nrmse"])
    assert stored["examples/truth"].shape == (2, 3, 10, 10)
    assert np.array_equal(stored["examples/truth"][:, 1], u[[0, 1], 4])  # scenarios 0, 1 at step 4
    assert stored["attrs"]["stability_steps"] == 500 and stored["stability/excursion"].shape == (4,)
    assert stored["stability/excursion"].max() == pytest.approx(st["excursion_max"])
    assert list(stored["stability/diverged_at"]) == [-1] * 4
    with h5py.File(tmp_path / "runs/twin/results.h5") as h:
        g = h["twin_validation"]
        described = []
        g.visititems(lambda n, o: described.append((n, o.attrs.get("units"), o.attrs.get("description"))))
        datasets = [d for d in described if isinstance(g[d[0]], h5py.Dataset)]
        assert len(datasets) > 40 and all(units and desc for _, units, desc in datasets)
        assert g["twin/rmse"].attrs["units"] == "K" and g["horizon"].attrs["units"] == "1"
        assert "metrics" in h and "report" in h  # the rest of the file kept
    for png in ("twin_panels.png", "twin_horizon.png"):
        assert (tmp_path / "runs/twin" / png).stat().st_size > 1000

    # one rank: the same figures (scenarios spread over ranks and gathered, each once)
    one = run([*TWINHPC, *args, "--no-plots"], tmp_path, timeout=300).stdout
    assert "twin validation: 4 test scenarios rolled out 8 steps" in one and "energy residual" in one
    assert "stability: 500 more steps from u[T] with the forcing off: " in one, one
    assert "the twin " in one and "both baselines" in one
    again = read_twin_validation(tmp_path / "runs/twin")
    assert again["attrs"]["ranks"] == 1
    for key in ("twin/nrmse_rise", "linear/rmse", "persistence/max_abs_full", "truth/energy_residual"):
        assert again[key] == pytest.approx(stored[key], rel=1e-5), key
    assert again["stability/excursion"] == pytest.approx(stored["stability/excursion"], rel=1e-4, abs=1e-6)
    # --stability-steps 0: no check, said so
    none = run([*TWINHPC, *args, "--no-plots", "--stability-steps", "0"], tmp_path, timeout=300).stdout
    assert "stability: not checked" in none, none
    assert "stability/excursion" not in read_twin_validation(tmp_path / "runs/twin")
