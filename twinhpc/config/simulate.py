"""The table ``[simulate]``: the ensemble that ``twinhpc simulate`` runs (the heated plate of
docs/twin.md) and ``[simulate.ranges]``, the parameter ranges it samples; frozen dataclasses,
see :mod:`.fields`.

The stability of the explicit scheme is checked here, over the whole sampled range, when the
job is read: a time step (given, or implied by the ranges) above the limit is a
:class:`~twinhpc.config.fields.JobFileError` naming the key and the limit, before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .fields import JobFileError, Table, key

#: the fraction of the stability limit that the default time step stays under
DT_SAFETY = 0.9


def _range_problem(value: Any) -> str | None:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"must be finite, got {list(value)}"
    if low > high:
        return f"is empty: low {low:g} is above high {high:g} (write [low, high])"
    return None


def rng(doc: str, low: float, high: float, ge: float | None = None, gt: float | None = None) -> Any:
    """A ``[low, high]`` key of ``[simulate.ranges]``."""
    return key((low, high), doc, ge=ge, gt=gt, check=_range_problem)


@dataclass(frozen=True)
class RangesConfig(Table):
    """``[simulate.ranges]``: each parameter's `[low, high]`, drawn uniformly per scenario (`low = high`: fixed).

    The `source_*` ranges apply to each of the `simulate.sources` heat sources.
    """

    TABLE: ClassVar[str] = "simulate.ranges"
    k: tuple[float, float] = rng("Thermal conductivity (W/(m·K)).", 15.0, 60.0, gt=0)
    h: tuple[float, float] = rng("Convection coefficient of each face (W/(m²·K)).", 5.0, 40.0, ge=0)
    t_inf: tuple[float, float] = rng("Ambient air temperature (K).", 288.0, 308.0, gt=0)
    t_edge: tuple[float, float] = rng("Temperature the edges are held at (K).", 293.0, 313.0, gt=0)
    t0: tuple[float, float] = rng("Initial temperature, uniform over the plate (K).", 293.0, 313.0, gt=0)
    source_x: tuple[float, float] = rng("Source centre along the width, as a fraction of it.", 0.2, 0.8, ge=0)
    source_y: tuple[float, float] = rng("Source centre along the height, as a fraction of it.", 0.2, 0.8, ge=0)
    source_power: tuple[float, float] = rng("Source power when fully on (W).", 2.0, 15.0, ge=0)
    source_on: tuple[float, float] = rng("Time the source switches on (s).", 0.0, 100.0, ge=0)
    source_duration: tuple[float, float] = rng("Time it stays on (s).", 40.0, 200.0, ge=0)
    source_ramp: tuple[float, float] = rng(
        "Time its power ramps up linearly after switching on (s; 0: a step).", 0.0, 30.0, ge=0
    )
    source_freq: tuple[float, float] = rng("Frequency of its power's sinusoidal modulation (Hz).", 0.0, 0.02, ge=0)
    source_depth: tuple[float, float] = rng("Depth of that modulation (0: constant, 1: down to zero).", 0.0, 0.5, ge=0)

    def check(self) -> None:
        for name in ("source_x", "source_y", "source_depth"):
            if getattr(self, name)[1] > 1:
                raise JobFileError(f"{self.TABLE}.{name}", f"must lie in [0, 1], got {list(getattr(self, name))}")


#: the parameters of a scenario that are not per source, in the order of the params vector
GLOBAL_PARAMS = ("k", "h", "t_inf", "t_edge", "t0")
#: the parameters of each source, in order (each ``source_<name>`` in [simulate.ranges])
SOURCE_PARAMS = ("x", "y", "power", "on", "duration", "ramp", "freq", "depth")
UNITS = {
    "k": "W/(m K)",
    "h": "W/(m2 K)",
    "t_inf": "K",
    "t_edge": "K",
    "t0": "K",
    "x": "1 (fraction of the width)",
    "y": "1 (fraction of the height)",
    "power": "W",
    "on": "s",
    "duration": "s",
    "ramp": "s",
    "freq": "Hz",
    "depth": "1",
}


def _sensors_problem(value: Any) -> str | None:
    return None if value else "must name at least one sensor position [x, y]"


DEFAULT_SENSORS = ((0.025, 0.025), (0.075, 0.025), (0.05, 0.05), (0.025, 0.075), (0.075, 0.075))


@dataclass(frozen=True)
class SimulateConfig(Table):
    """``[simulate]``: the heated-plate scenarios that `twinhpc simulate` writes as a dataset (docs/twin.md)."""

    TABLE: ClassVar[str] = "simulate"
    scenarios: int = key(256, "Scenarios (one sample each) in the dataset.", ge=1)
    seed: int = key(0, "Seed: scenario i's parameters depend on (seed, i) only; the split permutation on seed.", ge=0)
    val_fraction: float = key(0.1, "Fraction of the scenarios held out as split `val`.", ge=0, lt=1)
    test_fraction: float = key(0.1, "Fraction held out as split `test`.", ge=0, lt=1)
    shards: int = key(4, "Shards per split (the unit of work of a rank).", ge=1)
    grid: tuple[int, int] = key(
        (32, 32), "Nodes [H, W] (rows along the height, columns along the width), edges included.", ge=3
    )
    size: tuple[float, float] = key((0.1, 0.1), "Plate [height, width] (m).", gt=0)
    thickness: float = key(0.002, "Plate thickness d (m).", gt=0)
    rho_c: float = key(3.6e6, "Density × specific heat capacity ρc (J/(m³·K)); 3.6e6 is steel.", gt=0)
    sources: int = key(3, "Gaussian heat sources per scenario.", ge=0)
    source_width: float = key(0.006, "Standard deviation σ of each source's Gaussian footprint (m).", gt=0)
    steps: int = key(50, "Saved steps T: the field is saved at times 0, dt_save, ..., T·dt_save.", ge=1)
    dt_save: float = key(5.0, "Time between two saved fields (s).", gt=0)
    dt: float | None = key(
        None,
        "Solver time step (s); must divide `dt_save` and stay under the stability limit over the whole of the "
        "ranges (docs/twin.md).",
        gt=0,
        default_doc=f"`dt_save / n` for the smallest n that keeps it under {DT_SAFETY} × the limit",
    )
    sensors: tuple[tuple[float, float], ...] = key(
        DEFAULT_SENSORS,
        "Point sensors: positions [x, y] (m; x along the width, y along the height).",
        check=_sensors_problem,
    )
    device: str = key(
        "cpu",
        "The solver: `cpu` (the Numba kernel) or `cuda` (the CuPy kernel on the rank's GPU, "
        "`local rank % GPUs`; the optional `[gpu]` extra). The fields agree to float64 rounding.",
        choices=("cpu", "cuda"),
    )
    ranges: RangesConfig = key(RangesConfig(), "Parameter ranges: `[simulate.ranges]` below.")

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise JobFileError(
                "simulate.test_fraction",
                f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}",
            )
        height, width = self.size
        for i, (x, y) in enumerate(self.sensors):
            if not (0 <= x <= width and 0 <= y <= height):
                raise JobFileError(
                    "simulate.sensors",
                    f"sensor {i} at [{x:g}, {y:g}] m lies outside the plate [0, {width:g}] × [0, {height:g}] m",
                )
        limit = self.dt_limit
        if self.dt is not None:
            n = round(self.dt_save / self.dt)
            if n < 1 or abs(n * self.dt - self.dt_save) > 1e-9 * self.dt_save:
                raise JobFileError("simulate.dt", f"{self.dt:g} s does not divide dt_save {self.dt_save:g} s")
            if self.dt > limit:
                raise JobFileError("simulate.dt", f"{self.dt:g} s is unstable: {self.limit_text()}")

    # -- derived --------------------------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, float]:
        """``(dy, dx)``: node spacing (m) along the height and the width."""
        return self.size[0] / (self.grid[0] - 1), self.size[1] / (self.grid[1] - 1)

    def alpha_beta(self, k: float, h: float) -> tuple[float, float]:
        """Diffusivity ``alpha = k / ρc`` (m²/s) and face-loss rate ``beta = 2h / (ρc d)`` (1/s)."""
        return k / self.rho_c, 2.0 * h / (self.rho_c * self.thickness)

    @property
    def dt_limit(self) -> float:
        """The stability limit (s) at the ranges' worst corner (largest k and h):
        ``1 / (2 alpha (1/dx² + 1/dy²) + beta)``."""
        dy, dx = self.spacing
        alpha, beta = self.alpha_beta(self.ranges.k[1], self.ranges.h[1])
        return 1.0 / (2.0 * alpha * (1.0 / dx**2 + 1.0 / dy**2) + beta)

    def limit_text(self) -> str:
        dy, dx = self.spacing
        return (
            f"the explicit scheme needs dt ≤ 1/(2α(1/dx²+1/dy²) + 2h/(ρc·d)) = {self.dt_limit:.4g} s at the ranges' "
            f"largest k = {self.ranges.k[1]:g} W/(m·K) and h = {self.ranges.h[1]:g} W/(m²·K) (dx = {dx:.4g} m, "
            f"dy = {dy:.4g} m); lower simulate.dt, k or h, or coarsen simulate.grid"
        )

    @property
    def substeps(self) -> int:
        """Solver steps per saved step."""
        if self.dt is not None:
            return max(1, round(self.dt_save / self.dt))
        return max(1, math.ceil(self.dt_save / (DT_SAFETY * self.dt_limit)))

    @property
    def solver_dt(self) -> float:
        """The solver's time step (s): ``dt_save / substeps``."""
        return self.dt_save / self.substeps

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the params vector: the global parameters, then ``source<i>.<name>``."""
        return GLOBAL_PARAMS + tuple(f"source{i}.{p}" for i in range(self.sources) for p in SOURCE_PARAMS)

    def param_ranges(self) -> list[tuple[float, float]]:
        """The ``[low, high]`` of each entry of the params vector."""
        r = self.ranges
        out = [getattr(r, n) for n in GLOBAL_PARAMS]
        return out + [getattr(r, f"source_{p}") for _ in range(self.sources) for p in SOURCE_PARAMS]


assert {f.name for f in fields(RangesConfig)} == set(GLOBAL_PARAMS) | {f"source_{p}" for p in SOURCE_PARAMS}
