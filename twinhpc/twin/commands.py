"""``twinhpc twin rollout`` and ``twinhpc twin monitor`` as Python functions with the CLI's
arguments: each loads the twin, does the work of :mod:`.whatif` or :mod:`.monitor`, writes the
HDF5 file and the PNGs, and returns a report (a dict the CLI prints)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import TwinError
from ..io.stream import read_stream, read_stream_csv
from ..io.twin import write_monitor, write_rollout
from . import plots
from .model import load_twin, read_test_scenario
from .monitor import Calibration, Settings, Stream, calibrate, run_twin, score_alarms
from .scenario import apply_overrides, middle, out_of_range
from .whatif import what_if

log = logging.getLogger("twinhpc")


def _pngs(out: Path, *names: str) -> list[Path]:
    return [out.with_name(f"{out.stem}-{n}.png") for n in names]


def rollout(
    run,
    *,
    job=None,
    overrides=(),
    steps: int | None = None,
    out=None,
    checkpoint=None,
    scenario_index: int | None = None,
    repeat: int = 3,
    plots_too: bool = True,
) -> dict:
    """A what-if scenario on the twin and on the simulator (module :mod:`.whatif`); writes
    ``out`` (default ``RUN/twin/rollout.h5``) and its PNGs; returns the report."""
    twin = load_twin(run, checkpoint, job)
    if scenario_index is not None:
        start, origin = read_test_scenario(twin, scenario_index)
    else:
        start, origin = middle(twin.params), "the middle of the trained ranges"
    params = apply_overrides(start, twin.params, list(overrides))
    warnings = out_of_range(params, twin.params)
    for w in warnings:
        log.warning("twin rollout: warning: %s", w)
    if steps is not None and steps < 1:
        raise TwinError(f"--steps must be at least 1, got {steps}")
    if repeat < 1:
        raise TwinError(f"--repeat must be at least 1, got {repeat}")
    w = what_if(twin, params, steps, repeat=repeat)
    out = Path(out) if out else Path(run) / "twin" / "rollout.h5"
    summary = w.summary()
    report = {
        "run": str(run),
        "checkpoint": str(twin.surrogate.checkpoint),
        "scenario": origin,
        "overrides": list(overrides),
        "params": {p["name"]: float(v) for p, v in zip(twin.params, params, strict=True)},
        "warnings": warnings,
        "steps": len(w.time) - 1,
        "dt_save": float(twin.cfg.dt_save),
        "twin_seconds": w.twin_seconds,
        "simulator_seconds": w.sim_seconds,
        "speedup": w.speedup,
        "repeat": repeat,
        "errors": summary,
        "ranges_from": twin.ranges_from,
        "out": str(out),
    }
    write_rollout(
        out,
        {
            "time": w.time,
            "params": params,
            "forcing": w.forcing,
            "twin_field": w.twin_field,
            "twin_sensors": w.twin_sensors,
            "sim_field": w.sim_field,
            "sim_sensors": w.sim_sensors,
            **w.errors,
        },
        twin.names,
        [p.get("unit", "") for p in twin.params],
        {"description": "a what-if scenario: the twin's trajectory and the simulator's (docs/twin.md)", **report},
    )
    pngs = []
    if plots_too:
        f_png, s_png = _pngs(out, "field", "sensors")
        title = f"{Path(run).name}: what-if ({origin}{', ' + ' '.join(overrides) if overrides else ''})"
        pngs.append(str(plots.rollout_fields(f_png, w.time, w.twin_field, w.sim_field, title)))
        names = [f"s{k}" for k in range(w.twin_sensors.shape[1])]
        pngs.append(str(plots.rollout_sensors(s_png, w.time, w.twin_sensors, w.sim_sensors, names, title)))
    report["pngs"] = pngs
    report["errors_over_time"] = {k: v.tolist() for k, v in w.errors.items()}
    return report


# -- monitor ----------------------------------------------------------------------------------------
def load_stream(path, inputs=None) -> Stream:
    """A stream file: HDF5 (``twinhpc simulate --stream``), or CSV readings with their
    timestamps, whose twin inputs (forcing, parameters, sensor positions) come from the HDF5
    stream ``inputs`` (default: the ``.h5`` file of the same name beside it)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        h5 = Path(inputs) if inputs else path.with_suffix(".h5")
        if not h5.is_file():
            raise TwinError(
                f"{path}: a CSV stream holds the readings only; the twin's inputs (forcing, parameters) are read from "
                f"{h5}, which is not there (give --inputs STREAM.h5)"
            )
        arrays, faults, attrs = read_stream(h5)
        names = attrs.get("sensor_names") or [f"s{k}" for k in range(arrays["sensors"].shape[1])]
        got = read_stream_csv(path, names)
        n = len(arrays["time"])
        if len(got["time"]) != n:
            raise TwinError(f"{path}: {len(got['time'])} rows, but its inputs {h5} cover {n} samples")
        off = np.flatnonzero(
            np.abs(got["time"] - (arrays["time"] - arrays["time"][0])) > 1e-6 * max(1.0, arrays["time"][-1])
        )
        if len(off):
            i = int(off[0])
            raise TwinError(
                f"{path}: column 'time', row {i + 2}: {got['time'][i]:g} s from the start, but sample {i} "
                f"of {h5} is at {arrays['time'][i] - arrays['time'][0]:g} s"
            )
        labels = {k: got[k] for k in ("label", "label_sensor", "label_fault") if k in got}
        sensors, time = got["sensors"], got["time"]
        faults = faults if labels else []
    else:
        if inputs:
            raise TwinError("--inputs goes with a CSV stream only (an HDF5 stream holds its inputs)")
        arrays, faults, attrs = read_stream(path)
        names = attrs.get("sensor_names") or [f"s{k}" for k in range(arrays["sensors"].shape[1])]
        labels = {k: arrays[k] for k in ("label", "label_sensor", "label_fault")}
        sensors, time = arrays["sensors"], arrays["time"]
    return Stream(
        time=np.asarray(time, np.float64),
        sensors=np.asarray(sensors, np.float64),
        forcing=arrays["forcing"],
        params=arrays["params"],
        positions=attrs["sensor_positions"],
        names=list(names),
        param_names=list(attrs["param_names"]),
        labels=labels,
        faults=faults,
        path=str(path),
    )


