"""A long sensor stream of one plate with injected faults and their labels (``twinhpc simulate
--stream``), for calibrating and scoring ``twinhpc twin monitor``.

The plate's material and cooling (``k``, ``h``, ``t_inf``, ``t_edge``, ``t0``) are drawn once;
the heat sources are drawn again for every *cycle* of ``simulate.steps`` saved steps (the
operating schedule changes, within the ranges the twin was trained on), and the state carries
over from cycle to cycle. Every draw is seeded by ``(simulate.seed, 1 + stream_seed, cycle)``,
apart from the dataset's scenarios. The readings are the true temperature at the sensors plus
Gaussian noise, then the sensor faults; an unexpected source heats the plate itself (it enters
the simulation, not the recorded forcing).

Fault specification (``--faults``): ``none``, ``default`` (one fault of each kind, at fixed
fractions of the stream), or faults separated by ``;``, each ``KIND:key=value,...``::

    drift:sensor=2,start=600,end=1200,rate=0.01      # reading += rate·(t - start) K
    stuck:sensor=0,start=1500,end=1900               # reading frozen at its last value
    source:start=2200,end=2600,power=8,x=0.3,y=0.7   # power W at (x, y) fractions of the plate

Times are seconds from the start of the stream; faults may not overlap in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SimulateConfig
from ..config.simulate import GLOBAL_PARAMS
from ..errors import TwinError
from .plate import Plate, Source, draw_params

#: the keys of each fault kind (required, then optional with their defaults)
FAULT_KEYS = {
    "drift": ({"sensor", "start", "end"}, {"rate": 0.01}),
    "stuck": ({"sensor", "start", "end"}, {}),
    "source": ({"start", "end"}, {"power": 8.0, "x": 0.5, "y": 0.5}),
}


@dataclass(frozen=True)
class Fault:
    kind: str
    start: float
    end: float
    sensor: int = -1
    magnitude: float = 0.0  # drift: K/s; source: W
    x: float = float("nan")  # source: fraction of the width
    y: float = float("nan")  # source: fraction of the height

    def row(self) -> dict:
        return {
            "kind": self.kind,
            "sensor": self.sensor,
            "start": self.start,
            "end": self.end,
            "magnitude": self.magnitude,
            "x": self.x,
            "y": self.y,
        }


def default_faults(duration: float, sensors: int) -> list[Fault]:
    """One fault of each kind at fixed fractions of a stream of ``duration`` seconds."""
    return [
        Fault("drift", 0.15 * duration, 0.3 * duration, sensor=min(1, sensors - 1), magnitude=0.01),
        Fault("stuck", 0.45 * duration, 0.6 * duration, sensor=0),
        Fault("source", 0.75 * duration, 0.9 * duration, magnitude=8.0, x=0.35, y=0.65),
    ]


def parse_faults(spec: str, duration: float, sensors: int) -> list[Fault]:
    """The faults of ``spec`` (see the module note), checked against the stream's ``duration``
    (s) and sensor count; raises :class:`TwinError` naming ``--faults`` and the bad part."""
    spec = spec.strip()
    if spec == "none":
        return []
    if spec == "default":
        return default_faults(duration, sensors)
    faults = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        kind, _, rest = part.partition(":")
        if kind not in FAULT_KEYS:
            raise TwinError(
                f"--faults {part!r}: unknown kind {kind!r}; kinds are {', '.join(FAULT_KEYS)}, or none, default"
            )
        required, optional = FAULT_KEYS[kind]
        values: dict[str, float] = dict(optional)
        for item in filter(None, rest.split(",")):
            k, eq, v = item.partition("=")
            k = k.strip()
            known = sorted(required | set(optional))
            if not eq or k not in known:
                raise TwinError(f"--faults {part!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(known)}")
            try:
                values[k] = float(v)
            except ValueError:
                raise TwinError(f"--faults {part!r}: {k} must be a number, got {v!r}") from None
        missing = required - set(values)
        if missing:
            raise TwinError(f"--faults {part!r}: missing {', '.join(sorted(missing))}")
        start, end = values["start"], values["end"]
        if not 0 <= start < end <= duration:
            raise TwinError(f"--faults {part!r}: need 0 ≤ start < end ≤ {duration:g} s (the stream's length)")
        if kind == "source":
            if not (0 <= values["x"] <= 1 and 0 <= values["y"] <= 1):
                raise TwinError(f"--faults {part!r}: x and y are fractions of the plate, in [0, 1]")
            faults.append(Fault(kind, start, end, magnitude=values["power"], x=values["x"], y=values["y"]))
        else:
            sensor = int(values["sensor"])
            if sensor != values["sensor"] or not 0 <= sensor < sensors:
                raise TwinError(f"--faults {part!r}: sensor must be an index 0..{sensors - 1}")
            faults.append(Fault(kind, start, end, sensor=sensor, magnitude=values.get("rate", 0.0)))
    ordered = sorted(faults, key=lambda f: f.start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.start < a.end:
            raise TwinError(
                f"--faults: {a.kind} [{a.start:g}, {a.end:g}) s and {b.kind} [{b.start:g}, {b.end:g}) s overlap"
            )
    return ordered


def make_stream(
    cfg: SimulateConfig,
    steps: int,
    faults: list[Fault],
    noise: float,
    stream_seed: int = 0,
    plate_seed: int | None = None,
):
    """Simulate the stream: ``(arrays, fault rows, attrs)`` for :func:`twinhpc.io.stream.write_stream`.

    ``steps`` saved steps (``steps + 1`` samples, ``cfg.dt_save`` apart); ``noise`` the standard
    deviation (K) of the sensors' Gaussian noise. ``plate_seed`` (default ``stream_seed``) draws
    the plate (its global parameters ``k, h, t_inf, t_edge, t0``), ``stream_seed`` the sources'
    schedule of every cycle and the noise: two streams with one plate seed and two stream seeds
    are one plate on two different days (a calibration history and the monitored stream)."""
    if steps < 1:
        raise TwinError(f"--stream-steps must be at least 1, got {steps}")
    if noise < 0:
        raise TwinError(f"--noise must be ≥ 0, got {noise}")
    plate = Plate(cfg)
    g = len(GLOBAL_PARAMS)
    cycle = cfg.steps
    cycles = -(-steps // cycle)
    base = draw_params(cfg, 0, stream=1 + (stream_seed if plate_seed is None else plate_seed))
    height, width = cfg.size
    t_step = np.arange(cycle * plate.every) * plate.dt
    fields, forcings, params = [], [], []
    u = None
    for c in range(cycles):
        p = draw_params(cfg, c, stream=1 + stream_seed)
        p[:g] = base[:g]
        t0 = c * cycle * cfg.dt_save
        extra = []
        for f in faults:
            if f.kind == "source":
                on = (t0 + t_step >= f.start) & (t0 + t_step < f.end)
                if on.any():
                    extra.append(Source(f.x * width, f.y * height, np.where(on, f.magnitude, 0.0)))
        run = plate.run(p, u0=u, extra=extra)
        if not np.isfinite(run.field).all():
            raise TwinError(f"stream cycle {c}: the solver produced non-finite temperatures")
        fields.append(run.field if c == 0 else run.field[1:])
        forcings.append(run.forcing)
        params.append(np.repeat(p[None], cycle, axis=0))
        u = run.field[-1]
    field = np.concatenate(fields)[: steps + 1]
    time = np.arange(steps + 1) * cfg.dt_save
    truth = plate.sensors(field)
    rng = np.random.default_rng([cfg.seed, 1 + stream_seed, 1 << 30])
    readings = truth + noise * rng.standard_normal(truth.shape)
    label = np.zeros(steps + 1, np.int8)
    label_sensor = np.full(steps + 1, -1, np.int16)
    label_fault = np.full(steps + 1, -1, np.int16)
    codes = {"drift": 1, "stuck": 2, "source": 3}
    for n, f in enumerate(faults):
        on = (time >= f.start) & (time < f.end)
        label[on], label_fault[on] = codes[f.kind], n
        if f.kind == "drift":
            readings[on, f.sensor] += f.magnitude * (time[on] - f.start)
        elif f.kind == "stuck" and on.any():
            first = int(np.flatnonzero(on)[0])
            readings[on, f.sensor] = readings[max(first - 1, 0), f.sensor]
        if f.kind != "source":
            label_sensor[on] = f.sensor
    arrays = {
        "time": time,
        "sensors": readings.astype(np.float32),
        "truth": truth.astype(np.float32),
        "label": label,
        "label_sensor": label_sensor,
        "label_fault": label_fault,
        "field": field.astype(np.float32),
        "forcing": np.concatenate(forcings)[:steps].astype(np.float32),
        "params": np.concatenate(params)[:steps].astype(np.float32),
    }
    attrs = {
        "sensor_names": [f"s{i}" for i in range(len(cfg.sensors))],
        "sensor_positions": [list(s) for s in cfg.sensors],
        "param_names": list(cfg.param_names),
        "dt_save": cfg.dt_save,
        "cycle_steps": cycle,
        "noise": noise,
        "seed": cfg.seed,
        "stream_seed": stream_seed,
        "plate_seed": stream_seed if plate_seed is None else plate_seed,
        "simulate": cfg.to_dict(),
    }
    return arrays, [f.row() for f in faults], attrs
