"""The heated plate: scenario parameters, heat sources, sensors, and one run of the solver.

A scenario is a vector of parameters (:attr:`~twinhpc.config.SimulateConfig.param_names`)
drawn from the job's ranges with a generator seeded by ``(seed, i)`` only
(:func:`draw_params`), so scenario ``i`` is the same whichever rank runs it. :class:`Plate` turns
parameters into the kernel's inputs (diffusion and loss coefficients, source shapes and their
amplitudes at every solver step) and runs :func:`twinhpc.kernels.heat.heat_run`; the result
(:class:`Run`) holds the saved fields, the forcing averaged over each saved interval, the sensor
readings and the solver's wall time. docs/twin.md has the equations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..config import SimulateConfig
from ..config.simulate import GLOBAL_PARAMS, SOURCE_PARAMS, UNITS
from ..errors import TwinError
from ..kernels.heat import heat_run


def draw_params(cfg: SimulateConfig, i: int, stream: int = 0) -> np.ndarray:
    """Scenario ``i``'s parameters (float64, in the order of ``cfg.param_names``), uniform in the
    ranges; a pure function of ``(cfg.seed, stream, i)`` (stream 0: the dataset's scenarios)."""
    ranges = np.asarray(cfg.param_ranges(), dtype=np.float64).reshape(-1, 2)
    u = np.random.default_rng([cfg.seed, stream, i]).random(len(ranges))
    return ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0])


def param_table(cfg: SimulateConfig) -> list[dict]:
    """The params vector described: ``[{"name", "unit", "low", "high"}, ...]`` (the manifest's)."""
    out = []
    for name, (low, high) in zip(cfg.param_names, cfg.param_ranges(), strict=True):
        out.append({"name": name, "unit": UNITS[name.rsplit(".", 1)[-1]], "low": low, "high": high})
    return out


def source_modulation(t: np.ndarray, on: float, duration: float, ramp: float, freq: float, depth: float) -> np.ndarray:
    """A source's power fraction at times ``t``: 0 outside ``[on, on + duration)``; inside it a
    linear ramp over ``ramp`` seconds times ``1 + depth sin(2π freq (t - on))``."""
    s = t - on
    inside = (s >= 0) & (s < duration)
    up = np.minimum(1.0, s / ramp) if ramp > 0 else np.ones_like(s)
    return np.where(inside, up * (1.0 + depth * np.sin(2 * np.pi * freq * s)), 0.0)


@dataclass
class Run:
    """One scenario's result (float64; the dataset stores float32)."""

    field: np.ndarray  # (T+1, H, W) temperature (K) at the saved times
    forcing: np.ndarray  # (T, H, W) source power density (W/m³) averaged over each saved interval
    sensors: np.ndarray  # (T+1, K) temperature (K) at the sensors
    seconds: float  # the solver's wall time


@dataclass(frozen=True)
class Source:
    """A Gaussian heat source of total power ``power(t)`` W at ``(x, y)`` m."""

    x: float
    y: float
    power: np.ndarray  # (n,) W at the start of each solver step


