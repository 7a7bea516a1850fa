"""``twinhpc twin monitor``: the twin kept in step with a sensor stream, and anomalies flagged.

**Keeping the twin in step.** The twin starts from the plate at rest (uniform ``t0``, edges at
``t_edge``: the stream's first parameters) and advances one saved step at a time with the
stream's known forcing and parameters (:class:`~twinhpc.twin.model.Stepper`). After each step
its forecast ``u`` is corrected toward the readings ``y`` by optimal interpolation, the
steady-state Kalman update with a fixed background covariance::

    u ← u + G (y − H u),     G = B Hᵀ (H B Hᵀ + r I)⁻¹,     B_ij = exp(−|x_i − x_j|² / 2L²)

``H`` is the bilinear interpolation at the sensors, ``B`` a Gaussian correlation of length
``L`` over the interior nodes (the edges are held by the boundary condition), ``r = (1 − g)/g``
the observation-to-background variance ratio of the gain ``g`` (``--gain``; a lone sensor's
node moves the fraction ``g`` of the way to its reading; 0: no correction, the twin runs open
loop). Only sensors that are *in control* are assimilated: a sensor whose own statistics are
in alarm is left out of the correction, so a sensor fault, once flagged, is not absorbed into
the state.

**A bank of leave-one-out filters.** The twin runs K + 1 copies of the state, advanced together
as one batch: copy ``i < K`` assimilates every in-control sensor except sensor ``i``, copy ``K``
every in-control sensor. A filter that assimilated a sensor would follow it: a slow drift is
absorbed step by step and its innovation stays near ``drift per step / g``, below any calibrated
level. Copy ``i`` never sees
sensor ``i``, so its forecast there is what the twin and the *other* sensors say, and a drifting
or biased sensor moves away from it for as long as the fault lasts.

**Residuals.** ``e_i = y_i − H_i u⁽ⁱ⁾``: sensor ``i``'s reading minus the forecast of the copy
that does not assimilate it (before the correction); standardised by its mean and standard
deviation on the fault-free calibration stream, ``z = (e − μ) / σ``.

**Statistics** (each per sample, over the last ``window`` samples, :class:`Detector`):

- ``mean`` per sensor: ``|mean of z| · √n`` over the window: a drift or a stuck reading moves
  one sensor's residual away from its calibrated mean;
- ``spatial``: ``|mean of z over the sensors and the window| · √(n K)``, here with ``z`` the
  standardised innovations of the filter of *all* sensors: an unexpected heat source raises
  several sensors together, and their mean rises while each alone is still within its own
  spread (the leave-one-out forecasts, each from fewer sensors, are noisier for this);
- ``flat`` per sensor, over its own window of ``flat_window`` samples: the noise floor (the
  smallest windowed mean absolute second difference ``|y[t] − 2y[t−1] + y[t−2]|`` of the reading
  on the calibration stream) divided by that mean over the window: a stuck sensor stops
  changing (its noise vanishes) however close its frozen value stays to the twin. The second
  difference cancels the plate's smooth changes, so the floor is the sensor's noise, not the
  quietest stretch of the calibration day.

A window bounds each statistic's memory: it falls back within ``window`` (``flat_window``)
samples of a fault's end. **Calibration** runs the same twin and statistics over a fault-free stream with nothing
gated; a statistic's *level* is its ``quantile`` (default 1: the largest value) on that stream,
times ``threshold`` (default 2). The ``mean`` statistic has one level for every sensor, from the
largest of their quantiles: each sensor's ``z`` is already in units of its own spread, and a
calibration stream short beside the monitored one sees few of the rare moments the twin errs
most (a source switching on) near a given sensor, so a per-sensor level would be set by chance
low for the sensor that happened to see none. The score of a sample is the largest ratio of a statistic
to its level; a sample is an alarm when the score exceeds 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import TwinError
from .model import Twin, torch_threads
from .whatif import initial_field

STATISTICS = ("mean", "spatial", "flat")
#: a twin state beyond this (K) has blown up: the monitor stops with an error
BLOWN_UP_K = 1e4


@dataclass
class Stream:
    """What the monitor reads: the readings and their times, and the twin's known inputs."""

    time: np.ndarray  # (N,) s
    sensors: np.ndarray  # (N, K) readings
    forcing: np.ndarray  # (N-1, H, W) over step t -> t+1
    params: np.ndarray  # (N-1, P)
    positions: list  # [[x, y] m] per sensor
    names: list[str]
    param_names: list[str]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # label, label_sensor, label_fault
    faults: list[dict] = field(default_factory=list)
    path: str = ""


