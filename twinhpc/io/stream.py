"""Sensor stream files (``twinhpc simulate --stream``; read by ``twinhpc twin monitor``): HDF5,
and the readings with their labels as CSV. docs/twin.md ("The stream format") describes both.

HDF5 (``format = "twinhpc-sensor-stream"``, version 1), N+1 samples, K sensors, F faults::

    /time          float64 (N+1,)      seconds from the start, strictly increasing
    /sensors       float32 (N+1, K)    the readings (K): true temperature + noise + faults
    /truth         float32 (N+1, K)    the true temperature at the sensors (no noise, no sensor fault)
    /label         int8    (N+1,)      fault kind per sample: 0 none, 1 drift, 2 stuck, 3 source
    /label_sensor  int16   (N+1,)      the faulty sensor, -1 (no fault, or a source: every sensor)
    /label_fault   int16   (N+1,)      index into /faults, -1 (no fault)
    /faults/{kind,sensor,start,end,magnitude,x,y}   (F,) the injected faults
    /field         float32 (N+1, H, W) the true temperature field
    /forcing       float32 (N, H, W)   the known (commanded) source power density over step t -> t+1
    /params        float32 (N, P)      the scenario parameters in force over step t -> t+1

CSV: a header ``time,<sensor names...>,label,label_sensor,label_fault`` and one row per sample.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import TwinError
from .atomic import writing

FORMAT = "twinhpc-sensor-stream"
VERSION = 1
#: fault kind codes of /label
KINDS = {"none": 0, "drift": 1, "stuck": 2, "source": 3}
FAULT_COLUMNS = ("kind", "sensor", "start", "end", "magnitude", "x", "y")
ARRAYS = ("time", "sensors", "truth", "label", "label_sensor", "label_fault", "field", "forcing", "params")


def write_stream(
    path: str | Path, arrays: dict[str, np.ndarray], faults: list[dict[str, Any]], attrs: dict[str, Any]
) -> None:
    """Write a stream file atomically. ``arrays`` holds :data:`ARRAYS`; ``faults`` one dict of
    :data:`FAULT_COLUMNS` per fault; ``attrs`` JSON-able root attributes (sensor names and
    positions, parameter names, dt, noise ...)."""
    path = Path(path)
    with writing(path, lambda e: f"--stream {path}: cannot write ({e.strerror or e})") as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["kinds"] = json.dumps(KINDS)
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v)
            for name in ARRAYS:
                f.create_dataset(name, data=arrays[name], track_times=False)
            g = f.create_group("faults")
            for col in FAULT_COLUMNS:
                values = [fl[col] for fl in faults]
                if col == "kind":
                    g.create_dataset(col, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
                else:
                    dtype = np.int16 if col == "sensor" else np.float64
                    g.create_dataset(col, data=np.array(values, dtype=dtype).reshape(len(faults)))


def write_stream_csv(path: str | Path, arrays: dict[str, np.ndarray], sensor_names: list[str]) -> None:
    """The readings and labels of a stream as CSV, atomically (see the module note)."""
    path = Path(path)
    with writing(path, lambda e: f"--csv {path}: cannot write ({e.strerror or e})") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["time", *sensor_names, "label", "label_sensor", "label_fault"])
            for i in range(len(arrays["time"])):
                w.writerow(
                    [
                        repr(float(arrays["time"][i])),
                        *(f"{v:.6f}" for v in arrays["sensors"][i]),
                        int(arrays["label"][i]),
                        int(arrays["label_sensor"][i]),
                        int(arrays["label_fault"][i]),
                    ]
                )


def read_stream(path: str | Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """``(arrays, faults, attrs)`` of a stream file written by :func:`write_stream`.

    Raises
    ------
    TwinError
        Naming the file: not a stream file, a missing array, NaN readings or timestamps that
        are not strictly increasing.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TwinError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise TwinError(
                f"{path}: not a sensor stream (attribute format is {f.attrs.get('format')!r}, not {FORMAT!r})"
            )
        missing = [n for n in ARRAYS if n not in f]
        if missing:
            raise TwinError(f"{path}: missing {', '.join(missing)}")
        arrays = {n: f[n][...] for n in ARRAYS}
        faults = [
            {c: (v.decode() if isinstance(v, bytes) else v.item()) for c, v in zip(FAULT_COLUMNS, row, strict=True)}
            for row in zip(*(f["faults"][c][...] for c in FAULT_COLUMNS), strict=True)
        ]
        attrs = {k: json.loads(v) for k, v in f.attrs.items() if k not in ("format", "version")}
    if np.isnan(arrays["sensors"]).any():
        raise TwinError(f"{path}: /sensors holds NaN readings")
    if not (np.diff(arrays["time"]) > 0).all():
        raise TwinError(f"{path}: /time is not strictly increasing")
    return arrays, faults, attrs
