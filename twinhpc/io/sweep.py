"""``SWEEP/sweep.h5``: the whole state of a hyper-parameter sweep (format ``twinhpc-sweep``
version 1; ``docs/tune.md`` is the user-facing description).

Layout (``h5dump SWEEP/sweep.h5`` shows it; h5py reads it without twinhpc)::

    /            attrs: format, version, sweep (the [sweep] table, JSON), job (the base job,
                        JSON), params (JSON [[key, type], ...]), rungs (int64, epochs),
                        metric, direction, budget, workers, queue (int64 trial ids),
                        created_at, updated_at, first_start (Unix seconds; NaN: none yet),
                        busy_s, utilisation, executor (the executor's name, "" unknown),
                        twinhpc_version
    /trials      compound, one row per trial, by id:
                   id int64; one column per searched key, named by it ("optim.lr"), typed:
                   float64 | int64 | bool | string | string of JSON; status string; rung int64
                   (highest rung reported, -1 none); target int64 (rung of the current or next
                   segment, -1 none); metric float64[len(rungs)] (NaN: not reached); epochs
                   int64 (trained); busy_s float64 (running time, summed over its segments);
                   started_at, ended_at float64 (Unix seconds: the start of its current or last
                   segment, the end of its last one; NaN: not yet); job_id, node, log, error
                   strings
    /reports     compound, one row per report, in arrival order:
                   seq, trial, rung, epochs int64; metric, at float64
    /decisions   compound, one row per decision, in order:
                   seq, trial, rung int64; action string; metric float64; rank, reports, keep
                   int64; cut float64; note string; at float64

Strings are variable-length UTF-8. The file is rewritten whole and renamed over the old one
(:func:`~twinhpc.io.atomic.replace_durably`) after every event, so a reader (or a driver that
restarts) sees the state before or after an event, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import TwinError
from .atomic import hdf5_image, writing

SWEEP_FILE = "sweep.h5"
FORMAT_NAME = "twinhpc-sweep"
FORMAT_VERSION = 1
#: the column types of searched keys
PARAM_TYPES = ("float", "int", "bool", "str", "json")


@dataclass
class TrialRow:
    """One row of ``/trials`` (see the module docstring); ``params`` by key, ``metric`` one value
    per rung."""

    id: int
    params: dict[str, Any]
    status: str
    rung: int = -1
    target: int = -1
    metric: list[float] = field(default_factory=list)
    epochs: int = 0
    busy_s: float = 0.0
    started_at: float = math.nan
    ended_at: float = math.nan
    job_id: str = ""
    node: str = ""
    log: str = ""
    error: str = ""


@dataclass
class ReportRow:
    """One row of ``/reports``."""

    seq: int
    trial: int
    rung: int
    epochs: int
    metric: float
    at: float


@dataclass
class DecisionRow:
    """One row of ``/decisions``."""

    seq: int
    trial: int
    rung: int
    action: str
    metric: float
    rank: int
    reports: int
    keep: int
    cut: float
    note: str
    at: float


@dataclass
class SweepFile:
    """The contents of sweep.h5.

    Attributes
    ----------
    sweep, job : the ``[sweep]`` table and the base job, as JSON-able dicts.
    params : searched key → column type (one of :data:`PARAM_TYPES`), in the space's order.
    rungs : each rung's epochs.
    metric, direction : what the sweep optimises (``"min"`` or ``"max"``).
    budget, workers : trials started in all; trials running at once.
    queue : trials promoted and waiting for a worker, in order.
    created_at, updated_at, first_start : Unix seconds (``first_start`` NaN before any trial ran).
    busy_s, utilisation : the trials' summed running time, and it ÷ (workers × (updated_at −
        first_start)); NaN before any trial ran.
    executor : the name of the executor the sweep runs on (``local``, ``slurm`` ...; ``""``
        unknown).
    """

    sweep: dict[str, Any]
    job: dict[str, Any]
    params: dict[str, str]
    rungs: list[int]
    metric: str
    direction: str
    budget: int
    workers: int
    trials: list[TrialRow] = field(default_factory=list)
    reports: list[ReportRow] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)
    created_at: float = math.nan
    updated_at: float = math.nan
    first_start: float = math.nan
    busy_s: float = 0.0
    utilisation: float = math.nan
    executor: str = ""


def _str_dtype() -> Any:
    import h5py

    return h5py.string_dtype("utf-8")


def _param_dtype(kind: str) -> Any:
    return {"float": np.float64, "int": np.int64, "bool": np.bool_}.get(kind) or _str_dtype()


def _param_cell(value: Any, kind: str) -> Any:
    if kind == "json":
        return json.dumps(value)
    if kind == "float":
        return float(value)
    return value


def _trial_array(f: SweepFile) -> np.ndarray:
    s = _str_dtype()
    dtype: list[tuple[Any, ...]] = [("id", np.int64)]
    dtype += [(key, _param_dtype(kind)) for key, kind in f.params.items()]
    dtype += [("status", s), ("rung", np.int64), ("target", np.int64), ("metric", np.float64, (len(f.rungs),))]
    dtype += [("epochs", np.int64), ("busy_s", np.float64), ("started_at", np.float64), ("ended_at", np.float64)]
    dtype += [("job_id", s), ("node", s), ("log", s), ("error", s)]
    rows = []
    for t in f.trials:
        if len(t.metric) != len(f.rungs):
            raise ValueError(f"trial {t.id}: {len(t.metric)} rung metrics for {len(f.rungs)} rungs")
        params = tuple(_param_cell(t.params[k], kind) for k, kind in f.params.items())
        rows.append(
            (t.id, *params, t.status, t.rung, t.target, t.metric, t.epochs, t.busy_s, t.started_at, t.ended_at)
            + (t.job_id, t.node, t.log, t.error)
        )
    return np.array(rows, dtype=dtype)


def _rows_array(rows: list[Any], columns: list[tuple[str, Any]]) -> np.ndarray:
    return np.array([tuple(getattr(r, name) for name, _ in columns) for r in rows], dtype=columns)


def _report_columns() -> list[tuple[str, Any]]:
    i, x = np.int64, np.float64
    return [("seq", i), ("trial", i), ("rung", i), ("epochs", i), ("metric", x), ("at", x)]


def _decision_columns() -> list[tuple[str, Any]]:
    i, x, s = np.int64, np.float64, _str_dtype()
    return [
        ("seq", i),
        ("trial", i),
        ("rung", i),
        ("action", s),
        ("metric", x),
        ("rank", i),
        ("reports", i),
        ("keep", i),
        ("cut", x),
        ("note", s),
        ("at", x),
    ]


def write_sweep(path: str | os.PathLike[str], f: SweepFile) -> Path:
    """Write ``path`` (``SWEEP/sweep.h5``) atomically: a temporary name in the same folder, then
    renamed over it. Call from the sweep's one driver.

    Raises
    ------
    TwinError
        Naming the file when its folder cannot be created or written; no temporary file is
        left behind.
    """

    path = Path(path)
    for key, kind in f.params.items():
        if kind not in PARAM_TYPES:
            raise ValueError(f"parameter {key}: column type {kind!r} is not one of {PARAM_TYPES}")
    with writing(path, lambda e: f"{path}: cannot write the sweep file ({e.strerror or e})") as tmp:
        with hdf5_image(tmp, track_order=True) as h:
            attrs = h.attrs
            attrs["format"] = FORMAT_NAME
            attrs["version"] = FORMAT_VERSION
            attrs["sweep"] = json.dumps(f.sweep)
            attrs["job"] = json.dumps(f.job)
            attrs["params"] = json.dumps([[k, kind] for k, kind in f.params.items()])
            attrs["rungs"] = np.asarray(f.rungs, dtype=np.int64)
            attrs["metric"] = f.metric
            attrs["direction"] = f.direction
            attrs["budget"] = f.budget
            attrs["workers"] = f.workers
            attrs["queue"] = np.asarray(f.queue, dtype=np.int64)
            for name in ("created_at", "updated_at", "first_start", "busy_s", "utilisation"):
                attrs[name] = float(getattr(f, name))
            attrs["executor"] = f.executor
            attrs["twinhpc_version"] = __version__
            h.create_dataset("trials", data=_trial_array(f))
            h.create_dataset("reports", data=_rows_array(f.reports, _report_columns()))
            h.create_dataset("decisions", data=_rows_array(f.decisions, _decision_columns()))
    return path


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _param_value(value: Any, kind: str) -> Any:
    if kind == "json":
        return json.loads(_text(value))
    if kind == "str":
        return _text(value)
    return {"float": float, "int": int, "bool": bool}[kind](value)


def read_sweep(path: str | os.PathLike[str]) -> SweepFile:
    """Read ``path`` back into the :class:`SweepFile` that was written (equal to it).

    Raises
    ------
    TwinError
        Naming the file: missing, not HDF5, not a sweep file, or a version this twinhpc does
        not read.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise TwinError(f"{path}: no such sweep file")
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise TwinError(f"{path}: not an HDF5 file ({e})") from None
    with h:
        a = h.attrs
        fmt, version = _text(a.get("format", "")), a.get("version")
        if fmt != FORMAT_NAME:
            raise TwinError(f"{path}: not a twinhpc sweep file (format {fmt!r})")
        if version != FORMAT_VERSION:
            raise TwinError(
                f"{path}: sweep format version {version} is not supported (this twinhpc reads {FORMAT_VERSION})"
            )
        params = {k: kind for k, kind in json.loads(_text(a["params"]))}
        out = SweepFile(
            sweep=json.loads(_text(a["sweep"])),
            job=json.loads(_text(a["job"])),
            params=params,
            rungs=[int(r) for r in a["rungs"]],
            metric=_text(a["metric"]),
            direction=_text(a["direction"]),
            budget=int(a["budget"]),
            workers=int(a["workers"]),
            queue=[int(q) for q in a["queue"]],
            created_at=float(a["created_at"]),
            updated_at=float(a["updated_at"]),
            first_start=float(a["first_start"]),
            busy_s=float(a["busy_s"]),
            utilisation=float(a["utilisation"]),
            executor=_text(a.get("executor", "")),
        )
        for r in h["trials"][()]:
            out.trials.append(
                TrialRow(
                    id=int(r["id"]),
                    params={k: _param_value(r[k], kind) for k, kind in params.items()},
                    status=_text(r["status"]),
                    rung=int(r["rung"]),
                    target=int(r["target"]),
                    metric=[float(m) for m in r["metric"]],
                    epochs=int(r["epochs"]),
                    busy_s=float(r["busy_s"]),
                    started_at=float(r["started_at"]),
                    ended_at=float(r["ended_at"]),
                    **{k: _text(r[k]) for k in ("job_id", "node", "log", "error")},
                )
            )
        for r in h["reports"][()]:
            out.reports.append(
                ReportRow(
                    seq=int(r["seq"]),
                    trial=int(r["trial"]),
                    rung=int(r["rung"]),
                    epochs=int(r["epochs"]),
                    metric=float(r["metric"]),
                    at=float(r["at"]),
                )
            )
        for r in h["decisions"][()]:
            out.decisions.append(
                DecisionRow(
                    seq=int(r["seq"]),
                    trial=int(r["trial"]),
                    rung=int(r["rung"]),
                    action=_text(r["action"]),
                    metric=float(r["metric"]),
                    rank=int(r["rank"]),
                    reports=int(r["reports"]),
                    keep=int(r["keep"]),
                    cut=float(r["cut"]),
                    note=_text(r["note"]),
                    at=float(r["at"]),
                )
            )
    return out
