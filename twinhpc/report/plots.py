"""PNG plots of a run (matplotlib, Agg backend): loss, metric, learning rate, confusion matrix,
timing.

Every function takes the dict of :func:`twinhpc.io.results.read_results`, a path and the run's
name (which every title starts with, so that plots of several runs side by side tell which is
which), and writes the PNG atomically (``<name>.tmp.png``, then rename), so a reader never sees
half an image.

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


def _titled(name: str, what: str) -> str:
    return f"{name}: {what}" if name else what


def _log_if_wide(ax, values: list[np.ndarray]) -> None:
    """Log scale when the positive finite ``values`` span more than a decade."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")


def _epoch_axis(results: dict[str, Any], n: int) -> np.ndarray:
    """The epoch numbers of ``n`` rows: ``/metrics/epoch`` (from 1), or 1..n."""
    epochs = np.asarray(results.get("epoch", ()))
    return epochs if len(epochs) == n else _epochs(n)


def loss_plot(results: dict[str, Any], path: Path, name: str = "") -> Path:
    """``loss`` and ``val_loss`` per epoch and, beside them, the training loss of each recorded
    step (``/steps/loss``, every ``train.log_every`` steps); log scale when a panel's values span
    more than a decade."""
    plt = _pyplot()
    steps = results.get("steps", {})
    per_step = "loss" in steps and np.isfinite(steps["loss"]).any()
    fig, axes = plt.subplots(1, 2 if per_step else 1, figsize=(11, 4) if per_step else (6, 4), squeeze=False)
    ax = axes[0][0]
    values = []
    for metric, style in (("loss", "o-"), ("val_loss", "s--")):
        if metric in results["metrics"]:
            y = results["metrics"][metric]
            ax.plot(_epoch_axis(results, len(y)), y, style, label=metric, markersize=4)
            values.append(y)
    _log_if_wide(ax, values)
    ax.set(xlabel="epoch", ylabel="loss", title=_titled(name, "loss per epoch"))
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    if per_step:
        ax = axes[0][1]
        keep = np.isfinite(steps["loss"])
        ax.plot(steps["step"][keep], steps["loss"][keep], "-", linewidth=1, label="loss (training step)")
        _log_if_wide(ax, [steps["loss"]])
        ax.set(xlabel="optimizer step", ylabel="loss", title=_titled(name, "loss per step"))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def lr_plot(results: dict[str, Any], path: Path, name: str = "") -> Path:
    """The learning rate of each recorded step (``/steps/lr``), or of each epoch's last step
    (``/metrics/lr``) when no step recorded one; log scale when it spans more than a decade."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = results.get("steps", {})
    if "lr" in steps and np.isfinite(steps["lr"]).any():
        keep = np.isfinite(steps["lr"])
        ax.plot(steps["step"][keep], steps["lr"][keep], "-", label="lr (per step)")
        ax.set(xlabel="optimizer step", ylabel="learning rate", title=_titled(name, "learning rate per step"))
        values = [steps["lr"]]
    else:
        y = results["metrics"]["lr"]
        ax.plot(_epoch_axis(results, len(y)), y, "o-", markersize=4, label="lr (last step of the epoch)")
        ax.set(xlabel="epoch", ylabel="learning rate", title=_titled(name, "learning rate per epoch"))
        ax.xaxis.get_major_locator().set_params(integer=True)
        values = [y]
    _log_if_wide(ax, values)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def metric_plot(results: dict[str, Any], metric: str, path: Path, name: str = "") -> Path:
    """The validation metric ``val_<metric>`` (and the training one, if recorded) per epoch, the
    best epoch marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, style in ((metric, "o-"), (f"val_{metric}", "s--")):
        if column in results["metrics"]:
            y = results["metrics"][column]
            ax.plot(_epoch_axis(results, len(y)), y, style, label=column, markersize=4)
    val = results["metrics"].get(f"val_{metric}")
    if val is not None and np.isfinite(val).any():
        best = best_epoch(val, metric)
        at = _epoch_axis(results, len(val))[best]
        ax.plot([at], [val[best]], "*", color="black", markersize=10, label=f"best val_{metric}")
        ax.annotate(
            f"{val[best]:.4g}",
            (at, val[best]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    ax.set(xlabel="epoch", ylabel=metric, title=_titled(name, f"{metric} per epoch"))
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def best_epoch(values: np.ndarray, metric: str) -> int:
    """Index of the best finite value: smallest for losses, MAE and RMSE, else largest."""
    from ..config.training import SMALLER_IS_BETTER

    v = np.where(np.isfinite(values), values, np.inf if metric in SMALLER_IS_BETTER else -np.inf)
    return int(np.argmin(v) if metric in SMALLER_IS_BETTER else np.argmax(v))


def confusion_plot(report: dict[str, Any], path: Path, name: str = "") -> Path:
    """The confusion matrix normalised per true class (rows sum to 1), with the counts."""
    plt = _pyplot()
    confusion = np.asarray(report["confusion"], np.float64)
    classes = [str(c) for c in report.get("classes", range(len(confusion)))]
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    k = len(classes)
    size = min(12.0, 3.0 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), classes, rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=_titled(
            name, f"confusion ({report.get('split', 'val')}, accuracy {report.get('accuracy', float('nan')):.4f})"
        ),
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


def timing_plot(results: dict[str, Any], path: Path, name: str = "") -> Path:
    """Seconds per epoch in each timing phase, stacked (phases not recorded are left out)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    timing = results["timing"]
    known = [(phase, colour) for phase, colour in PHASES if phase in timing]
    others = [(phase, None) for phase in sorted(timing) if phase not in dict(PHASES)]
    bottom = np.zeros(results["epochs"])
    x = _epoch_axis(results, results["epochs"])
    for phase, colour in known + others:
        y = np.nan_to_num(timing[phase])
        ax.bar(x, y, bottom=bottom, label=phase, color=colour)
        bottom += y
    ax.set(xlabel="epoch", ylabel="seconds", title=_titled(name, "time per epoch by phase"))
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.grid(alpha=0.3, axis="y")
    if known or others:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)
