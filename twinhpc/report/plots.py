"""PNG plots of a run (matplotlib, Agg backend): loss, metric, confusion matrix, timing.

Every function takes the dict of :func:`twinhpc.io.results.read_results` and a path, and writes
the PNG atomically (``<name>.tmp.png``, then rename), so a reader never sees half an image.

Note:
    matplotlib is imported inside :func:`_pyplot` with the non-interactive Agg backend forced,
    so plotting works on compute and login nodes without a display and ``twinhpc`` starts
    without importing matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

#: timing phases in stacking order, and their colours
PHASES = (
    ("data_wait", "#d62728"),
    ("forward_backward", "#1f77b4"),
    ("communication", "#ff7f0e"),
    ("optimizer", "#2ca02c"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _epochs(n: int) -> np.ndarray:
    return np.arange(1, n + 1)


def loss_plot(results: dict[str, Any], path: Path) -> Path:
    """``loss`` and ``val_loss`` per epoch (log scale when they span more than a decade)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = []
    for name, style in (("loss", "o-"), ("val_loss", "s--")):
        if name in results["metrics"]:
            y = results["metrics"][name]
            ax.plot(_epochs(len(y)), y, style, label=name, markersize=4)
            values.append(y[np.isfinite(y)])
    finite = np.concatenate(values) if values else np.zeros(0)
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="loss", title="loss per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def metric_plot(results: dict[str, Any], metric: str, path: Path) -> Path:
    """The validation metric ``val_<metric>`` (and the training one, if recorded) per epoch, the
    best epoch marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in ((metric, "o-"), (f"val_{metric}", "s--")):
        if name in results["metrics"]:
            y = results["metrics"][name]
            ax.plot(_epochs(len(y)), y, style, label=name, markersize=4)
    val = results["metrics"].get(f"val_{metric}")
    if val is not None and np.isfinite(val).any():
        best = best_epoch(val, metric)
        ax.plot([best + 1], [val[best]], "*", color="black", markersize=10, label=f"best val_{metric}")
        ax.annotate(
            f"{val[best]:.4g}",
            (best + 1, val[best]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def best_epoch(values: np.ndarray, metric: str) -> int:
    """Index of the best finite value: smallest for losses, MAE and RMSE, else largest."""
    from ..config.training import SMALLER_IS_BETTER

    v = np.where(np.isfinite(values), values, np.inf if metric in SMALLER_IS_BETTER else -np.inf)
    return int(np.argmin(v) if metric in SMALLER_IS_BETTER else np.argmax(v))


def confusion_plot(report: dict[str, Any], path: Path) -> Path:
    """The confusion matrix normalised per true class (rows sum to 1), with the counts."""
    plt = _pyplot()
    confusion = np.asarray(report["confusion"], np.float64)
    names = [str(c) for c in report.get("classes", range(len(confusion)))]
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    k = len(names)
    size = min(12.0, 3.0 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"confusion ({report.get('split', 'val')}, accuracy {report.get('accuracy', float('nan')):.4f})",
    )
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{share[i, j]:.2f}\n{int(confusion[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    return _save(fig, path)


def timing_plot(results: dict[str, Any], path: Path) -> Path:
    """Seconds per epoch in each timing phase, stacked (phases not recorded are left out)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    timing = results["timing"]
    known = [(name, colour) for name, colour in PHASES if name in timing]
    others = [(name, None) for name in sorted(timing) if name not in dict(PHASES)]
    bottom = np.zeros(results["epochs"])
    x = _epochs(results["epochs"])
    for name, colour in known + others:
        y = np.nan_to_num(timing[name])
        ax.bar(x, y, bottom=bottom, label=name, color=colour)
        bottom += y
    ax.set(xlabel="epoch", ylabel="seconds", title="time per epoch by phase")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3, axis="y")
    if known or others:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)