def gain_matrix(plate, positions: np.ndarray, gain: float, length: float, use: np.ndarray) -> np.ndarray:
    """``G`` (H·W, K) of optimal interpolation for the sensors ``use`` (bool, K) (zero columns
    for the others)."""
    h, w = plate.h, plate.w
    k = len(use)
    g = np.zeros((h * w, k))
    if gain <= 0 or not use.any():
        return g
    eye = np.eye(h * w).reshape(h * w, h, w)
    hop = plate.sensors(eye).T  # (K, H·W)
    yy, xx = np.meshgrid(plate.y, plate.x, indexing="ij")
    interior = np.zeros((h, w), bool)
    interior[1:-1, 1:-1] = True
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    sel = np.flatnonzero(use)
    hs = hop[sel]
    # B Hᵀ without forming B: the correlation of every node with each sensor's footprint
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1) if h * w <= 4096 else None
    if d2 is None:
        raise TwinError(f"twin monitor: a {h}×{w} grid is too large for the dense gain (at most 4096 nodes)")
    b = np.exp(-d2 / (2 * length**2)) * interior.ravel()[:, None] * interior.ravel()[None, :]
    bht = b @ hs.T  # (HW, k)
    r = (1 - gain) / gain
    g[:, sel] = bht @ np.linalg.inv(hs @ bht + r * np.eye(len(sel)))
    return g


