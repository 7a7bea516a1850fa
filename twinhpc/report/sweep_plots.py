"""PNG plots of a sweep (matplotlib, Agg backend), written into ``SWEEP/report/`` atomically:

- ``metric_vs_epochs.png``: every trial's per-epoch metric, read from its
  ``SWEEP/trials/<id>/results.h5``, against epochs; the rungs as vertical lines; completed,
  paused or stopped, running and failed trials drawn apart, the best trial in black.
- ``param_<key>.png``, one per searched key: the trial's value against its metric at the
  highest rung it reached, coloured by that rung; a log axis for ``loguniform`` and ``int``
  with ``log``, one column per choice for ``choice``.

Each title names the sweep's folder. matplotlib is imported inside :func:`_pyplot`, so
``twinhpc`` starts without it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TwinError
from ..io.atomic import writing
from ..io.results import read_results

if TYPE_CHECKING:
    from ..config.sweep import Param
    from .sweep import Entry, SweepReport

#: how each trial status is drawn on metric_vs_epochs.png: (legend, colour, line style, marker)
STYLES = {
    "completed": ("completed", "tab:blue", "-", "o"),
    "paused": ("paused / stopped", "tab:gray", "--", "."),
    "stopped": ("paused / stopped", "tab:gray", "--", "."),
    "running": ("running / queued", "tab:orange", "-", "."),
    "queued": ("running / queued", "tab:orange", "-", "."),
    "failed": ("failed", "tab:red", ":", "x"),
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    try:
        with writing(path, lambda e: f"{path}: cannot write the plot ({e.strerror or e})") as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def file_name(key: str) -> str:
    """``param_<key>.png``, the key's characters other than letters, digits, ``.``, ``_``, ``-``
    replaced by ``_``."""
    return "param_" + re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".png"


def trial_curves(rep: SweepReport) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Each trial's per-epoch metric from its results.h5, and the trials left out with why."""
    from .sweep import trial_dir

    curves: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    for t in rep.file.trials:
        folder = trial_dir(rep.directory, t.id)
        if not (folder / "results.h5").is_file():
            skipped[t.id] = "no results.h5"
            continue
        try:
            results = read_results(folder)
        except TwinError as e:
            skipped[t.id] = f"unreadable: {e}"
            continue
        values = results["metrics"].get(rep.file.metric)
        if values is None or len(values) == 0:
            skipped[t.id] = f"no {rep.file.metric} recorded yet"
            continue
        curves[t.id] = np.asarray(values, dtype=np.float64)
    return curves, skipped


