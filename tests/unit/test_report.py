"""`twinhpc report`: summary text and PNG plots from a results.h5 written with ResultsWriter."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from twinhpc.cli.main import main
from twinhpc.errors import TwinError
from twinhpc.io.results import ResultsWriter
from twinhpc.report import report
from twinhpc.train.metrics import confusion_report, regression_report

CLASSES = ["cat", "dog", "zebra"]


def write_run(run, task="classification", epochs=4, seed=0):
    rng = np.random.default_rng(seed)
    metric = "accuracy" if task == "classification" else "rmse"
    config = (
        '{"data": {"dataset": "data/x"}, "model": {"name": "cnn"}, '
        f'"train": {{"task": "{task}", "metric": "{metric}"}}}}'
    )
    w = ResultsWriter(run, config, {"ranks": 1})
    history = []
    for e in range(epochs):
        m = {
            "loss": 1.0 / (e + 1),
            "val_loss": 1.2 / (e + 1) + 0.1 * (e == epochs - 1),
            f"val_{metric}": float(rng.uniform(0.5, 0.9)),
            "lr": 1e-3,
            "epoch_time_s": 2.0,
        }
        history.append(m)
        w.append_epoch(m, timing={"data_wait": 0.1, "forward_backward": 1.5, "communication": 0.3, "optimizer": 0.1})
    lr = 1e-3 * 0.5 ** np.arange(4 * epochs)  # a decaying schedule, a record per step
    w.append_steps({"step": np.arange(1, 4 * epochs + 1), "loss": 2.0 / np.arange(1, 4 * epochs + 1), "lr": lr})
    if task == "classification":
        y = rng.integers(0, 3, 60)
        pred = np.where(rng.random(60) < 0.7, y, rng.integers(0, 3, 60))
        w.write_report({**confusion_report(y, pred, 3, CLASSES), "loss": 0.5, "split": "val"})
    else:
        y = rng.normal(size=40)
        w.write_report({**regression_report(y, y + 0.1 * rng.normal(size=40)), "loss": 0.01, "split": "val"})
    w.flush()
    return history


def test_classification_summary_and_plots(tmp_path, capsys):
    history = write_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    best = int(np.argmax([h["val_accuracy"] for h in history]))
    assert f"best epoch {best + 1}:" in text and f"val_accuracy {history[best]['val_accuracy']:.4g}" in text
    assert f"last epoch {len(history)}:" in text
    for word in ("precision", "recall", "macro_f1", *CLASSES, "forward_backward", "data_wait"):
        assert word in text
    assert "lr" in text.splitlines()[3].split()  # the per-epoch table's header
    for name in ("loss", "metric", "lr", "confusion", "timing"):
        with Image.open(tmp_path / f"{name}.png") as im:
            im.verify()
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            # not a blank canvas: a real plot uses many colours
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    assert not list(tmp_path.glob("*.tmp.png"))


def test_plots_carry_the_run_name_the_learning_rate_and_the_loss_per_step(tmp_path, monkeypatch):
    """What each figure shows, taken from the figures themselves before they are saved."""
    from twinhpc.report import plots

    run = tmp_path / "cifar-lr0.1"
    write_run(run, epochs=3)
    figures = {}
    real_save = plots._save

    def keep(fig, path):
        figures[path.name] = [
            (ax.get_title(), ax.get_xlabel(), [line.get_xydata() for line in ax.lines]) for ax in fig.axes
        ]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    text, pngs = report(run)
    assert {p.name for p in pngs} == {"loss.png", "metric.png", "lr.png", "confusion.png", "timing.png"}
    for name, axes in figures.items():
        titles = [t for t, _, _ in axes if t]  # a colour bar has no title
        assert titles and all(t.startswith("cifar-lr0.1: ") for t in titles), (name, titles)
    (_, x1, per_epoch), (_, x2, per_step) = figures["loss.png"]
    assert (x1, x2) == ("epoch", "optimizer step")
    np.testing.assert_array_equal(per_epoch[0], [[1, 1.0], [2, 0.5], [3, 1 / 3]])  # loss at epochs 1..3
    np.testing.assert_array_equal(per_step[0], np.c_[np.arange(1, 13), 2.0 / np.arange(1, 13)])
    [(title, xlabel, lines)] = figures["lr.png"]
    assert title == "cifar-lr0.1: learning rate per step" and xlabel == "optimizer step"
    np.testing.assert_array_equal(lines[0], np.c_[np.arange(1, 13), 1e-3 * 0.5 ** np.arange(12)])


def test_regression_has_no_confusion_plot(tmp_path):
    write_run(tmp_path, task="regression")
    text, pngs = report(tmp_path)
    assert {p.name for p in pngs} == {"loss.png", "metric.png", "lr.png", "timing.png"}
    assert "rmse" in text and "r2" in text and "precision" not in text


def test_missing_results_names_the_file(tmp_path, capsys):
    with pytest.raises(TwinError, match=str(tmp_path)):
        report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
