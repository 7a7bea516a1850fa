"""results.h5's /twin_validation: written into an existing file, read back, described; the
report's line and plots of it."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from twinhpc.errors import TwinError
from twinhpc.io.results import ResultsWriter, read_results, read_twin_validation, write_twin_validation
from twinhpc.report import summary
from twinhpc.report.twin import twin_plots


def _run(tmp_path):
    w = ResultsWriter(tmp_path, "{}", {})
    w.append_epoch({"loss": 1.0, "val_loss": 1.0})
    w.write_report({"task": "field", "nrmse": 0.01, "split": "val"})
    w.flush()
    return tmp_path


def _group(scale: float = 1.0):
    rng = np.random.default_rng(0)
    d = {"horizon": np.array([1, 4, 8]), "step": np.arange(1, 9), "scenario_index": np.arange(3)}
    for m in ("twin", "persistence", "linear"):
        for k in ("nrmse_rise", "nrmse", "rmse", "max_abs", "energy_residual"):
            d[f"{m}/{k}"] = scale * rng.random(3)
            d[f"{m}/{k}_full"] = np.float64(scale)
            d[f"{m}/{k}_per_step"] = scale * rng.random(8) + 0.01
        d[f"{m}/one_step_nrmse"] = np.float64(0.5)
    d["truth/energy_residual"], d["truth/energy_residual_full"] = rng.random(3), np.float64(0.1)
    d["truth/energy_residual_per_step"] = rng.random(8) + 0.001
    d["examples/index"], d["examples/time"] = np.array([0, 1]), np.array([1, 4, 8])
    d["examples/truth"] = rng.random((2, 3, 6, 6)).astype(np.float32)
    d["examples/twin"] = rng.random((2, 3, 6, 6)).astype(np.float32)
    return {"split": "test", "n": 3, "judged_on": "nrmse_rise", "steps": 8}, d


def test_written_into_the_run_read_back_and_described(tmp_path):
    run = _run(tmp_path)
    attrs, data = _group()
    write_twin_validation(run, attrs, data)
    got = read_twin_validation(run)
    assert got["attrs"] == attrs
    assert np.array_equal(got["twin/rmse"], data["twin/rmse"]) and got["twin/rmse_full"] == 1.0
    assert got["examples/truth"].dtype == np.float32 and got["examples/truth"].shape == (2, 3, 6, 6)
    r = read_results(run)
    assert r["report"]["nrmse"] == 0.01 and r["epochs"] == 1  # the rest of the file is kept
    with h5py.File(run / "results.h5") as f:
        g = f["twin_validation"]
        assert g["twin/rmse"].attrs["units"] == "K" and "at each horizon" in g["twin/rmse"].attrs["description"]
        assert "full rollout" in g["linear/nrmse_full"].attrs["description"]
        assert "T∞" in g["twin/nrmse_rise"].attrs["description"]
        assert "teacher forcing" in g["twin/one_step_nrmse"].attrs["description"]
        assert g["truth/energy_residual"].attrs["units"] == "1"
    # written again: replaced, not added to
    write_twin_validation(run, {**attrs, "n": 4}, _group(2.0)[1])
    again = read_twin_validation(run)
    assert again["attrs"]["n"] == 4 and again["twin/rmse_full"] == 2.0
    assert not (run / "results.h5.tmp").exists()
    # training again rewrites the file without it
    _run(tmp_path)
    assert read_twin_validation(run) == {}


def test_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(TwinError, match="no results file"):
        write_twin_validation(tmp_path, {}, {})
    with h5py.File(tmp_path / "results.h5", "w") as f:
        f.attrs["format"] = "other"
    with pytest.raises(TwinError, match="not a twinhpc results file"):
        write_twin_validation(tmp_path, {}, {})


def test_report_line_and_plots(tmp_path):
    run = _run(tmp_path)
    attrs, data = _group()
    write_twin_validation(run, attrs, data)
    r = read_results(run)
    text = summary(r, run)
    want = " / ".join(f"{data[f'{m}/nrmse_rise'][1]:.4g}" for m in ("twin", "persistence", "linear"))
    assert "twin validation (test split, 3 scenarios, nrmse_rise" in text and f"h=4 {want}" in text
    pngs = twin_plots(r["twin_validation"], run)
    assert [p.name for p in pngs] == ["twin_panels.png", "twin_horizon.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert twin_plots({}, run) == []


def test_report_states_the_stability_check_when_it_ran(tmp_path):
    run = _run(tmp_path)
    attrs, data = _group()
    write_twin_validation(run, attrs, data)
    assert "twin stability" not in summary(read_results(run), run)  # validated without the check
    attrs = {**attrs, "stability_steps": 500, "stability_tolerance": 10.0}
    bounded = {
        **data,
        "stability/excursion": np.array([0.0, 0.5, 2.0]),
        "stability/diverged_at": np.array([-1, -1, -1]),
    }
    write_twin_validation(run, attrs, bounded)
    text = summary(read_results(run), run)
    assert "twin stability (500 steps from u[T], forcing off): stable (bounded): " in text
    assert "largest 2 (median 0.5) widths" in text and "non-finite" not in text
    blown = {**bounded, "stability/diverged_at": np.array([-1, 312, -1])}
    write_twin_validation(run, attrs, blown)
    assert "UNSTABLE (blows up): " in (text := summary(read_results(run), run)) and "non-finite in 1 of 3" in text
    far = {**bounded, "stability/excursion": np.array([0.0, 0.5, 20.0])}
    write_twin_validation(run, attrs, far)
    assert "UNSTABLE (blows up): excursion beyond the span largest 20" in summary(read_results(run), run)