class Detector:
    """The residual statistics of :mod:`this module <twinhpc.twin.monitor>`, one sample at a time."""

    def __init__(
        self,
        mu: np.ndarray,
        sigma: np.ndarray,
        floor: np.ndarray,
        window: int,
        mu_all: np.ndarray | None = None,
        sigma_all: np.ndarray | None = None,
        flat_window: int | None = None,
    ):
        self.mu, self.sigma, self.floor, self.window = mu, sigma, floor, int(window)
        self.flat_window = int(flat_window or window)
        self.mu_all = np.zeros_like(mu) if mu_all is None else mu_all
        self.sigma_all = np.ones_like(sigma) if sigma_all is None else sigma_all
        self.zs: list[np.ndarray] = []
        self.zs_all: list[np.ndarray] = []
        self.changes: list[np.ndarray] = []
        self.last: list[np.ndarray] = []  # the previous two readings

    def update(self, e: np.ndarray, y: np.ndarray, e_all: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The statistics after one sample: ``e`` the leave-one-out residuals (per sensor),
        ``y`` the readings, ``e_all`` the innovations of the filter of all sensors (the spatial
        statistic's; ``e`` when not given)."""
        w = self.window
        z = (e - self.mu) / self.sigma
        z_all = z if e_all is None else (e_all - self.mu_all) / self.sigma_all
        self.zs.append(z)
        self.zs_all.append(z_all)
        if len(self.zs) > w:
            self.zs.pop(0)
            self.zs_all.pop(0)
        if len(self.last) == 2:
            self.changes.append(np.abs(y - 2.0 * self.last[1] + self.last[0]))
            if len(self.changes) > self.flat_window:
                self.changes.pop(0)
        self.last = [*self.last[-1:], y.copy()]
        recent = np.mean(self.zs, axis=0)
        n = len(self.zs)
        flat = (
            self.floor / np.maximum(np.mean(self.changes, axis=0), 1e-12)
            if len(self.changes) == self.flat_window
            else np.zeros_like(z)
        )
        return {
            "z": z,
            "mean": np.abs(recent) * np.sqrt(n),
            "spatial": np.array(abs(np.mean(self.zs_all)) * np.sqrt(n * len(z))),
            "flat": flat,
        }


@dataclass
class Settings:
    gain: float = 0.5
    length: float | None = None  # m; default 1.5 grid spacings
    window: int = 10
    flat_window: int = 20
    quantile: float = 1.0
    threshold: float = 2.0
    gate: bool = True
    threads: int = 1


@dataclass
class Calibration:
    """Per-sensor residual mean and std, the flatness floor, each statistic's level, and where
    they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    floor: np.ndarray
    mu_all: np.ndarray  # the same for the innovations of the filter of all sensors
    sigma_all: np.ndarray
    levels: dict[str, np.ndarray]
    peaks: dict[str, np.ndarray]  # the quantile of each statistic on the calibration stream
    source: str
    samples: int


@dataclass
class Result:
    time: np.ndarray
    sensors: np.ndarray
    twin: np.ndarray  # (N, K) the twin's forecast at each sensor, by the filter without that sensor
    residual: np.ndarray  # (N, K) y − that forecast
    innovation: np.ndarray  # (N, K) y − the forecast of the filter of all sensors
    stats: dict[str, np.ndarray]  # z, mean, flat (N, K); spatial (N,)
    score: np.ndarray  # (N,)
    alarm: np.ndarray  # (N,) bool
    alarm_sensor: np.ndarray  # (N,) int16: the sensor most in alarm, -1 for the spatial statistic
    assimilated: np.ndarray  # (N, K) bool: the sensors used to correct the state after sample t
    twin_seconds: float = 0.0


def _plate_for(twin: Twin, stream: Stream):
    names = twin.names
    if twin.surrogate.task.params and list(stream.param_names) != names:
        raise TwinError(
            f"{stream.path}: its parameters ({', '.join(stream.param_names)}) are not the twin's ({', '.join(names)})"
        )
    if stream.forcing.shape[1:] != tuple(twin.cfg.grid):
        raise TwinError(
            f"{stream.path}: its forcing's grid {stream.forcing.shape[1:]} is not the twin's {tuple(twin.cfg.grid)}"
        )
    from ..config import SimulateConfig
    from ..sim.plate import Plate

    return Plate(SimulateConfig.from_dict({**twin.cfg.to_dict(), "sensors": [list(p) for p in stream.positions]}))


def _window(t: int, frames: int, width: int):
    """The forcing frame(s) a step from ``t`` reads: ``t``, or ``t−1, t, t+1`` clamped to the
    stream's frames (:meth:`twinhpc.train.field.FieldTask.context`)."""
    return t if width == 1 else [max(t - 1, 0), t, min(t + 1, frames - 1)]


def run_twin(twin: Twin, stream: Stream, settings: Settings, calibration: Calibration | None) -> Result:
    """The twin over the stream: forecast, residuals, statistics, alarms, gated assimilation.
    With ``calibration`` None nothing is scored or gated (the calibration pass itself: the
    statistics are computed with zero mean and unit std and returned raw)."""
    import time as _time

    plate = _plate_for(twin, stream)
    n, k = stream.sensors.shape
    length = settings.length if settings.length is not None else 1.5 * max(plate.dx, plate.dy)
    names = stream.param_names
    p0 = stream.params[0]
    # the filter bank (module docstring): filter i < K assimilates every usable sensor but
    # sensor i, filter K every usable sensor
    u = np.repeat(initial_field(plate, p0[names.index("t0")], p0[names.index("t_edge")])[None], k + 1, axis=0)
    step = twin.stepper()
    others = np.vstack([~np.eye(k, dtype=bool), np.ones((1, k), bool)])  # others[i]: the sensors filter i may use
    positions = np.asarray(stream.positions, np.float64)
    gains: dict[bytes, np.ndarray] = {}
    hop = plate.sensors(np.eye(plate.h * plate.w).reshape(-1, plate.h, plate.w)).T  # (K, HW)
    cal = calibration
    det = (
        Detector(cal.mu, cal.sigma, cal.floor, settings.window, cal.mu_all, cal.sigma_all, settings.flat_window)
        if cal
        else Detector(np.zeros(k), np.ones(k), np.ones(k), settings.window, flat_window=settings.flat_window)
    )
    out = {s: [] for s in ("z", *STATISTICS)}
    twin_at, resid, innov, score, alarm, alarm_sensor, used = [], [], [], [], [], [], []
    seconds = 0.0
    with torch_threads(settings.threads):
        for t in range(n):
            y = stream.sensors[t].astype(np.float64)
            forecast = u.reshape(k + 1, -1) @ hop.T  # (filters, K): every filter's forecast at every sensor
            hu = np.diag(forecast[:k]).copy()  # sensor i as filter i, which never used it, forecasts it
            e = y - hu
            e_all = y - forecast[k]
            st = det.update(e, y, e_all)
            for name in out:
                out[name].append(st[name])
            use = np.ones(k, bool)
            if cal:
                ratios = {s: st[s] / cal.levels[s] for s in STATISTICS}
                per_sensor = np.maximum(ratios["mean"], ratios["flat"])
                sc = max(float(per_sensor.max()), float(ratios["spatial"]))
                alarm.append(sc > 1.0)
                alarm_sensor.append(-1 if float(ratios["spatial"]) >= per_sensor.max() else int(per_sensor.argmax()))
                score.append(sc)
                if settings.gate:
                    use = per_sensor <= 1.0
            twin_at.append(hu)
            resid.append(e)
            innov.append(e_all)
            used.append(use)
            for i in range(k + 1):
                mask = use & others[i]
                key = mask.tobytes()
                if key not in gains:
                    gains[key] = gain_matrix(plate, positions, settings.gain, length, mask)
                u[i] += (gains[key] @ (y - forecast[i])).reshape(plate.h, plate.w)
            if t + 1 < n:
                start = _time.perf_counter()
                bank = k + 1
                frames = stream.forcing[_window(t, len(stream.forcing), getattr(step, "window", 1))]
                u = step(u, np.repeat(frames[None], bank, 0), np.repeat(stream.params[t][None], bank, 0))
                seconds += _time.perf_counter() - start
                if not (np.isfinite(u).all() and np.abs(u).max() <= BLOWN_UP_K):
                    raise TwinError(
                        f"{stream.path}: the twin blew up at sample {t + 1} of {n} ({stream.time[t + 1]:g} s): "
                        f"its state is not finite or beyond {BLOWN_UP_K:g} K; it cannot follow a stream. "
                        "`twinhpc validate` checks a twin's stability (its 'stability:' line); retrain it "
                        "(docs/twin.md, 'Validating the twin')"
                    )
    stats = {s: np.asarray(v) for s, v in out.items()}
    return Result(
        time=stream.time,
        sensors=stream.sensors,
        twin=np.asarray(twin_at),
        residual=np.asarray(resid),
        innovation=np.asarray(innov),
        stats=stats,
        score=np.asarray(score) if cal else np.zeros(n),
        alarm=np.asarray(alarm, bool) if cal else np.zeros(n, bool),
        alarm_sensor=np.asarray(alarm_sensor, np.int16) if cal else np.full(n, -1, np.int16),
        assimilated=np.asarray(used),
        twin_seconds=seconds,
    )


def calibrate(twin: Twin, stream: Stream, settings: Settings, source: str, samples: slice | None = None) -> Calibration:
    """The calibration of :mod:`this module <twinhpc.twin.monitor>` on the fault-free ``stream``
    (or its ``samples``)."""
    if samples is not None:
        stream = Stream(
            stream.time[samples],
            stream.sensors[samples],
            stream.forcing[samples],
            stream.params[samples],
            stream.positions,
            stream.names,
            stream.param_names,
            path=stream.path,
        )
    n = len(stream.time)
    least = 4 * max(settings.window, settings.flat_window)
    if n < least:
        raise TwinError(f"{source}: {n} samples are too few to calibrate on (at least {least})")
    raw = run_twin(twin, stream, settings, None)
    e = raw.residual
    mu = np.median(e, axis=0)
    sigma = np.maximum(1.4826 * np.median(np.abs(e - mu), axis=0), 1e-6)
    ea = raw.innovation
    mu_all = np.median(ea, axis=0)
    sigma_all = np.maximum(1.4826 * np.median(np.abs(ea - mu_all), axis=0), 1e-6)
    changes = np.abs(np.diff(stream.sensors.astype(np.float64), n=2, axis=0))
    # the flatness floor: the smallest windowed mean change on the calibration stream
    kernel = np.ones(settings.flat_window) / settings.flat_window
    means = np.stack([np.convolve(changes[:, j], kernel, mode="valid") for j in range(changes.shape[1])], axis=1)
    floor = means.min(axis=0)
    # the statistics again, now standardised (the residuals do not depend on them: nothing gated)
    det = Detector(mu, sigma, floor, settings.window, mu_all, sigma_all, settings.flat_window)
    stats = {s: [] for s in STATISTICS}
    for t in range(n):
        st = det.update(e[t], stream.sensors[t].astype(np.float64), ea[t])
        for s in STATISTICS:
            stats[s].append(st[s])
    peaks, levels = {}, {}
    for s in STATISTICS:
        a = np.asarray(stats[s])
        peaks[s] = np.quantile(a, settings.quantile, axis=0)
        levels[s] = np.maximum(peaks[s] * settings.threshold, 1e-9)
    levels["mean"] = np.full_like(levels["mean"], levels["mean"].max())  # one level for every sensor
    if not (floor > 0).all():  # noise-free readings: flatness tells nothing
        levels["flat"] = np.where(floor > 0, levels["flat"], np.inf)
    return Calibration(mu, sigma, floor, mu_all, sigma_all, levels, peaks, source, n)


# -- scoring against the labels -------------------------------------------------------------------
def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The ``[start, end)`` index ranges of the runs of True in ``mask``."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[0::2].tolist(), d[1::2].tolist(), strict=True))


def score_alarms(time: np.ndarray, alarm: np.ndarray, label: np.ndarray, faults: list[dict]) -> dict:
    """Per-sample precision, recall and F1 of ``alarm`` against ``label > 0``; per fault its
    detection (the first alarm in ``[start, end)``) and delay; false alarms: runs of alarms
    that start on a fault-free sample, per 10⁴ fault-free samples."""
    truth = label > 0
    tp = int((alarm & truth).sum())
    fp = int((alarm & ~truth).sum())
    fn = int((~alarm & truth).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    per_fault = []
    for n, f in enumerate(faults):
        inside = (time >= f["start"]) & (time < f["end"])
        hits = np.flatnonzero(inside & alarm)
        first = np.flatnonzero(inside)
        row = {
            "fault": n,
            "kind": f["kind"],
            "sensor": int(f.get("sensor", -1)),
            "start": float(f["start"]),
            "end": float(f["end"]),
            "samples": int(inside.sum()),
            "detected": bool(len(hits)),
            "delay_s": float(time[hits[0]] - f["start"]) if len(hits) else float("inf"),
            "delay_samples": int(hits[0] - first[0]) if len(hits) else -1,
            "recall": float(len(hits) / max(1, inside.sum())),
        }
        per_fault.append(row)
    free = int((~truth).sum())
    false_runs = [(a, b) for a, b in runs(alarm) if not truth[a]]
    return {
        "samples": int(len(alarm)),
        "fault_samples": int(truth.sum()),
        "fault_free_samples": free,
        "alarm_samples": int(alarm.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarms": len(false_runs),
        "false_alarms_per_1e4": 1e4 * len(false_runs) / free if free else float("nan"),
        "false_positive_samples_per_1e4": 1e4 * fp / free if free else float("nan"),
        "faults": per_fault,
    }
