"""The PNGs of ``twin rollout`` and ``twin monitor`` (matplotlib, Agg backend, imported inside
the functions; each PNG written under a temporary name, then renamed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def rollout_fields(path: Path, time: np.ndarray, twin: np.ndarray, sim: np.ndarray, title: str, times: int = 4) -> Path:
    """Twin, simulator and their difference at ``times`` saved times (rows), one shared colour
    scale for the temperatures."""
    plt = _pyplot()
    picks = np.unique(np.linspace(0, len(time) - 1, times).round().astype(int))
    fig, axes = plt.subplots(len(picks), 3, figsize=(9, 2.6 * len(picks)), squeeze=False)
    lo, hi = float(min(twin.min(), sim.min())), float(max(twin.max(), sim.max()))
    err = float(np.abs(twin - sim).max()) or 1.0
    for row, t in zip(axes, picks, strict=True):
        for ax, data, name, kw in (
            (row[0], twin[t], "twin", {"vmin": lo, "vmax": hi, "cmap": "inferno"}),
            (row[1], sim[t], "simulator", {"vmin": lo, "vmax": hi, "cmap": "inferno"}),
            (row[2], twin[t] - sim[t], "twin − simulator", {"vmin": -err, "vmax": err, "cmap": "RdBu_r"}),
        ):
            im = ax.imshow(data, origin="lower", **kw)
            ax.set_title(f"{name}, t = {time[t]:g} s", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, label="K")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def rollout_sensors(
    path: Path, time: np.ndarray, twin: np.ndarray, sim: np.ndarray, names: list[str], title: str
) -> Path:
    """Each sensor's series: the twin (solid) and the simulator (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, name in enumerate(names):
        (line,) = ax.plot(time, twin[:, k], label=f"{name} twin")
        ax.plot(time, sim[:, k], "--", color=line.get_color(), label=f"{name} simulator")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("temperature (K)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def monitor_panel(path: Path, result, label: np.ndarray | None, names: list[str], title: str) -> Path:
    """Sensors against the twin, the residual score against its threshold (1), the true fault
    intervals (shaded) and the alarms."""
    plt = _pyplot()
    t = result.time
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.5, 2]})
    for k, name in enumerate(names):
        (line,) = a1.plot(t, result.sensors[:, k], lw=0.8, label=f"{name}")
        a1.plot(t, result.twin[:, k], "--", lw=0.8, color=line.get_color())
    a1.set_ylabel("K (solid: sensor, dashed: twin)")
    a1.legend(fontsize=7, ncol=len(names))
    for k, name in enumerate(names):
        a2.plot(t, result.residual[:, k], lw=0.6, label=name)
    a2.set_ylabel("residual (K)")
    a3.semilogy(t, np.maximum(result.score, 1e-3), lw=0.7, color="k", label="score")
    a3.axhline(1.0, color="r", lw=1, label="threshold")
    alarms = np.flatnonzero(result.alarm)
    if len(alarms):
        a3.plot(t[alarms], np.full(len(alarms), 1.0), "|", color="r", ms=12, label="alarm")
    a3.set_ylabel("score / level")
    a3.set_xlabel("time (s)")
    if label is not None:
        from .monitor import runs

        for ax in (a1, a2, a3):
            for a, b in runs(label > 0):
                ax.axvspan(t[a], t[b - 1], color="orange", alpha=0.2, lw=0)
    a3.legend(fontsize=7, loc="upper left")
    a1.set_title(title + " (shaded: true faults)", fontsize=10)
    return _save(fig, path)