def metric_vs_epochs(rep: SweepReport, curves: dict[int, np.ndarray], path: Path) -> Path:
    """Every trial's metric per epoch, the rungs marked (see the module's docstring)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 5))
    status = {t.id: t.status for t in rep.file.trials}
    best = rep.best.trial if rep.best is not None else None
    for trial, y in sorted(curves.items()):
        label, colour, style, marker = STYLES.get(status[trial], ("other", "tab:purple", "-", "."))
        x = np.arange(1, len(y) + 1)
        if trial == best:
            continue
        ax.plot(x, y, linestyle=style, color=colour, alpha=0.7, linewidth=1.2)
        ax.plot(x[-1:], y[-1:], marker=marker, color=colour, markersize=6, linestyle="none")
    if best is not None and best in curves:
        y = curves[best]
        ax.plot(np.arange(1, len(y) + 1), y, "-", color="black", linewidth=2.4, zorder=5)
    top = max([len(y) for y in curves.values()] + [rep.max_epochs])
    for i, r in enumerate(rep.rungs):
        ax.axvline(r, color="black", alpha=0.35, linestyle="-.", linewidth=0.9)
        ax.annotate(
            f"rung {i}",
            (r, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            fontsize=7,
            alpha=0.7,
        )
    present = {STYLES.get(s, ("other", "tab:purple", "-", "."))[0] for t, s in status.items() if t in curves}
    handles = [
        Line2D([], [], color=c, linestyle=ls, marker=m, label=lab)
        for lab, c, ls, m in dict.fromkeys(STYLES.values())
        if lab in present
    ]
    if best is not None and best in curves:
        handles.append(Line2D([], [], color="black", linewidth=2.4, label=f"best: trial {best}"))
    handles.append(Line2D([], [], color="black", alpha=0.35, linestyle="-.", label="rungs"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlim(0.5, top + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    better = "higher" if rep.file.direction == "max" else "lower"
    ax.set(
        xlabel="epoch",
        ylabel=f"{rep.file.metric} ({better} is better)",
        title=f"sweep {rep.name}: {rep.file.metric} per epoch ({len(curves)} of {len(rep.file.trials)} trials)",
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _category(value: Any, choices: tuple[Any, ...]) -> int:
    for i, c in enumerate(choices):
        if type(c) is type(value) and c == value:
            return i
    return next((i for i, c in enumerate(choices) if c == value), -1)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def axis_kind(param: Param | None) -> str:
    """The x axis of a parameter's plot: ``"category"`` for a choice, ``"log"`` for
    ``loguniform`` and ``int`` with ``log``, else ``"linear"``."""
    if param is None:
        return "linear"
    if param.kind == "choice":
        return "category"
    return "log" if param.kind == "loguniform" or (param.kind == "int" and param.log) else "linear"


def param_plot(rep: SweepReport, key: str, path: Path) -> Path:
    """One searched key's value against each trial's metric at the highest rung it reached."""
    plt = _pyplot()
    param = next((p for p in rep.space if p.key == key), None)
    axis = axis_kind(param)
    entries: list[Entry] = [e for e in rep.entries if e.rung >= 0 and math.isfinite(e.final)]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = plt.get_cmap("viridis")
    n = len(rep.rungs)
    choices: tuple[Any, ...] = param.choices if param is not None and axis == "category" else ()

    def x_of(e: Entry) -> float:
        if axis == "category":
            jitter = ((e.trial * 0.6180339887) % 1.0 - 0.5) * 0.3
            return _category(e.params[key], choices) + jitter
        return float(e.params[key])

    for r in range(n):
        at = [e for e in entries if e.rung == r]
        for failed in (False, True):
            group = [e for e in at if (e.status == "failed") == failed]
            if not group:
                continue
            label = f"reached rung {r} ({rep.rungs[r]} epoch{'s' if rep.rungs[r] != 1 else ''})" + (
                ", failed" if failed else ""
            )
            style = (
                {"marker": "x", "linewidths": 1.5}
                if failed
                else {"marker": "o", "edgecolors": "black", "linewidths": 0.4}
            )
            ax.scatter(
                [x_of(e) for e in group],
                [e.final for e in group],
                color=cmap(r / max(n - 1, 1)),
                s=36,
                label=label,
                zorder=3,
                **style,
            )
    best = rep.best
    if best is not None:
        ax.scatter(
            [x_of(best)], [best.final], marker="*", s=220, facecolors="none", edgecolors="red", zorder=4, label="best"
        )
    if axis == "log":
        ax.set_xscale("log")
    if axis == "category":
        ax.set_xticks(range(len(choices)), [_label(c) for c in choices], rotation=30 if len(choices) > 4 else 0)
        ax.set_xlim(-0.6, len(choices) - 0.4)
    better = "higher" if rep.file.direction == "max" else "lower"
    ax.set(
        xlabel=key,
        ylabel=f"{rep.file.metric} at its highest rung ({better} is better)",
        title=f"sweep {rep.name}: {rep.file.metric} vs {key}",
    )
    ax.grid(alpha=0.3)
    if entries:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def write_plots(rep: SweepReport, directory: Path) -> tuple[list[Path], dict[int, str]]:
    """Write the sweep's PNGs into ``directory``; returns their paths and the trials left out of
    metric_vs_epochs.png (trial → why)."""
    curves, skipped = trial_curves(rep)
    out = [metric_vs_epochs(rep, curves, directory / "metric_vs_epochs.png")]
    keys = [p.key for p in rep.space] or list(rep.file.params)
    out += [param_plot(rep, key, directory / file_name(key)) for key in keys]
    return out, skipped
