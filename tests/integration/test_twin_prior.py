"""A hybrid twin (``train.prior = "plate"``, ``train.forcing_window = 3``) end to end on a tiny
plate: simulate (2 ranks), preprocess (the increment statistics become those of what the plate's
spectral step misses), train, validate and roll out. Its errors stay near those of the spectral
step alone, computed here from the test split with the numpy reference, and below both baselines
at every horizon."""

from __future__ import annotations

import glob
import json

import h5py
import numpy as np
import pytest

from tests.fixtures import tiny_plate_twin_job
from tests.integration.procs import MPIRUN2, TWINHPC, run
from twinhpc.data.format import Manifest
from twinhpc.kernels.heat_spectral import PlateConstants, spectral_step_reference
from twinhpc.preprocess.prepared import read_state

pytestmark = pytest.mark.slow


def _split(tmp_path, name):
    u, f, p = [], [], []
    for path in sorted(glob.glob(str(tmp_path / f"data/plate/{name}-*.h5"))):
        with h5py.File(path) as h:
            u.append(h["field"][()])
            f.append(h["forcing"][()])
            p.append(h["params"][()])
    return np.concatenate(u).astype(np.float64), np.concatenate(f).astype(np.float64), np.concatenate(p)


@pytest.mark.timeout(900)
def test_a_hybrid_twin_trains_on_what_the_plate_s_step_misses_and_beats_both_baselines(tmp_path):
    (tmp_path / "job.toml").write_text(tiny_plate_twin_job(prior="plate", forcing_window=3))
    run([*MPIRUN2, *TWINHPC, "simulate", "job.toml"], tmp_path, timeout=300)
    run([*TWINHPC, "preprocess", "job.toml"], tmp_path)
    c = PlateConstants.from_provenance(Manifest.load(tmp_path / "data/plate").provenance["simulate"])

    # the fitted increment is what the spectral step misses, far smaller than the plain step
    norm, _ = read_state(tmp_path / "data/plate-pre/state.h5")
    assert norm.prior == {"kind": "plate", **c.to_dict()}
    u, f, p = _split(tmp_path, "train")
    n, frames = u.shape[:2]
    stepped = spectral_step_reference(
        c, u[:, :-1].reshape(-1, 10, 10), f.reshape(-1, 10, 10), np.repeat(p, frames - 1, axis=0)
    ).reshape(n, frames - 1, 10, 10)
    miss = u[:, 1:] - stepped
    assert float(norm.stats["step_std"]) == pytest.approx(miss.std(), rel=1e-3)
    assert float(norm.stats["step_std"]) < 0.2 * np.diff(u, axis=1).std()

    run([*TWINHPC, "train", "job.toml"], tmp_path, timeout=300)
    out = run([*TWINHPC, "validate", "job.toml", "--horizons", "1,4,8", "--json"], tmp_path, timeout=300)
    tv = json.loads(out.stdout.strip().splitlines()[-1])["twin_validation"]
    twin = np.array(tv["models"]["twin"]["nrmse_rise"])

    # the spectral step alone, rolled out over the test split from u[0]
    u, f, p = _split(tmp_path, "test")
    t_inf = p[:, c.index["t_inf"]][:, None, None]
    state, alone = u[:, 0], []
    for t in range(8):
        state = spectral_step_reference(c, state, f[:, t], p)
        rise = (u[:, t + 1] - t_inf).reshape(len(u), -1)
        alone.append(
            np.mean(np.linalg.norm((state - u[:, t + 1]).reshape(len(u), -1), axis=1) / np.linalg.norm(rise, axis=1))
        )
    alone = np.array(alone)[[0, 3, 7]]
    assert np.all(twin < 3 * alone + 1e-3), (twin, alone)
    for baseline in ("persistence", "linear"):
        assert np.all(twin < np.array(tv["models"][baseline]["nrmse_rise"])), (baseline, tv["models"][baseline])
    assert tv["stability"]["diverged"] == 0

    # the checkpoint carries the prior: a what-if rollout uses it without the preprocessed data
    r = run([*TWINHPC, "twin", "rollout", "runs/twin", "--steps", "8", "--out", "w.h5", "--json"], tmp_path)
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 8
    with h5py.File(tmp_path / "w.h5") as h:
        tw, sim = h["twin/field"][...], h["simulator/field"][...]
        t_inf = h["params"][json.loads(h["params"].attrs["names"]).index("t_inf")]
    rise = (
        np.linalg.norm((tw - sim).reshape(9, -1), axis=1)[1:] / np.linalg.norm((sim - t_inf).reshape(9, -1), axis=1)[1:]
    )
    assert np.isfinite(rise).all() and rise.max() < 0.05, rise  # the 50-step target of the full-size twin
