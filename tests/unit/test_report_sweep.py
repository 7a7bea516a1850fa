"""`twinhpc report SWEEP`: the leaderboard (both directions, NaN and failed trials), the settings
and decisions, a sweep in progress, the PNGs read from the trials' real results.h5, SWEEP/best.toml
(loaded and trained) and --json. The sweeps are driven by hand through the real Sweep API
(tests/sweep_builder.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from tests import sweep_builder as sb
from twinhpc.config import load_job
from twinhpc.config.sweep import Param
from twinhpc.errors import TwinError
from twinhpc.io.results import read_results
from twinhpc.report.sweep import BEST_FILE, REPORT_DIR, sweep_report
from twinhpc.report.sweep_plots import axis_kind

#: the order the scenario of tests/sweep_builder.py must give: trial 1 reached the last rung,
#: trial 3 rung 1, trials 0 (accuracy 0.45) and 5 (0.40) rung 0, trial 2 (NaN) ranks below them;
#: trial 4, the best at rung 0 (0.63), failed in its next segment
ORDER = [1, 3, 0, 5, 2, 4]
NOW = 2000.0


@pytest.fixture
def finished(tmp_path):
    sb.build(tmp_path, str(tmp_path / "data"))
    return tmp_path / "sweep"


@pytest.mark.parametrize("metric, direction", [("val_accuracy", "max"), ("val_loss", "min")])
def test_leaderboard_in_the_sweeps_direction_nan_and_failed_last(tmp_path, metric, direction):
    sb.build(tmp_path, str(tmp_path / "data"), metric)
    rep = sweep_report(tmp_path / "sweep", plot=False, now=NOW)
    assert rep.file.direction == direction
    assert [e.trial for e in rep.entries] == ORDER
    assert [e.rank for e in rep.entries] == [1, 2, 3, 4, 5, None]
    # within rung 0 the order follows the direction: 0.45 above 0.40 (max), 1.55 above 1.60 (min)
    rung0 = [e.final for e in rep.entries if e.rung == 0 and e.rank is not None and math.isfinite(e.final)]
    assert rung0 == sorted(rung0, reverse=direction == "max") and len(rung0) == 2
    assert math.isnan(rep.entries[4].final) and rep.entries[4].status == "stopped"
    assert rep.best.trial == 1 and rep.best_is_final
    assert rep.best.final == pytest.approx(sb.metric_value(metric, 1, 4))
    failed = rep.entries[-1]
    assert failed.status == "failed" and failed.error == sb.ERROR
    assert failed.log == str(tmp_path / "sweep" / "trials" / "0004" / "log")

    text = rep.text()
    assert f"trial 4: {sb.ERROR} (log: {failed.log})" in text
    assert "best: trial 1," in text and "(the last rung)" in text
    assert f"metric       {metric} ({direction}" in text
    assert "scheduler    asha: rungs 1, 2, 4 epochs, reduction factor 2" in text
    assert "trials       6 of 6 done (1 completed, 1 failed, 4 stopped)" in text
    # epochs: trial 1 trained 4, trials 3 and 4 two, trials 0, 2, 5 one each; budget 6 trials × 4
    assert "epochs       11 trained of 24 (6 trials × 4 max_epochs: 46%)" in text
    # the leaderboard's rows in order, each with its trial's values and its status
    rows = [
        line.split() for line in text.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"], ["4"], ["5"], ["-"])
    ]
    rows = [r for r in rows if len(r) >= 10]
    assert [int(r[1]) for r in rows] == ORDER
    assert rows[0][-3:-1] == ["completed", "22.0"] and rows[-1][-3] == "failed"
    # the decisions per rung: at rung 0 six starts, three promotions, three pauses, three stops;
    # at rung 1 one promotion, two pauses, one stop, one failure
    lines = {line.split(" (")[0].strip(): line.split()[3:] for line in text.splitlines() if " epoch" in line}
    assert lines["0"] == ["6", "3", "3", "0", "3", "0"] and lines["1"] == ["0", "1", "2", "0", "1", "1"]


def test_a_sweep_in_progress_names_its_best_so_far(tmp_path, cli):
    sweep = sb.build(tmp_path, str(tmp_path / "data"), rounds=1)  # trials 1 (rung 1) and 2 (new) running
    assert not sweep.finished
    rep = sweep_report(tmp_path / "sweep", plot=False, now=NOW)
    assert [(e.trial, e.status, e.rank) for e in rep.entries] == [
        (1, "running", 1),
        (0, "paused", 2),
        (2, "running", None),
    ]
    running = rep.entries[2]
    record = sweep.records[2]
    assert running.wall_s == pytest.approx(NOW - record.started_at) and running.wall_s > 0
    assert rep.best.trial == 1 and not rep.best_is_final
    text = rep.text()
    assert text.startswith(f"sweep {tmp_path / 'sweep'}: in progress")
    assert (
        "best so far: trial 1, val_accuracy 0.6 at 1 epoch (no trial has reached the last rung, 4 epochs, yet)" in text
    )
    assert "trials       0 of 6 done; 2 running, 1 paused; 3 not started" in text
    assert "best so far" in (tmp_path / "sweep" / BEST_FILE).read_text()
    r = cli("report", tmp_path / "sweep", "--json", "--no-plots")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["best"]["trial"] == 1 and out["best"]["final"] is False
    assert out["leaderboard"][2]["rank"] is None and out["leaderboard"][2]["final"] is None


def test_a_sweep_with_no_report_yet(tmp_path):
    sb.build(tmp_path, str(tmp_path / "data"), rounds=0)
    (tmp_path / "sweep" / BEST_FILE).write_text("# the best of an earlier report, whose trial failed since\n")
    rep = sweep_report(tmp_path / "sweep", now=NOW)
    assert rep.best is None and rep.best_toml is None and not (tmp_path / "sweep" / BEST_FILE).exists()
    assert "best: none yet" in rep.text()
    assert {e.status for e in rep.entries} == {"running"}


def png_pixels(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path}: a blank canvas"
    return pixels


def test_plots_are_pngs_read_from_the_trials_results(finished, cli):
    r = cli("report", finished)
    assert r.returncode == 0, r.stderr
    report = finished / REPORT_DIR
    names = {"metric_vs_epochs.png", "param_optim.lr.png", "param_optim.schedule.png"}
    assert {p.name for p in report.iterdir()} == names | {"param_model.structure.hidden.png"}
    before = {name: png_pixels(report / name) for name in sorted(p.name for p in report.iterdir())}
    assert "metric_vs_epochs.png: 6 trial(s) plotted" in r.stdout
    assert str(report / "param_optim.lr.png") in r.stdout
    # each curve comes from the trial's results.h5: without one, the trial is left out and counted
    assert read_results(finished / "trials" / "0003")["epochs"] == 2
    (finished / "trials" / "0003" / "results.h5").unlink()
    r = cli("report", finished)
    assert r.returncode == 0, r.stderr
    assert "metric_vs_epochs.png: 5 trial(s) plotted, 1 skipped without results: trial 3 (no results.h5)" in r.stdout
    after = png_pixels(report / "metric_vs_epochs.png")
    assert after.shape != before["metric_vs_epochs.png"].shape or (after != before["metric_vs_epochs.png"]).any()
    # the parameter plots come from sweep.h5, not from the trials' files
    assert (png_pixels(report / "param_optim.lr.png") == before["param_optim.lr.png"]).all()
    assert not [p for p in report.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_parameter_axes(finished):
    rep = sweep_report(finished, plot=False)
    axes = {p.key: axis_kind(p) for p in rep.space}
    assert axes == {"optim.lr": "log", "optim.schedule": "category", "model.structure.hidden": "log"}
    assert axis_kind(Param("train.dropout", "uniform", low=0.0, high=0.5)) == "linear"
    assert axis_kind(Param("data.batch_size", "int", low=8, high=64)) == "linear"


def test_no_plots_writes_none(finished, cli):
    r = cli("report", finished, "--no-plots")
    assert r.returncode == 0, r.stderr
    assert not (finished / REPORT_DIR).exists() and "plots:" not in r.stdout
    assert (finished / BEST_FILE).is_file()


def test_json_matches_the_report(finished, cli):
    r = cli("report", finished / "sweep.h5", "--json", "--no-plots")  # sweep.h5 itself names the sweep
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rep = sweep_report(finished, plot=False)
    assert [e["trial"] for e in out["leaderboard"]] == ORDER
    assert out["leaderboard"] == json.loads(json.dumps(rep.to_dict()))["leaderboard"]
    nan_row = out["leaderboard"][4]
    assert nan_row["trial"] == sb.DIVERGES and nan_row["final"] is None and nan_row["metrics"][1:] == [None, None]
    assert out["leaderboard"][-1]["error"] == sb.ERROR
    s = out["settings"]
    assert (s["trials"], s["done"], s["rungs"], s["metric"], s["direction"]) == (6, 6, [1, 2, 4], "val_accuracy", "max")
    assert (s["epochs_trained"], s["epochs_budget"], s["finished"]) == (11, 24, True)
    assert 0 < s["utilisation"] <= 1
    assert out["decisions"]["2"] == {"complete": 1}
    assert out["best"] == {
        "trial": 1,
        "metric": pytest.approx(0.75),
        "rung": 2,
        "epochs": 4,
        "final": True,
        "params": rep.best.params,
    }
    assert out["best_toml"] == str(finished / BEST_FILE)


def test_errors_name_the_path(tmp_path, cli):
    r = cli("report", tmp_path, "--json")
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "--json" in r.stderr
    with pytest.raises(TwinError, match="no sweep.h5"):
        sweep_report(tmp_path)


def test_best_toml_loads_with_the_best_values_and_trains(small_image_job, tmp_path, cli, monkeypatch):
    sweep = sb.build(tmp_path, small_image_job.data.dataset)
    monkeypatch.chdir(tmp_path)
    rep = sweep_report(tmp_path / "sweep", plot=False)
    path = tmp_path / "sweep" / BEST_FILE
    assert rep.best_toml == path
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "sweep sweep" in header[0] and "trial 1, val_accuracy = 0.75 (max) at 4 epochs (the last rung)" in text
    job = load_job(path)
    best = sweep.params(1)
    assert job.sweep is None and "[sweep" not in text
    assert job.optim.lr == best["optim.lr"] and job.optim.schedule == best["optim.schedule"]
    assert job.model.structure["hidden"] == best["model.structure.hidden"]
    assert job.train.epochs == 4 and job.train.out == "runs/sweep-best"
    # everything else as the trial trained it
    trial = sweep.trial_job(1)
    assert job.data == trial.data and job.preprocess == trial.preprocess and job.model == trial.model
    r = cli("train", path, "--set", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    assert read_results(tmp_path / "runs" / "sweep-best")["epochs"] == 1
