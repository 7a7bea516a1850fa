"""``twinhpc report RUN``: the summary of a training run and its plots.

::

    from twinhpc.report import report
    text, pngs = report("runs/digits")       # summary text; PNGs written beside results.h5

Reads ``RUN/results.h5`` with :func:`twinhpc.io.results.read_results` (``docs/results-format.md``)
and writes ``loss.png`` (per epoch, and per recorded step beside it), ``metric.png``, ``lr.png``,
``confusion.png`` (classification) and ``timing.png`` (:mod:`.plots`), and for a validated twin ``twin_panels.png`` and
``twin_horizon.png`` (:mod:`.twin`), each titled with the run's name (its directory's).

Note:
    The report only reads: it works on a run that is still training (``results.h5`` is always a
    complete file, replaced atomically by each flush) and on a copied run directory without the
    dataset or the job file, because the job's configuration is stored in ``results.h5``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io.results import RESULTS, read_results, twin_stable
from . import plots

#: at most this many epoch rows in the table (the first and the last ones beyond it)
TABLE_ROWS = 20


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]


def metric_of(results: dict[str, Any]) -> str:
    """The run's per-epoch metric: ``train.metric``, else the task's default (accuracy / rmse /
    nrmse)."""
    train = results["config"].get("train", {})
    task = results["report"].get("task") or train.get("task", "classification")
    return train.get("metric") or {"classification": "accuracy", "field": "nrmse"}.get(task, "rmse")


def summary(results: dict[str, Any], run: str | os.PathLike = "RUN") -> str:
    """The text ``twinhpc report`` prints for a ``read_results`` dict."""
    config, metrics, rep = results["config"], results["metrics"], results["report"]
    metric = metric_of(results)
    lines = [
        f"run {run}: {results['epochs']} epoch(s), model {config.get('model', {}).get('name', '?')}, "
        f"dataset {config.get('data', {}).get('dataset', '?')}"
    ]
    if results.get("start_time"):
        commit = results.get("source_commit", "unknown")
        lines.append(
            f"started {results['start_time']}, last written {results.get('end_time') or '?'}; "
            f"twinhpc {results.get('twinhpc_version') or '?'} (commit {commit[:12]}): {results.get('command') or '?'}"
        )
    names = [
        n for n in ("loss", "val_loss", metric, f"val_{metric}", "lr", "epoch_time_s", "samples_per_s") if n in metrics
    ] + sorted(
        n
        for n in metrics
        if n not in ("loss", "val_loss", metric, f"val_{metric}", "lr", "epoch_time_s", "samples_per_s")
    )
    key = [m for m in ("loss", "val_loss", metric, f"val_{metric}") if m in metrics]
    n = results["epochs"]
    if n:
        shown = list(range(n)) if n <= TABLE_ROWS else [*range(5), *range(n - TABLE_ROWS + 5, n)]
        number = [int(e) for e in results.get("epoch", range(1, n + 1))]  # /metrics/epoch: from 1
        lines += ["", *_table(["epoch", *names], [[number[e], *(metrics[m][e] for m in names)] for e in shown])]
        watched = f"val_{metric}" if f"val_{metric}" in metrics else "val_loss" if "val_loss" in metrics else None
        if watched and np.isfinite(metrics[watched]).any():
            b = plots.best_epoch(metrics[watched], watched.removeprefix("val_"))
            lines += ["", f"best epoch {number[b]}: " + ", ".join(f"{m} {_fmt(metrics[m][b])}" for m in key)]
        lines.append(f"last epoch {number[-1]}: " + ", ".join(f"{m} {_fmt(metrics[m][-1])}" for m in key))
    if rep:
        lines += ["", _report_text(rep)]
    else:
        lines += ["", "final report: none yet (written when training ends)"]
    tv = results.get("twin_validation") or {}
    if tv and "horizon" in tv:
        a = tv["attrs"]
        judged = str(a.get("judged_on", "nrmse"))
        lines += [
            "",
            f"twin validation ({a.get('split', '?')} split, {a.get('n', '?')} scenarios, {judged}; "
            "twin / persistence / linear): "
            + ", ".join(
                f"h={int(h)} " + " / ".join(_fmt(tv[f"{m}/{judged}"][i]) for m in ("twin", "persistence", "linear"))
                for i, h in enumerate(tv["horizon"])
            ),
        ]
        if "stability/excursion" in tv:
            exc, div = np.asarray(tv["stability/excursion"]), np.asarray(tv["stability/diverged_at"])
            stable = twin_stable(exc, div, float(a.get("stability_tolerance", np.inf)))
            lines.append(
                f"twin stability ({int(a.get('stability_steps', 0))} steps from u[T], forcing off): "
                + ("stable (bounded)" if stable else "UNSTABLE (blows up)")
                + f": excursion beyond the span largest {_fmt(exc.max())} (median {_fmt(np.median(exc))}) widths"
                + (f"; non-finite in {int((div >= 0).sum())} of {len(div)} scenarios" if (div >= 0).any() else "")
            )
    timing = {k: float(np.nansum(v)) for k, v in results["timing"].items()}
    if timing:
        total = sum(timing.values()) or 1.0
        lines += [
            "",
            "timing over all epochs (rank 0): "
            + ", ".join(f"{k} {v:.2f} s ({v / total:.1%})" for k, v in sorted(timing.items(), key=lambda kv: -kv[1])),
        ]
    return "\n".join(lines)


def _report_text(rep: dict[str, Any]) -> str:
    used = f", checkpoint {rep['checkpoint']}" if rep.get("checkpoint") else ""
    if rep.get("best_checkpoint"):
        used += f"; best kept: {rep['best_checkpoint']}"
    head = f"final report ({rep.get('split', '?')} split, {rep.get('n', '?')} samples{used}): "
    if rep.get("task") == "regression":
        return head + ", ".join(f"{k} {_fmt(rep[k])}" for k in ("loss", "mae", "rmse", "r2") if k in rep)
    if rep.get("task") == "field":
        return head + ", ".join(f"one-step {k} {_fmt(rep[k])}" for k in ("loss", "nrmse", "rmse") if k in rep)
    lines = [head + ", ".join(f"{k} {_fmt(rep[k])}" for k in ("accuracy", "loss", "macro_f1") if k in rep)]
    if "precision" in rep:
        classes = rep.get("classes", [str(i) for i in range(len(rep["precision"]))])
        lines += _table(
            ["class", "precision", "recall", "f1", "support"],
            [
                [c, p, r, f, int(s)]
                for c, p, r, f, s in zip(classes, rep["precision"], rep["recall"], rep["f1"], rep["support"])
            ],
        )
    return "\n".join(lines)


def write_plots(results: dict[str, Any], directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Write the run's PNGs into ``directory``, titled with ``name`` (default: the directory's
    name); returns their paths (plots without data are left out: no confusion matrix for
    regression or before the final report, no ``lr.png`` without a recorded learning rate)."""
    directory = Path(directory)
    name = directory.resolve().name if name is None else name
    out = []
    if results["epochs"]:
        out.append(plots.loss_plot(results, directory / "loss.png", name))
        out.append(plots.metric_plot(results, metric_of(results), directory / "metric.png", name))
    steps = results.get("steps", {})
    if ("lr" in steps and np.isfinite(steps["lr"]).any()) or (
        results["epochs"] and "lr" in results["metrics"] and np.isfinite(results["metrics"]["lr"]).any()
    ):
        out.append(plots.lr_plot(results, directory / "lr.png", name))
    if "confusion" in results["report"]:
        out.append(plots.confusion_plot(results["report"], directory / "confusion.png", name))
    if results["timing"] and results["epochs"]:
        out.append(plots.timing_plot(results, directory / "timing.png", name))
    if results.get("twin_validation"):
        from .twin import twin_plots

        out += twin_plots(results["twin_validation"], directory, name)
    return out


def report(run: str | os.PathLike, plot: bool = True) -> tuple[str, list[Path]]:
    """The summary of the run ``run`` (a run directory or its ``results.h5``) and its PNGs.

    Raises
    ------
    TwinError
        Naming the file when ``results.h5`` is missing or unreadable.
    """
    run = Path(run)
    directory = run if run.is_dir() else run.parent
    results = read_results(run)
    pngs = write_plots(results, directory) if plot else []
    text = summary(results, directory / RESULTS if not run.is_dir() else run)
    if pngs:
        text += "\n\nplots: " + ", ".join(str(p) for p in pngs)
    return text, pngs