class Plate:
    """The plate of a ``[simulate]`` table: grid, material and sensors (see docs/twin.md)."""

    def __init__(self, cfg: SimulateConfig, local_rank: int = 0):
        """``local_rank``: this process's index among the ranks of its node; with
        ``cfg.device = "cuda"`` it runs on GPU ``local_rank % visible GPUs``."""
        self.cfg = cfg
        self.h, self.w = cfg.grid
        self.dy, self.dx = cfg.spacing
        self.y = np.arange(self.h) * self.dy
        self.x = np.arange(self.w) * self.dx
        self.dt, self.every = cfg.solver_dt, cfg.substeps
        self._sensor_weights = [self._bilinear(x, y) for x, y in cfg.sensors]
        self._solver = heat_run if cfg.device == "cpu" else self._cuda_solver(local_rank)

    @staticmethod
    def _cuda_solver(local_rank: int):
        """``simulate.device = "cuda"``: the CuPy kernel on this rank's GPU, its result copied to
        the host (the dataset is written from there)."""
        from ..kernels import heat_cupy

        try:
            heat_cupy.use_device(local_rank)
        except TwinError as e:
            raise TwinError(f'simulate.device = "cuda": {e}; or set simulate.device = "cpu"') from None
        return lambda *args: heat_cupy.heat_run_cupy(*args).get()

    # -- pieces ---------------------------------------------------------------------------
    def footprint(self, x: float, y: float) -> np.ndarray:
        """A source's areal density (1/m²): a 2-D Gaussian of width σ centred at ``(x, y)`` m."""
        s2 = self.cfg.source_width**2
        r2 = (self.x[None, :] - x) ** 2 + (self.y[:, None] - y) ** 2
        return np.exp(-r2 / (2 * s2)) / (2 * np.pi * s2)

    def _bilinear(self, x: float, y: float) -> tuple[int, int, np.ndarray]:
        j = min(int(x / self.dx), self.w - 2)
        i = min(int(y / self.dy), self.h - 2)
        fx, fy = x / self.dx - j, y / self.dy - i
        return i, j, np.array([[(1 - fy) * (1 - fx), (1 - fy) * fx], [fy * (1 - fx), fy * fx]])

    def sensors(self, field: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of ``field`` (..., H, W) at the sensor positions: (..., K)."""
        cols = [np.einsum("...ab,ab->...", field[..., i : i + 2, j : j + 2], wts) for i, j, wts in self._sensor_weights]
        return np.stack(cols, axis=-1)

    def sources(self, params: np.ndarray) -> list[Source]:
        """The scenario's sources, with their power at each solver step (times counted from the
        scenario's start)."""
        n = self.cfg.steps * self.every
        t = np.arange(n) * self.dt
        g, per = len(GLOBAL_PARAMS), len(SOURCE_PARAMS)
        height, width = self.cfg.size
        out = []
        for s in range(self.cfg.sources):
            x, y, power, on, duration, ramp, freq, depth = params[g + s * per : g + (s + 1) * per]
            out.append(Source(x * width, y * height, power * source_modulation(t, on, duration, ramp, freq, depth)))
        return out

    # -- a run ----------------------------------------------------------------------------
    def run(
        self,
        params: np.ndarray,
        u0: np.ndarray | None = None,
        extra: list[Source] = (),  # type: ignore[assignment]
    ) -> Run:
        """Run one scenario for ``cfg.steps`` saved steps.

        ``u0`` (H, W) starts from a given field instead of the uniform ``t0``; ``extra`` sources
        heat the plate without entering the saved forcing (an unexpected source of a fault
        stream).
        """
        cfg = self.cfg
        p = dict(zip(GLOBAL_PARAMS, params[: len(GLOBAL_PARAMS)], strict=True))
        alpha, beta = cfg.alpha_beta(p["k"], p["h"])
        if u0 is None:
            u0 = np.full((self.h, self.w), p["t0"])
        known = self.sources(params)
        every_source = known + list(extra)
        scale = 1.0 / (cfg.thickness * cfg.rho_c)  # W/m² per unit of footprint -> K/s
        feet = [self.footprint(s.x, s.y) for s in every_source]
        shapes = np.stack(feet)[None] * scale if feet else np.zeros((1, 0, self.h, self.w))
        amps = (
            np.stack([s.power for s in every_source], axis=-1)[None]
            if feet
            else np.zeros((1, cfg.steps * self.every, 0))
        )
        start = time.perf_counter()
        field = self._solver(
            u0[None],
            np.array([alpha * self.dt / self.dx**2]),
            np.array([alpha * self.dt / self.dy**2]),
            np.array([beta * self.dt]),
            np.array([p["t_inf"]]),
            np.array([p["t_edge"]]),
            shapes,
            amps,
            self.dt,
            cfg.steps,
            self.every,
        )[0]
        seconds = time.perf_counter() - start
        forcing = np.zeros((cfg.steps, self.h, self.w))
        for src, foot in zip(known, feet, strict=False):
            mean_power = src.power.reshape(cfg.steps, self.every).mean(axis=1)
            forcing += mean_power[:, None, None] * (foot / cfg.thickness)[None]
        return Run(field, forcing, self.sensors(field), seconds)
