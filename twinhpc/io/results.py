"""``RUN/results.h5``: the record of a training run and its final validation report.

Layout (format ``twinhpc-results`` version 1; ``docs/results-format.md`` is the user-facing
description, ``tests/golden/results-layout.txt`` the checked one)::

    /                  attrs: format, version, config (job JSON), environment (JSON)
    /metrics/<name>    float64 [epochs]   one row per epoch: loss, val_loss, val_accuracy, lr, ...
    /steps/step        int64   [records]  the optimizer step of each per-step record
    /steps/<name>      float64 [records]  loss, lr, step_time_s, ... at those steps
    /timing/<phase>    float64 [epochs]   seconds per epoch: data_wait, forward_backward, ...
    /report            attrs: scalars (task, accuracy, loss ...); datasets: arrays, class names
    /attempts/<name>   [attempts]         one row per process that trained the run: job_id, restart,
                                          host, ranks, start, end, first_step, last_step, reason

Every 1-D array is chunked with an unlimited maximum shape. A name missing from some rows
holds NaN there, so every array of a group has the group's length.

Only rank 0 writes (:class:`ResultsWriter`); anyone reads (:func:`read_results`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TwinError
from . import atomic

#: the columns of ``/attempts`` and their kinds ("str", "int" or "float")
ATTEMPT_COLUMNS = {
    "job_id": "str",
    "restart": "int",
    "host": "str",
    "ranks": "int",
    "start": "float",
    "end": "float",
    "first_step": "int",
    "last_step": "int",
    "reason": "str",
}
#: ``/attempts`` reason of an attempt still running, and of one found running by a later attempt
RUNNING, KILLED = "running", "killed"
FORMAT_NAME = "twinhpc-results"
FORMAT_VERSION = 1
RESULTS = "results.h5"
#: rows per HDF5 chunk of every growable array (8 KiB of float64)
CHUNK_ROWS = 1024


class _Rows:
    """Named float64 columns that grow by rows; a name first seen late is NaN before."""

    def __init__(self) -> None:
        self.columns: dict[str, list[np.ndarray]] = {}
        self.n = 0

    def append(self, values: Mapping[str, Any], rows: int = 1) -> None:
        for name, value in values.items():
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if arr.size != rows:
                raise ValueError(f"{name!r} has {arr.size} value(s), expected {rows}")
            if name not in self.columns:
                self.columns[name] = [np.full(self.n, np.nan)]
            self.columns[name].append(arr)
        for name, parts in self.columns.items():
            if name not in values:
                parts.append(np.full(rows, np.nan))
        self.n += rows

    def keep(self, mask_or_rows: int | np.ndarray) -> None:
        """Keep the first ``rows`` rows (an ``int``) or the rows where a boolean mask is true."""
        for name in self.columns:
            arr = self.array(name)
            self.columns[name] = [arr[:mask_or_rows] if isinstance(mask_or_rows, int) else arr[mask_or_rows]]
        self.n = mask_or_rows if isinstance(mask_or_rows, int) else int(np.count_nonzero(mask_or_rows))

    def array(self, name: str) -> np.ndarray:
        return np.concatenate(self.columns[name]) if self.columns[name] else np.zeros(0)


class ResultsWriter:
    """Writes ``RUN/results.h5``; used by rank 0 only.

    Parameters
    ----------
    run_dir : the run directory (created if missing).
    config_json : the job as JSON (:meth:`twinhpc.config.Job.to_json`).
    environment : JSON-able description of where the run ran (versions, ranks, hosts ...).
    resume : continue the records of an existing ``results.h5`` (call :meth:`truncate` with the
        checkpoint's epoch and step, so records made after it are dropped); without it, an
        existing file is replaced at the first :meth:`flush`.
    rows : start from these records (:meth:`rows` of an earlier writer, as a checkpoint holds
        them) instead of an empty record or the file; the file is replaced at the first flush.

    Raises
    ------
    TwinError
        With ``resume``, when the existing file cannot be read (it is named).

    Note:
        Each :meth:`flush` writes the whole file to ``results.h5.tmp``, fsyncs it and renames it
        over ``results.h5``. A reader (``twinhpc report`` during training) or a crash therefore
        always finds a complete file: the previous flush or this one. Appending in place would be
        cheaper, but an HDF5 file whose writer dies mid-update can be unreadable as a whole
        (HDF5 has no journal; SWMR needs one writer kept open and readers that opt in), and a
        file held open for days is fragile on parallel file systems. The price is rewriting a
        few MB per flush — per epoch and per checkpoint, not per step — which is small next to
        an epoch. The records are kept in memory between flushes; the datasets are still
        written chunked with an unlimited maximum shape, so tools may append to a finished file.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config_json: str,
        environment: Mapping[str, Any],
        *,
        resume: bool = False,
        rows: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.path = Path(run_dir) / RESULTS
        self.config_json = config_json
        self.environment_json = json.dumps(environment, sort_keys=True)
        self.metrics, self.timing, self.steps = _Rows(), _Rows(), _Rows()
        self.step_index: list[np.ndarray] = []
        self.report: dict[str, Any] = {}
        self.attempts: list[dict[str, Any]] = []
        if rows is not None:
            self._restore(rows)
            self.attempts = _earlier_attempts(self.path)
        elif resume and self.path.exists():
            old = read_results(self.path)
            self._restore(old)
            self.report = old["report"]
            self.attempts = old["attempts"]

    def _restore(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        metrics, timing = rows.get("metrics", {}), rows.get("timing", {})
        epochs = max((len(v) for v in [*metrics.values(), *timing.values()]), default=0)
        self.metrics.append(metrics, rows=epochs)
        self.timing.append(timing, rows=epochs)
        steps = dict(rows.get("steps", {}))
        step = np.asarray(steps.pop("step", np.zeros(0, np.int64)), dtype=np.int64)
        self.step_index.append(step)
        self.steps.append(steps, rows=len(step))

    def rows(self) -> dict[str, dict[str, np.ndarray]]:
        """The records so far: ``{"metrics": {name: float64 array}, "timing": ..., "steps":
        {"step": int64 array, name: float64 array}}`` (what a checkpoint stores)."""
        return {
            "metrics": {name: self.metrics.array(name) for name in self.metrics.columns},
            "timing": {name: self.timing.array(name) for name in self.timing.columns},
            "steps": {
                "step": np.concatenate(self.step_index) if self.step_index else np.zeros(0, np.int64),
                **{name: self.steps.array(name) for name in self.steps.columns},
            },
        }

    @property
    def epochs(self) -> int:
        """Epoch rows recorded."""
        return self.metrics.n

    def append_epoch(self, metrics: Mapping[str, float], timing: Mapping[str, float] | None = None) -> None:
        """Record one epoch: ``metrics`` (``loss``, ``val_loss``, ``lr``, ``epoch_time_s`` ...) and
        ``timing`` (seconds per phase: ``data_wait``, ``forward_backward``, ``communication``,
        ``optimizer``). Not on disk until :meth:`flush`."""
        self.metrics.append(metrics)
        self.timing.append(timing or {})

    def append_steps(self, steps: Mapping[str, Any]) -> None:
        """Record per-step values: ``steps["step"]`` (optimizer step numbers) and other names
        (``loss``, ``lr``, ``step_time_s``) as equal-length arrays or scalars.

        Raises
        ------
        ValueError
            Without ``"step"``, or with arrays of a different length than it.
        """
        if "step" not in steps:
            raise ValueError("append_steps needs the optimizer step numbers under 'step'")
        index = np.asarray(steps["step"], dtype=np.int64).reshape(-1)
        self.steps.append({k: v for k, v in steps.items() if k != "step"}, rows=len(index))
        self.step_index.append(index)

    def write_report(self, report: Mapping[str, Any]) -> None:
        """Set the final report (e.g. :func:`twinhpc.train.metrics.confusion_report`'s dict plus
        ``loss``): strings and numbers become attributes of ``/report``, arrays and lists of names
        datasets."""
        self.report = dict(report)

    def begin_attempt(
        self, *, job_id: str, restart: int, host: str, ranks: int, step: int, start: float | None = None
    ) -> None:
        """Record that a process starts training the run at optimizer ``step`` (``/attempts``,
        reason ``"running"`` until :meth:`end_attempt`). An earlier row still ``"running"`` belongs
        to a process that ended without a word (killed, out of time, its node lost): it becomes
        ``"killed"``, its end unknown (NaN). ``start`` defaults to now (Unix seconds)."""
        for row in self.attempts:
            if row["reason"] == RUNNING:
                row["reason"] = KILLED
        self.attempts.append(
            {
                "job_id": job_id,
                "restart": int(restart),
                "host": host,
                "ranks": int(ranks),
                "start": time.time() if start is None else float(start),
                "end": math.nan,
                "first_step": int(step),
                "last_step": int(step),
                "reason": RUNNING,
            }
        )

    def end_attempt(self, reason: str, step: int, end: float | None = None) -> None:
        """Close the attempt of :meth:`begin_attempt`: ``reason`` (``"finished"``,
        ``"early_stopped"``, ``"preempted"``, ``"failed"``), the step it reached, ``end``
        (default now). Not on disk until :meth:`flush`.

        Raises
        ------
        ValueError
            When no attempt was begun.
        """
        if not self.attempts:
            raise ValueError("end_attempt without begin_attempt")
        row = self.attempts[-1]
        row.update(reason=reason, last_step=int(step), end=time.time() if end is None else float(end))

    def truncate(self, epochs: int, step: int) -> None:
        """Keep the first ``epochs`` epoch rows and the step records up to ``step`` (on resume).
        ``/attempts`` keeps every row: it records processes, not training progress."""
        self.metrics.keep(min(epochs, self.metrics.n))
        self.timing.keep(min(epochs, self.timing.n))
        index = np.concatenate(self.step_index) if self.step_index else np.zeros(0, np.int64)
        mask = index <= step
        self.steps.keep(mask)
        self.step_index = [index[mask]]

    def flush(self) -> None:
        """Write everything recorded so far; on return ``results.h5`` is complete and durable.

        Raises
        ------
        OSError
            When the run directory cannot be written; ``results.h5`` is then the previous flush.
        """
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["version"] = FORMAT_VERSION
                f.attrs["config"] = self.config_json
                f.attrs["environment"] = self.environment_json
                for group, rows in (("metrics", self.metrics), ("timing", self.timing)):
                    g = f.create_group(group)
                    for name in rows.columns:
                        _growable(g, name, rows.array(name))
                g = f.create_group("steps")
                index = np.concatenate(self.step_index) if self.step_index else np.zeros(0, np.int64)
                _growable(g, "step", index)
                for name in self.steps.columns:
                    _growable(g, name, self.steps.array(name))
                if self.report:
                    _write_report(f.create_group("report"), self.report)
                if self.attempts:
                    _write_attempts(f.create_group("attempts"), self.attempts)
            atomic.replace_durably(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _growable(group: Any, name: str, data: np.ndarray) -> None:
    group.create_dataset(name, data=data, maxshape=(None,), chunks=(CHUNK_ROWS,))


def _write_attempts(group: Any, rows: list[dict[str, Any]]) -> None:
    import h5py

    for name, kind in ATTEMPT_COLUMNS.items():
        values = [row[name] for row in rows]
        if kind == "str":
            group.create_dataset(
                name,
                data=np.array(values, dtype=object),
                dtype=h5py.string_dtype("utf-8"),
                maxshape=(None,),
                chunks=(CHUNK_ROWS,),
            )
        else:
            _growable(group, name, np.asarray(values, dtype=np.int64 if kind == "int" else np.float64))


def _read_attempts(group: Any) -> list[dict[str, Any]]:
    import h5py

    columns: dict[str, list[Any]] = {}
    for name, ds in group.items():
        columns[name] = list(ds.asstr()[()]) if h5py.check_string_dtype(ds.dtype) else [_scalar(v) for v in ds[()]]
    n = min((len(v) for v in columns.values()), default=0)
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]


def _earlier_attempts(path: Path) -> list[dict[str, Any]]:
    """The ``/attempts`` rows of an existing ``results.h5`` (a checkpoint does not carry them),
    or none when there is no file or it cannot be read: the records themselves come from the
    checkpoint, and the attempt rows only describe the run's history."""
    if not path.exists():
        return []
    try:
        return list(read_results(path)["attempts"])
    except (TwinError, OSError, KeyError):
        return []


def _write_report(group: Any, report: Mapping[str, Any]) -> None:
    import h5py

    for name, value in report.items():
        if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            group.attrs[name] = value
            continue
        arr = np.asarray(value)
        if arr.dtype.kind in "US":
            group.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype("utf-8"))
        elif arr.dtype.kind in "biuf":
            group.create_dataset(name, data=arr)
        else:
            raise TypeError(f"report entry {name!r}: cannot store {arr.dtype} values")


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything in a ``results.h5`` (a file, or a run directory holding one).

    Returns
    -------
    dict
        ``format``, ``version``, ``config`` (the job as a dict), ``environment`` (dict),
        ``epochs`` (rows recorded), ``metrics``, ``steps``, ``timing`` (name → numpy array; steps
        include ``step``), ``report`` (name → scalar, array, or list of class names; empty if
        none was written), ``attempts`` (one dict per row of ``/attempts``, oldest first; empty
        for a file without it).

    Raises
    ------
    TwinError
        Naming the file: missing, not HDF5, not a twinhpc results file, a newer version, or
        damaged.
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        raise TwinError(f"{path}: no results file (is it a run directory of `twinhpc train`?)")
    try:
        with h5py.File(path, "r") as f:
            fmt, version = _scalar(f.attrs.get("format")), _scalar(f.attrs.get("version"))
            if fmt != FORMAT_NAME:
                raise TwinError(f"{path}: not a twinhpc results file (attribute 'format' is {fmt!r})")
            if version != FORMAT_VERSION:
                raise TwinError(
                    f"{path}: results format version {version} is not supported (this twinhpc reads {FORMAT_VERSION})"
                )
            out: dict[str, Any] = {
                "format": fmt,
                "version": version,
                "config": json.loads(_scalar(f.attrs["config"])),
                "environment": json.loads(_scalar(f.attrs["environment"])),
            }
            for group in ("metrics", "steps", "timing"):
                out[group] = {name: ds[()] for name, ds in f[group].items()}
            per_epoch = [*out["metrics"].values(), *out["timing"].values()]
            out["epochs"] = len(per_epoch[0]) if per_epoch else 0
            report: dict[str, Any] = {}
            if "report" in f:
                g = f["report"]
                report.update({k: _scalar(v) for k, v in g.attrs.items()})
                for name, ds in g.items():
                    report[name] = list(ds.asstr()[()]) if h5py.check_string_dtype(ds.dtype) else ds[()]
            out["report"] = report
            out["attempts"] = _read_attempts(f["attempts"]) if "attempts" in f else []
    except TwinError:
        raise
    except (OSError, KeyError, ValueError) as e:  # h5py: not HDF5 / truncated; JSON: damaged
        raise TwinError(f"{path}: unreadable results file ({e})") from None
    return out
