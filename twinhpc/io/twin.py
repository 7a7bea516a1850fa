"""The HDF5 files of ``twinhpc twin rollout`` and ``twinhpc twin monitor`` (docs/twin.md, "Using
the twin"), written atomically. Every dataset carries ``units`` and ``description`` attributes;
the root carries ``format``, ``version`` and JSON-encoded attributes (the summary, the
settings, where the twin came from).

Rollout (``format = "twinhpc-twin-rollout"``)::

    /time               float64 (T+1,)          s from the scenario's start
    /params             float64 (P,)            the scenario (attribute names: JSON list)
    /forcing            float32 (T, H, W)       W/m³ over each saved interval
    /twin/field         float32 (T+1, H, W)     K, the twin's trajectory
    /twin/sensors       float32 (T+1, K)        K
    /simulator/field    float32 (T+1, H, W)     K, the Numba solver's
    /simulator/sensors  float32 (T+1, K)        K
    /error/{nrmse, rmse, max_abs}  float64 (T+1,)  twin against simulator per saved time

Monitor report (``format = "twinhpc-twin-monitor"``)::

    /time, /sensors, /twin, /residual, /innovation, /score, /alarm, /alarm_sensor, /assimilated
    /stats/{z, mean, flat} (N, K), /stats/spatial (N,)
    /label, /label_sensor, /label_fault   (when the stream has labels)
    /calibration/{mu, sigma, floor, mu_all, sigma_all} (K,)
    /calibration/levels/<statistic>, /calibration/peaks/<statistic>
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .atomic import hdf5_image, writing

ROLLOUT_FORMAT = "twinhpc-twin-rollout"
MONITOR_FORMAT = "twinhpc-twin-monitor"
VERSION = 1


def _put(f: h5py.Group, name: str, data: np.ndarray, units: str, description: str, dtype: Any = None) -> None:
    d = f.create_dataset(name, data=np.asarray(data, dtype=dtype) if dtype else np.asarray(data), track_times=False)
    d.attrs["units"] = units
    d.attrs["description"] = description


def _write(path: Path, fmt: str, attrs: Mapping[str, Any], fill: Callable[[h5py.File], None]) -> None:
    with writing(path, lambda e: f"--out {path}: cannot write ({e.strerror or e})") as tmp:
        with hdf5_image(tmp, track_order=True) as f:
            f.attrs["format"] = fmt
            f.attrs["version"] = VERSION
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v)
            fill(f)


def write_rollout(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    param_names: list[str],
    param_units: list[str],
    attrs: Mapping[str, Any],
) -> None:
    """The rollout file (see the module note): ``arrays`` has ``time``, ``params``,
    ``forcing``, ``twin_field``, ``twin_sensors``, ``sim_field``, ``sim_sensors``, ``nrmse``,
    ``rmse``, ``max_abs``."""

    def fill(f: h5py.File) -> None:
        a = arrays
        _put(f, "time", a["time"], "s", "time of each saved state from the scenario's start", np.float64)
        _put(f, "params", a["params"], "see attribute units", "the scenario's parameters", np.float64)
        f["params"].attrs["names"] = json.dumps(param_names)
        f["params"].attrs["units"] = json.dumps(param_units)
        _put(
            f,
            "forcing",
            a["forcing"],
            "W/m3",
            "source power density averaged over each saved interval t -> t+1",
            np.float32,
        )
        _put(f, "twin/field", a["twin_field"], "K", "temperature predicted by the twin at the saved times", np.float32)
        _put(f, "twin/sensors", a["twin_sensors"], "K", "the twin's temperature at the sensors", np.float32)
        _put(f, "simulator/field", a["sim_field"], "K", "temperature of the simulator (Numba solver)", np.float32)
        _put(f, "simulator/sensors", a["sim_sensors"], "K", "the simulator's temperature at the sensors", np.float32)
        _put(
            f,
            "error/nrmse",
            a["nrmse"],
            "1",
            "||twin - simulator||_2 / ||simulator||_2 over the grid per saved time",
            np.float64,
        )
        _put(
            f,
            "error/rmse",
            a["rmse"],
            "K",
            "root mean square of twin - simulator over the grid per saved time",
            np.float64,
        )
        _put(
            f, "error/max_abs", a["max_abs"], "K", "largest |twin - simulator| over the grid per saved time", np.float64
        )

    _write(Path(path), ROLLOUT_FORMAT, attrs, fill)


#: (name, units, description) of the monitor report's per-sample datasets
MONITOR_ARRAYS = (
    ("time", "s", "time of each sample"),
    ("sensors", "K", "the readings"),
    ("twin", "K", "the twin's forecast at each sensor by the filter that leaves that sensor out, before the sample"),
    ("residual", "K", "readings - twin (the leave-one-out residual)"),
    ("innovation", "K", "readings - the forecast of the filter of all sensors"),
    ("score", "1", "largest ratio of a statistic to its calibrated level; an alarm above 1"),
    ("alarm", "1", "1 where the score exceeds 1"),
    ("alarm_sensor", "1", "the sensor whose statistic is largest, -1: the spatial statistic"),
    ("assimilated", "1", "1 where a sensor's reading corrected the twin's state"),
)


def write_monitor(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    stats: Mapping[str, np.ndarray],
    calibration: Mapping[str, Any],
    labels: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
) -> None:
    """The monitor report (see the module note)."""

    def fill(f: h5py.File) -> None:
        for name, units, desc in MONITOR_ARRAYS:
            a = np.asarray(arrays[name])
            _put(f, name, a.astype(np.int8) if a.dtype == bool else a, units, desc)
        docs = {
            "z": ("1", "standardised residual (residual - mu) / sigma"),
            "mean": ("1", "|mean of z over the window| * sqrt(n) per sensor"),
            "spatial": ("1", "|mean of z over the sensors and the window| * sqrt(n K)"),
            "flat": ("1", "flatness: calibrated floor / windowed mean |change| of the reading"),
        }
        for name, a in stats.items():
            _put(f, f"stats/{name}", a, *docs[name])
        for name, a in labels.items():
            _put(f, name, a, "1", "the stream's ground-truth " + name.replace("_", " "))
        for name in ("mu", "sigma", "floor", "mu_all", "sigma_all"):
            unit = "K" if name != "floor" else "K per sample"
            what = "innovation (filter of all sensors)" if name.endswith("_all") else "residual"
            _put(f, f"calibration/{name}", calibration[name], unit, f"calibrated {what} {name} per sensor")
        for group in ("levels", "peaks"):
            for name, a in calibration[group].items():
                _put(f, f"calibration/{group}/{name}", a, "1", f"{group[:-1]} of the {name} statistic")

    _write(Path(path), MONITOR_FORMAT, attrs, fill)


def read_h5(path: str | Path) -> dict[str, Any]:
    """Every dataset of a rollout or monitor file by its path (``"twin/field"``), and the root
    attributes (JSON-decoded) under ``"attrs"``."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: (json.loads(v) if k not in ("format", "version") else v) for k, v in f.attrs.items()}
    return out