#: the parameters that make a plate (the rest describe its sources)
PLATE_PARAMS = ("k", "h", "t_inf", "t_edge")


def other_plate(calibration: Stream, monitored: Stream) -> list[str]:
    """How the plate of a calibration stream differs from the monitored stream's (its first
    sample's ``k``, ``h``, ``t_inf``, ``t_edge``); empty when it is the same plate. Levels
    calibrated on another plate reflect the twin's errors there, not on the monitored one."""
    out = []
    for name in PLATE_PARAMS:
        if name in calibration.param_names and name in monitored.param_names:
            a = float(calibration.params[0][calibration.param_names.index(name)])
            b = float(monitored.params[0][monitored.param_names.index(name)])
            if not np.isclose(a, b, rtol=1e-6, atol=0):
                out.append(f"{name} {a:.4g} against {b:.4g}")
    return [", ".join(out)] if out else []


def monitor(
    run,
    stream,
    *,
    calibrate_on=None,
    inputs=None,
    threshold: float = 2.0,
    quantile: float = 1.0,
    gain: float = 0.5,
    window: int = 10,
    flat_window: int = 20,
    calibrate_fraction: float = 0.1,
    out=None,
    checkpoint=None,
    job=None,
    plots_too: bool = True,
) -> dict:
    """Monitor ``stream`` with the twin of ``run`` (module :mod:`.monitor`); the levels are
    calibrated on the fault-free stream ``calibrate_on``, or (None) on the first
    ``calibrate_fraction`` of ``stream`` itself. Writes ``out`` (default
    ``RUN/twin/monitor.h5``) and its PNG; returns the report."""
    if not threshold > 0:
        raise TwinError(f"--threshold must be > 0, got {threshold}")
    if not 0 < quantile <= 1:
        raise TwinError(f"--quantile must lie in (0, 1], got {quantile}")
    if not 0 <= gain < 1:
        raise TwinError(f"--gain must lie in [0, 1), got {gain}")
    if window < 2:
        raise TwinError(f"--window must be at least 2, got {window}")
    if flat_window < 2:
        raise TwinError(f"--flat-window must be at least 2, got {flat_window}")
    twin = load_twin(run, checkpoint, job)
    data = load_stream(stream, inputs)
    settings = Settings(gain=gain, window=window, flat_window=flat_window, quantile=quantile, threshold=threshold)
    if calibrate_on is not None:
        cal_stream = load_stream(calibrate_on)
        if cal_stream.labels and (cal_stream.labels["label"] > 0).any():
            raise TwinError(
                f"--calibrate {calibrate_on}: the stream has {int((cal_stream.labels['label'] > 0).sum())} faulty "
                "samples; calibrate on a fault-free one (twinhpc simulate --stream ... --faults none)"
            )
        for w in other_plate(cal_stream, data):
            log.warning("twin monitor: warning: --calibrate %s is another plate than %s: %s", calibrate_on, stream, w)
        cal: Calibration = calibrate(twin, cal_stream, settings, str(calibrate_on))
    else:
        n = int(len(data.time) * calibrate_fraction)
        cal = calibrate(twin, data, settings, f"the first {n} samples of {stream} (assumed fault-free)", slice(0, n))
    result = run_twin(twin, data, settings, cal)
    label = data.labels.get("label")
    scores = score_alarms(data.time, result.alarm, label, data.faults) if label is not None else None
    out = Path(out) if out else Path(run) / "twin" / "monitor.h5"
    report = {
        "run": str(run),
        "checkpoint": str(twin.surrogate.checkpoint),
        "stream": str(stream),
        "calibration": cal.source,
        "calibration_samples": cal.samples,
        "settings": {
            "gain": gain,
            "window": window,
            "flat_window": flat_window,
            "quantile": quantile,
            "threshold": threshold,
            "kappa": 0.5,
        },
        "levels": {k: np.asarray(v).tolist() for k, v in cal.levels.items()},
        "samples": int(len(data.time)),
        "alarm_samples": int(result.alarm.sum()),
        "twin_seconds": result.twin_seconds,
        "residual_rms_in_control": float(np.sqrt((result.residual[~result.alarm] ** 2).mean()))
        if (~result.alarm).any()
        else float("nan"),
        "scores": scores,
        "out": str(out),
    }
    write_monitor(
        out,
        {
            "time": result.time,
            "sensors": result.sensors,
            "twin": result.twin,
            "residual": result.residual,
            "innovation": result.innovation,
            "score": result.score,
            "alarm": result.alarm,
            "alarm_sensor": result.alarm_sensor,
            "assimilated": result.assimilated,
        },
        result.stats,
        {
            "mu": cal.mu,
            "sigma": cal.sigma,
            "floor": cal.floor,
            "mu_all": cal.mu_all,
            "sigma_all": cal.sigma_all,
            "levels": cal.levels,
            "peaks": cal.peaks,
        },
        data.labels,
        {"description": "twin monitor report: residuals, statistics, alarms (docs/twin.md)", **report},
    )
    pngs = []
    if plots_too:
        (png,) = _pngs(out, "panel")
        pngs.append(
            str(plots.monitor_panel(png, result, label, data.names, f"{Path(run).name}: monitor {Path(stream).name}"))
        )
    report["pngs"] = pngs
    return report
