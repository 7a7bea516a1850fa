"""PNG plots of a twin's validation (results.h5's ``/twin_validation``, docs/twin.md).

::

    from twinhpc.io.results import read_twin_validation
    from twinhpc.report.twin import twin_plots
    twin_plots(read_twin_validation("runs/plate_twin"), "runs/plate_twin")   # -> [panels, horizon]

- ``twin_panels.png``: for each example scenario, three rows — truth, twin, twin − truth — at
  the horizons (columns); truth and twin share one colour scale, the error a symmetric one.
  A 1-D state is drawn as curves (truth dashed, twin solid) with the error below.
- ``twin_horizon.png``: the error against the horizon (every saved step, the reported horizons
  marked), twin against persistence and the linear baseline, log y: the judged nRMSE, the
  absolute nRMSE and, for a plate, the energy residual (with the truth's, the balance's floor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .plots import _pyplot, _save, _titled

COLOURS = {"twin": "#1f77b4", "persistence": "#7f7f7f", "linear": "#ff7f0e", "truth": "#2ca02c"}
LABELS = {
    "nrmse_rise": "nRMSE of the rise T − T∞",
    "nrmse": "nRMSE (absolute, PDEBench)",
    "energy_residual": "energy residual / mean heat in",
}


def panels_plot(tv: dict[str, Any], path: Path, name: str = "") -> Path:
    """Truth, twin and error of the example scenarios at the horizons (see the module)."""
    plt = _pyplot()
    truth, twin = np.asarray(tv["examples/truth"], np.float64), np.asarray(tv["examples/twin"], np.float64)
    index, times = list(tv["examples/index"]), list(tv["examples/time"])
    k, m = truth.shape[:2]
    two_d = truth.ndim == 4
    rows = 3 if two_d else 2
    fig, axes = plt.subplots(k * rows, m, figsize=(3.0 * m + 1, 2.6 * k * rows), squeeze=False)
    for s in range(k):
        lo, hi = min(truth[s].min(), twin[s].min()), max(truth[s].max(), twin[s].max())
        err = twin[s] - truth[s]
        e = float(np.abs(err).max()) or 1.0
        for c in range(m):
            if two_d:
                for r, (data, cmap, vmin, vmax, what) in enumerate(
                    (
                        (truth[s, c], "inferno", lo, hi, "truth"),
                        (twin[s, c], "inferno", lo, hi, "twin"),
                        (err[c], "RdBu_r", -e, e, "twin − truth"),
                    )
                ):
                    ax = axes[s * rows + r, c]
                    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_title(f"scenario {index[s]}, step {times[c]}: {what}", fontsize=8)
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            else:
                ax = axes[s * rows, c]
                ax.plot(truth[s, c], "k--", label="truth")
                ax.plot(twin[s, c], color=COLOURS["twin"], label="twin")
                ax.set_title(f"scenario {index[s]}, step {times[c]}", fontsize=8)
                ax.legend(fontsize=7)
                ax = axes[s * rows + 1, c]
                ax.plot(err[c], color="#d62728")
                ax.set_title("twin − truth", fontsize=8)
    fig.suptitle(_titled(name, "twin against the simulator on held-out scenarios"))
    return _save(fig, path)


def horizon_plot(tv: dict[str, Any], path: Path, name: str = "") -> Path:
    """The error against the horizon, twin and baselines, log y (see the module)."""
    plt = _pyplot()
    judged = str(tv["attrs"].get("judged_on", "nrmse"))
    metrics = [judged] + [m for m in ("nrmse", "energy_residual") if m != judged and f"twin/{m}_per_step" in tv]
    step, horizon = np.asarray(tv["step"]), np.asarray(tv["horizon"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for model in ("twin", "persistence", "linear", "truth"):
            key = f"{model}/{metric}_per_step"
            if key not in tv:
                continue
            y = np.asarray(tv[key], np.float64)
            ax.plot(step, y, color=COLOURS[model], label=model, lw=2 if model == "twin" else 1.2)
            at = np.asarray(tv[f"{model}/{metric}"], np.float64)
            ax.plot(horizon, at, "o", color=COLOURS[model], ms=5)
        finite = np.concatenate(
            [np.asarray(tv[f"{m}/{metric}_per_step"]).ravel() for m in COLOURS if f"{m}/{metric}_per_step" in tv]
        )
        if np.isfinite(finite).any() and (finite[np.isfinite(finite)] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("horizon (saved steps after u[0])")
        ax.set_title(LABELS.get(metric, metric), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_titled(name, f"error against horizon ({tv['attrs'].get('split', '?')} split, dots: the horizons)"))
    return _save(fig, path)


def twin_plots(tv: dict[str, Any], directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Write ``twin_panels.png`` and ``twin_horizon.png`` into ``directory`` from
    :func:`~twinhpc.io.results.read_twin_validation`'s dict; returns their paths (none for an
    empty dict; no panels without examples)."""
    if not tv:
        return []
    directory = Path(directory)
    name = directory.resolve().name if name is None else name
    out = []
    if "examples/truth" in tv and len(tv["examples/truth"]):
        out.append(panels_plot(tv, directory / "twin_panels.png", name))
    out.append(horizon_plot(tv, directory / "twin_horizon.png", name))
    return out
