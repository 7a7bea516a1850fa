"""jobs/plate_twin_fno.toml (the twin from data alone) as a user runs it, under ``mpirun -n 2``,
on a small heat ensemble in the layout of ``twinhpc simulate`` (ingested with ``twinhpc ingest
npz`` into ``data/plate``): preprocess, train one epoch (``--until-epoch 1``), resume to the end,
validate; the one-step nRMSE of the report is below persistence's, and the run's checkpoint rolls
out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import heat_ensemble
from tests.integration.procs import MPIRUN2, TWINHPC, run
from twinhpc.io.results import read_results
from twinhpc.train.rollout import rollout

pytestmark = pytest.mark.slow
JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.mark.timeout(600)
def test_plate_twin_job_trains_validates_and_rolls_out_on_two_ranks(tmp_path):
    arrays = heat_ensemble(24, 10, 16, seed=4)
    np.savez(tmp_path / "heat.npz", **arrays)
    job = tmp_path / "plate_twin_fno.toml"
    shutil.copy(JOBS / "plate_twin_fno.toml", job)
    small = [f"--set={kv}" for kv in ("model.structure.width=8", "model.structure.modes=4", "train.epochs=3")]
    run([*MPIRUN2, *TWINHPC, "ingest", "npz", "heat.npz", "--out", "data/plate", "--val-fraction", "0.25"], tmp_path)
    out = run([*MPIRUN2, *TWINHPC, "preprocess", job, *small], tmp_path).stdout
    assert "state 'field' (10 steps on a grid (16, 16))" in out
    run([*MPIRUN2, *TWINHPC, "train", job, *small, "--until-epoch", "1"], tmp_path, timeout=300)
    assert read_results(tmp_path / "runs" / "plate_twin_fno")["epochs"] == 1
    run([*MPIRUN2, *TWINHPC, "train", job, *small, "--resume"], tmp_path, timeout=300)
    results = read_results(tmp_path / "runs" / "plate_twin_fno")
    assert results["epochs"] == 3 and np.isfinite(results["metrics"]["val_nrmse"]).all()
    assert results["report"]["nrmse"] == results["metrics"]["val_nrmse"][-1]
    report = json.loads(
        run([*MPIRUN2, *TWINHPC, "validate", job, *small, "--split", "val", "--json"], tmp_path)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert report["task"] == "field" and report["split"] == "val" and report["n"] > 0
    assert report["twin_validation"]["split"] == "val" and report["twin_validation"]["judged_on"] == "nrmse"
    val_u = arrays["field"]  # persistence over the whole ensemble, for scale
    persistence = np.mean(
        np.linalg.norm((val_u[:, 1:] - val_u[:, :-1]).reshape(24, 10, -1), axis=-1)
        / np.linalg.norm(val_u[:, 1:].reshape(24, 10, -1), axis=-1)
    )
    assert report["nrmse"] < persistence, (report, persistence)
    u = rollout(
        tmp_path / "runs" / "plate_twin_fno", arrays["field"][:3, 0], arrays["forcing"][:3], arrays["params"][:3]
    )
    assert u.shape == (3, 11, 16, 16) and np.isfinite(u).all()
