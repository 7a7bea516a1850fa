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

CSV: a header ``time,<sensor names...>,label,label_sensor,label_fault`` and one row per sample
(:func:`read_stream_csv`; the label columns may be left out).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import TwinError
from .atomic import hdf5_image, writing

FORMAT = "twinhpc-sensor-stream"
VERSION = 1
#: fault kind codes of /label
KINDS = {"none": 0, "drift": 1, "stuck": 2, "source": 3}
FAULT_COLUMNS = ("kind", "sensor", "start", "end", "magnitude", "x", "y")
LABELS = ("label", "label_sensor", "label_fault")
ARRAYS = ("time", "sensors", "truth", "label", "label_sensor", "label_fault", "field", "forcing", "params")


def write_stream(
    path: str | Path, arrays: dict[str, np.ndarray], faults: list[dict[str, Any]], attrs: dict[str, Any]
) -> None:
    """Write a stream file atomically. ``arrays`` holds :data:`ARRAYS`; ``faults`` one dict of
    :data:`FAULT_COLUMNS` per fault; ``attrs`` JSON-able root attributes (sensor names and
    positions, parameter names, dt, noise ...)."""
    path = Path(path)
    with writing(path, lambda e: f"--stream {path}: cannot write ({e.strerror or e})") as tmp:
        with hdf5_image(tmp, track_order=True) as f:
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


def check_readings(
    path: Path, time: np.ndarray, sensors: np.ndarray, names: list[str], time_name: str, where: Callable[[int], str]
) -> None:
    """Refuse NaN (or infinite) readings and timestamps that are not finite or not strictly
    increasing, naming ``path``, the column and the row (``where(i)`` describes row ``i``)."""
    bad = ~np.isfinite(sensors)
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        raise TwinError(
            f"{path}: column {names[k]!r}, {where(i)}: the reading is {sensors[i, k]} "
            f"({int(bad.sum())} non-finite reading(s))"
        )
    if not np.isfinite(time).all():
        i = int(np.flatnonzero(~np.isfinite(time))[0])
        raise TwinError(f"{path}: column {time_name!r}, {where(i)}: the timestamp is {time[i]}")
    step = np.diff(time)
    if len(step) and not (step > 0).all():
        i = int(np.flatnonzero(~(step > 0))[0]) + 1
        raise TwinError(
            f"{path}: column {time_name!r}, {where(i)}: timestamps out of order "
            f"({time[i]!r} after {time[i - 1]!r}; they must increase strictly)"
        )


def _timestamp(text: str) -> float:
    """Seconds: a number, or an ISO 8601 date and time (seconds since the epoch, UTC if no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = _dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.timestamp()


def read_stream_csv(path: str | Path, sensor_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The readings (and labels, when the file has them) of a CSV stream: ``time`` float64
    (N,) in seconds from the first row, ``sensors`` float32 (N, K) and, if present, ``label``,
    ``label_sensor``, ``label_fault``.

    The header names the columns: ``time``, the sensors (``sensor_names``, default every column
    named ``s<k>``, in order) and optionally ``label``, ``label_sensor``, ``label_fault``. A
    timestamp is a number of seconds or an ISO 8601 date and time.

    Raises
    ------
    TwinError
        Naming the file and the column or row: no header, a missing column, an empty or
        non-numeric value, a NaN reading, timestamps out of order.
    """
    path = Path(path)
    try:
        fh = open(path, newline="")
    except OSError as e:
        raise TwinError(f"{path}: cannot read ({e.strerror or e})") from None
    with fh:
        rows = csv.reader(fh)
        header = [h.strip() for h in next(rows, [])]
        if not header or header == [""]:
            raise TwinError(f"{path}: empty file (expected a header time,s0,...,label,label_sensor,label_fault)")
        names = sensor_names or [h for h in header if re.fullmatch(r"s\d+", h)]
        if not names:
            raise TwinError(f"{path}: no sensor column (named s0, s1, ...) in the header {','.join(header)}")
        missing = [c for c in ("time", *names) if c not in header]
        if missing:
            raise TwinError(f"{path}: missing column(s) {', '.join(missing)} (the header has {','.join(header)})")
        labels = [c for c in LABELS if c in header]
        if labels and len(labels) != len(LABELS):
            gone = [c for c in LABELS if c not in header]
            raise TwinError(f"{path}: missing column(s) {', '.join(gone)} (give all of {', '.join(LABELS)} or none)")
        cols = {c: header.index(c) for c in ("time", *names, *labels)}
        time, values, marks = [], [], []
        for line, row in enumerate(rows, start=2):
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise TwinError(f"{path}: row {line} has {len(row)} values, the header {len(header)}")
            text = row[cols["time"]].strip()
            try:
                time.append(_timestamp(text))
            except ValueError:
                raise TwinError(f"{path}: column 'time', row {line}: {text!r} is not a timestamp") from None
            rec = []
            for c in names:
                text = row[cols[c]].strip()
                try:
                    rec.append(float(text))
                except ValueError:
                    raise TwinError(f"{path}: column {c!r}, row {line}: {text!r} is not a number") from None
            values.append(rec)
            if labels:
                try:
                    marks.append([int(row[cols[c]]) for c in labels])
                except ValueError:
                    raise TwinError(f"{path}: row {line}: the labels {', '.join(labels)} must be integers") from None
    if not time:
        raise TwinError(f"{path}: no rows after the header")
    t = np.asarray(time, np.float64)
    sensors = np.asarray(values, np.float64)
    check_readings(path, t, sensors, names, "time", lambda i: f"row {i + 2}")
    out = {"time": t - t[0], "sensors": sensors.astype(np.float32)}
    if labels:
        m = np.asarray(marks, np.int64)
        out["label"], out["label_sensor"], out["label_fault"] = (
            m[:, 0].astype(np.int8),
            m[:, 1].astype(np.int16),
            m[:, 2].astype(np.int16),
        )
    return out


def read_stream(path: str | Path) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """``(arrays, faults, attrs)`` of a stream file written by :func:`write_stream`.

    Raises
    ------
    TwinError
        Naming the file: not a stream file, a missing array; NaN readings or timestamps that
        are not strictly increasing, naming the column and the sample.
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
            raise TwinError(
                f"{path}: missing dataset(s) {', '.join('/' + n for n in missing)} "
                f"(a sensor stream has {', '.join(ARRAYS)})"
            )
        arrays = {n: f[n][...] for n in ARRAYS}
        faults = [
            {c: (v.decode() if isinstance(v, bytes) else v.item()) for c, v in zip(FAULT_COLUMNS, row, strict=True)}
            for row in zip(*(f["faults"][c][...] for c in FAULT_COLUMNS), strict=True)
        ]
        attrs = {k: json.loads(v) for k, v in f.attrs.items() if k not in ("format", "version")}
    names = attrs.get("sensor_names") or [f"s{k}" for k in range(arrays["sensors"].shape[1])]
    check_readings(path, arrays["time"], arrays["sensors"], names, "/time", lambda i: f"sample {i}")
    return arrays, faults, attrs
