"""``twinhpc twin rollout``: the twin and the simulator on the same what-if scenario.

Both produce the same output from the scenario's parameters: the field at the saved times
``0 … T`` and the sensor series. The twin builds the forcing of the scenario's sources (the
same average over each saved interval as the simulator records) and rolls out from the
initial field (uniform ``t0``, edges at ``t_edge``); the simulator is the Numba solver
(:meth:`twinhpc.sim.plate.Plate.run`). Each is run once to warm up (Numba's compilation or its
cache load, torch's first calls) and then ``repeat`` times; its time is the fastest of those.
The speed-up is the simulator's time over the twin's. The errors compare the twin's field
with the simulator's at every saved time: the nRMSE of PDEBench (``‖twin − sim‖₂ / ‖sim‖₂``
over the grid), the RMSE and the largest absolute error (K).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..sim.plate import Plate
from .model import Twin, torch_threads


def scenario_forcing(plate: Plate, params: np.ndarray) -> np.ndarray:
    """The scenario's forcing (T, H, W) W/m³: each known source's power averaged over every
    saved interval times its footprint over the thickness, as the simulator records it."""
    cfg = plate.cfg
    forcing = np.zeros((cfg.steps, plate.h, plate.w))
    for src in plate.sources(np.asarray(params, np.float64)):
        mean_power = src.power.reshape(cfg.steps, plate.every).mean(axis=1)
        forcing += mean_power[:, None, None] * (plate.footprint(src.x, src.y) / cfg.thickness)[None]
    return forcing


def initial_field(plate: Plate, t0: float, t_edge: float) -> np.ndarray:
    """The plate at rest: ``t0`` inside, ``t_edge`` on the edges (H, W)."""
    u = np.full((plate.h, plate.w), float(t0))
    u[0, :] = u[-1, :] = u[:, 0] = u[:, -1] = float(t_edge)
    return u


@dataclass
class WhatIf:
    """The result of :func:`what_if` (fields float64 (T+1, H, W), sensors (T+1, K))."""

    params: np.ndarray
    time: np.ndarray
    twin_field: np.ndarray
    sim_field: np.ndarray
    twin_sensors: np.ndarray
    sim_sensors: np.ndarray
    forcing: np.ndarray
    twin_seconds: float
    sim_seconds: float
    errors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.sim_seconds / self.twin_seconds

    def summary(self) -> dict[str, float]:
        """The errors at the end (``*_end``), averaged over the predicted times 1..T
        (``*_mean``) and the largest over time (``max_abs``); the sensors' RMSE."""
        e = self.errors
        return {
            "nrmse_end": float(e["nrmse"][-1]),
            "rmse_end": float(e["rmse"][-1]),
            "max_abs_end": float(e["max_abs"][-1]),
            "nrmse_mean": float(e["nrmse"][1:].mean()),
            "rmse_mean": float(np.sqrt((e["rmse"][1:] ** 2).mean())),
            "max_abs": float(e["max_abs"].max()),
            "sensor_rmse": float(np.sqrt(((self.twin_sensors - self.sim_sensors) ** 2).mean())),
        }


def errors_over_time(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Per saved time: ``nrmse`` (‖pred − true‖₂ / ‖true‖₂ over the grid), ``rmse`` and
    ``max_abs``, each (T+1,)."""
    err = (pred - true).reshape(len(true), -1)
    t = true.reshape(len(true), -1)
    return {
        "nrmse": np.linalg.norm(err, axis=1) / np.linalg.norm(t, axis=1),
        "rmse": np.sqrt((err**2).mean(axis=1)),
        "max_abs": np.abs(err).max(axis=1),
    }


def _fastest(fn, repeat: int):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def what_if(twin: Twin, params: np.ndarray, steps: int | None = None, *, repeat: int = 3, threads: int = 1) -> WhatIf:
    """Roll the twin and run the simulator on the scenario ``params`` for ``steps`` saved steps
    (default: the trained ``simulate.steps``). The twin runs on ``threads`` torch threads (1:
    the simulator's one core for one scenario; 0: torch's default)."""
    params = np.asarray(params, np.float64)
    plate = twin.plate(steps, params)
    names = twin.names
    t0, t_edge = params[names.index("t0")], params[names.index("t_edge")]
    s = twin.surrogate
    p32 = params.astype(np.float32)[None]

    def run_twin():
        forcing = scenario_forcing(plate, params).astype(np.float32)[None]
        u0 = initial_field(plate, t0, t_edge).astype(np.float32)[None]
        return s.rollout(
            u0, forcing if s.task.has_forcing else None, p32 if s.task.params else None, steps=plate.cfg.steps
        )[0]

    with torch_threads(threads):
        twin_field, twin_seconds = _fastest(run_twin, repeat)
    run, sim_seconds = _fastest(lambda: plate.run(params), repeat)
    twin_field = twin_field.astype(np.float64)
    sim_field = run.field.astype(np.float32).astype(np.float64)  # as the dataset stores it
    return WhatIf(
        params=params,
        time=np.arange(plate.cfg.steps + 1) * plate.cfg.dt_save,
        twin_field=twin_field,
        sim_field=sim_field,
        twin_sensors=plate.sensors(twin_field),
        sim_sensors=plate.sensors(sim_field),
        forcing=run.forcing,
        twin_seconds=twin_seconds,
        sim_seconds=sim_seconds,
        errors=errors_over_time(twin_field, sim_field),
    )
