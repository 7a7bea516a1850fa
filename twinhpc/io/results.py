"""``RUN/results.h5``: the record of a training run and its final validation report.

Layout (format ``twinhpc-results`` version 1; ``docs/results-format.md`` is the user-facing
description, ``tests/golden/results-layout.txt`` the checked one)::

    /                  attrs: format, version, config (job JSON), environment (JSON), command,
                              twinhpc_version, source_commit, start_time, end_time (ISO 8601 UTC)
    /metrics/epoch     int64   [epochs]   the epoch of each row, from 1 (as the log and report)
    /metrics/<name>    float64 [epochs]   one row per epoch: loss, val_loss, val_accuracy, lr, ...
    /steps/step        int64   [records]  the optimizer step of each per-step record
    /steps/<name>      float64 [records]  loss, lr, step_time_s, ... at those steps
    /timing/<phase>    float64 [epochs]   seconds per epoch: data_wait, forward_backward, ...
    /report            attrs: scalars (task, accuracy, loss ...); datasets: arrays, class names
    /attempts/<name>   [attempts]         one row per process that trained the run: job_id, restart,
                                          host, ranks, start, end, first_step, last_step, reason
    /twin_validation   a field job's rollout validation (``twinhpc validate``), written into an
                       existing file by :func:`write_twin_validation`; read by
                       :func:`read_twin_validation`

Every 1-D array is chunked with an unlimited maximum shape. A name missing from some rows
holds NaN there, so every array of a group has the group's length. Every dataset has the
attributes ``units`` (UDUNITS-style: ``"s"``, ``"1"`` for a number without unit, ...) and
``description`` (:func:`describe`).

Only rank 0 writes (:class:`ResultsWriter`); anyone reads (:func:`read_results`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
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
#: ``source_commit`` when the source is not a git checkout (an installed package)
UNKNOWN = "unknown"

#: (units, description) of the datasets with a fixed meaning, by path; :func:`describe` adds the
#: names made from a metric (``val_<metric>``, the training metric) and the others
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "metrics/epoch": ("1", "epoch of each row, from 1 (the numbering of the log and of twinhpc report)"),
    "metrics/loss": (
        "1",
        "mean training loss of the epoch's optimizer steps, averaged over the ranks (train.loss: cross_entropy "
        "in nats; a regression loss in the target's units, squared for mse)",
    ),
    "metrics/val_loss": ("1", "mean loss over the validation split (data.val_split) at the end of the epoch"),
    "metrics/lr": ("1", "learning rate of the epoch's last optimizer step"),
    "metrics/epoch_time_s": ("s", "wall time of the epoch: its training steps and its validation"),
    "metrics/samples_per_s": ("1/s", "training samples per second over all ranks (validation excluded)"),
    "steps/step": ("1", "optimizer step of each per-step record, from 1 (every train.log_every steps)"),
    "steps/loss": ("1", "training loss of the step, averaged over the ranks and micro-batches"),
    "steps/lr": ("1", "learning rate of the step"),
    "steps/step_time_s": ("s", "wall time of the step on rank 0"),
    "steps/data_wait_s": ("s", "seconds rank 0 waited for the step's batches"),
    "steps/forward_backward_s": ("s", "seconds of the step's forward and backward passes (rank 0)"),
    "steps/communication_s": ("s", "seconds of the step's gradient all-reduce not hidden by computation (rank 0)"),
    "steps/optimizer_s": ("s", "seconds of the step's gradient clipping and optimizer update (rank 0)"),
    "steps/allreduce_bytes": ("byte", "bytes of gradients each rank all-reduced in the step (0 at one rank)"),
    "steps/gradient_bytes": (
        "byte",
        "bytes of the trainable parameters' gradients in train.wire_dtype: what a step all-reduces at 2 or more ranks",
    ),
    "timing/data_wait": ("s", "seconds rank 0 waited for batches in the epoch"),
    "timing/forward_backward": ("s", "seconds of forward and backward passes in the epoch (rank 0)"),
    "timing/communication": ("s", "seconds of the gradient all-reduce not hidden by computation in the epoch (rank 0)"),
    "timing/optimizer": ("s", "seconds of gradient clipping and optimizer updates in the epoch (rank 0)"),
    "report/classes": ("1", "class names, in class-index order"),
    "report/confusion": ("1", "samples per true class (row) and predicted class (column)"),
    "report/precision": ("1", "precision per class (0 where undefined)"),
    "report/recall": ("1", "recall per class (0 where undefined)"),
    "report/f1": ("1", "F1 score per class (0 where undefined)"),
    "report/support": ("1", "samples per true class"),
    "attempts/job_id": ("1", "Slurm job id (SLURM_JOB_ID); empty outside Slurm"),
    "attempts/restart": ("1", "SLURM_RESTART_COUNT: 0 for a job's first run, k for its k-th requeue"),
    "attempts/host": ("1", "rank 0's host name"),
    "attempts/ranks": ("1", "number of ranks"),
    "attempts/start": ("s", "start, in seconds since 1970-01-01 UTC (Unix time)"),
    "attempts/end": ("s", "end, in seconds since 1970-01-01 UTC (Unix time); NaN while running and when killed"),
    "attempts/first_step": ("1", "optimizer step the attempt started from (0, or the checkpoint it resumed)"),
    "attempts/last_step": ("1", "optimizer step the attempt reached"),
    "attempts/reason": (
        "1",
        "how the attempt ended: finished, early_stopped, preempted, failed; running; killed (found running later)",
    ),
}
#: metric name → (units, what it is); validation ones are ``val_<name>``
METRIC_MEANINGS = {
    "accuracy": ("1", "accuracy (share of samples whose predicted class is the true one)"),
    "f1": ("1", "macro F1 score (mean over the classes present)"),
    "mae": ("target units", "mean absolute error"),
    "rmse": ("target units", "root mean squared error"),
    "nrmse": (
        "1",
        "normalised RMSE of a field task's next state: ‖pred − true‖₂ / ‖true‖₂ per sample and step, averaged",
    ),
    "r2": ("1", "coefficient of determination R2 (mean over outputs)"),
}


def describe(group: str, name: str) -> tuple[str, str]:
    """``(units, description)`` of the dataset ``/<group>/<name>`` of results.h5."""
    if f"{group}/{name}" in DESCRIPTIONS:
        return DESCRIPTIONS[f"{group}/{name}"]
    where = {"metrics": "per epoch", "steps": "per step record", "timing": "seconds per epoch (rank 0)"}.get(group, "")
    if group == "metrics" and name.removeprefix("val_") in METRIC_MEANINGS:
        units, what = METRIC_MEANINGS[name.removeprefix("val_")]
        split = (
            "the validation split at the end of the epoch"
            if name.startswith("val_")
            else "the epoch's training batches"
        )
        return units, f"{what} over {split}"
    if group == "timing":
        return "s", f"seconds of phase {name!r} in the epoch (rank 0)"
    if group == "report":
        return "1", f"final validation report: {name}"
    units = "s" if name.endswith("_s") else "1"
    return units, f"{name}, {where}" if where else name


def utc_iso(seconds: float | None = None) -> str:
    """Unix time ``seconds`` (default now) as ISO 8601 UTC, to the second: ``2026-12-03T16:33:55Z``."""
    moment = _dt.datetime.fromtimestamp(time.time() if seconds is None else seconds, _dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The process's command line (``sys.argv``), shell-quoted; ``python -m twinhpc`` and the
    ``twinhpc`` script both read ``twinhpc ...``."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0])
    if program.name == "twinhpc" or (program.name == "__main__.py" and program.parent.name == "twinhpc"):
        argv[0] = "twinhpc"
    return shlex.join(argv)


def source_commit(root: str | os.PathLike[str] | None = None) -> str:
    """The git commit of twinhpc's source (``root``: the directory holding the package, by
    default this one's), or :data:`UNKNOWN` when it is not a git checkout or its files cannot
    be read. Read from the files under ``.git`` (a worktree's ``gitdir:`` file, ``HEAD``, loose
    and packed refs): no process is started (a fork after MPI's start is unsafe), nothing raised."""
    try:
        top = Path(root) if root is not None else Path(__file__).resolve().parents[2]
        dot = top / ".git"
        if dot.is_file():
            line = dot.read_text().strip()
            if not line.startswith("gitdir:"):
                return UNKNOWN
            gitdir = (top / line.removeprefix("gitdir:").strip()).resolve()
        elif dot.is_dir():
            gitdir = dot
        else:
            return UNKNOWN
        common = gitdir / (gitdir / "commondir").read_text().strip() if (gitdir / "commondir").is_file() else gitdir
        head = (gitdir / "HEAD").read_text().strip()
        commit = head
        if head.startswith("ref:"):
            ref = head.removeprefix("ref:").strip()
            commit = UNKNOWN
            for directory in (gitdir, common):
                if (directory / ref).is_file():
                    commit = (directory / ref).read_text().strip()
                    break
            else:
                packed = common / "packed-refs"
                if packed.is_file():
                    for entry in packed.read_text().splitlines():
                        parts = entry.split()
                        if len(parts) == 2 and parts[1] == ref:
                            commit = parts[0]
                            break
        return commit if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit) else UNKNOWN
    except (OSError, UnicodeDecodeError, IndexError):
        return UNKNOWN


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
    command : the command line recorded (default: this process's, :func:`command_line`).

    The root attributes ``command``, ``twinhpc_version`` and ``source_commit`` describe the
    process that writes (the latest attempt); ``start_time`` is the run's first start (kept from
    an existing file on a resume, else now) and ``end_time`` the time of the latest flush (each
    epoch's end, each checkpoint, the end of the run).

    Raises
    ------
    TwinError
        With ``resume``, when the existing file cannot be read (it is named).

    Note:
        Each :meth:`flush` builds the whole file in memory (HDF5's core driver), writes its image
        to ``results.h5.tmp``, fsyncs it and renames it over ``results.h5``. A reader
        (``twinhpc report`` during training) or a crash therefore always finds a complete file:
        the previous flush or this one. Appending in place would be
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
        command: str | None = None,
    ) -> None:
        self.path = Path(run_dir) / RESULTS
        self.config_json = config_json
        self.environment_json = json.dumps(environment, sort_keys=True)
        self.command = command_line() if command is None else command
        self.source_commit = source_commit()
        self.start_time = utc_iso()
        self.metrics, self.timing, self.steps = _Rows(), _Rows(), _Rows()
        self.step_index: list[np.ndarray] = []
        self.report: dict[str, Any] = {}
        self.attempts: list[dict[str, Any]] = []
        if rows is not None:
            self._restore(rows)
            earlier = _earlier(self.path)
            self.attempts = list(earlier.get("attempts", []))
            self.start_time = earlier.get("start_time") or self.start_time
        elif resume and self.path.exists():
            old = read_results(self.path)
            self._restore(old)
            self.report = old["report"]
            self.attempts = old["attempts"]
            self.start_time = old["start_time"] or self.start_time

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with atomic.hdf5_image(tmp) as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["version"] = FORMAT_VERSION
                f.attrs["config"] = self.config_json
                f.attrs["environment"] = self.environment_json
                f.attrs["command"] = self.command
                f.attrs["twinhpc_version"] = __version__
                f.attrs["source_commit"] = self.source_commit
                f.attrs["start_time"] = self.start_time
                f.attrs["end_time"] = utc_iso()
                for group, rows in (("metrics", self.metrics), ("timing", self.timing)):
                    g = f.create_group(group)
                    if group == "metrics":
                        _growable(g, "epoch", np.arange(1, rows.n + 1, dtype=np.int64))
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
                f.visititems(_describe_dataset)
            atomic.replace_durably(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _describe_dataset(path: str, obj: Any) -> None:
    """``visititems`` callback: the ``units`` and ``description`` attributes of a dataset."""
    import h5py

    if isinstance(obj, h5py.Dataset):
        group, _, name = path.rpartition("/")
        obj.attrs["units"], obj.attrs["description"] = describe(group, name)


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


def _earlier(path: Path) -> dict[str, Any]:
    """What an existing ``results.h5`` holds that a checkpoint does not carry (``/attempts``,
    ``start_time``), or ``{}`` when there is no file or it cannot be read: the records themselves
    come from the checkpoint, and these only describe the run's history."""
    if not path.exists():
        return {}
    try:
        return read_results(path)
    except (TwinError, OSError, KeyError):
        return {}


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
        ``command``, ``twinhpc_version``, ``source_commit``, ``start_time``, ``end_time`` (str;
        ``""``, and ``"unknown"`` for the commit, in a file written before they were recorded),
        ``epochs`` (rows recorded), ``epoch`` (int64 epoch numbers from 1, ``/metrics/epoch``),
        ``metrics``, ``steps``, ``timing`` (name → numpy array; steps include ``step``, metrics
        leave ``epoch`` out), ``report`` (name → scalar, array, or list of class names; empty if
        none was written), ``attempts`` (one dict per row of ``/attempts``, oldest first; empty
        for a file without it), ``twin_validation`` (:func:`read_twin_validation`'s dict; empty
        when the run has none).

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
                **{
                    k: str(_scalar(f.attrs.get(k, "")))
                    for k in ("command", "twinhpc_version", "start_time", "end_time")
                },
                "source_commit": str(_scalar(f.attrs.get("source_commit", UNKNOWN))),
            }
            for group in ("metrics", "steps", "timing"):
                out[group] = {name: ds[()] for name, ds in f[group].items()}
            epoch = out["metrics"].pop("epoch", None)
            per_epoch = [*out["metrics"].values(), *out["timing"].values()]
            out["epochs"] = len(per_epoch[0]) if per_epoch else 0 if epoch is None else len(epoch)
            out["epoch"] = np.arange(1, out["epochs"] + 1, dtype=np.int64) if epoch is None else epoch
            report: dict[str, Any] = {}
            if "report" in f:
                g = f["report"]
                report.update({k: _scalar(v) for k, v in g.attrs.items()})
                for name, ds in g.items():
                    report[name] = list(ds.asstr()[()]) if h5py.check_string_dtype(ds.dtype) else ds[()]
            out["report"] = report
            out["attempts"] = _read_attempts(f["attempts"]) if "attempts" in f else []
            out["twin_validation"] = _read_twin_validation(f[TWIN]) if TWIN in f else {}
    except TwinError:
        raise
    except (OSError, KeyError, ValueError) as e:  # h5py: not HDF5 / truncated; JSON: damaged
        raise TwinError(f"{path}: unreadable results file ({e})") from None
    return out


# -- /twin_validation ---------------------------------------------------------------------------
#: the group of a field job's rollout validation
TWIN = "twin_validation"
#: metric → (units, what it is), for ``/twin_validation/<model>/<metric>[_full|_per_step]``
TWIN_METRICS = {
    "nrmse": (
        "1",
        "PDEBench nRMSE of the absolute state: ‖pred − true‖₂ / ‖true‖₂ over the grid per scenario and step, "
        "averaged over the scenarios",
    ),
    "nrmse_rise": (
        "1",
        "nRMSE of the temperature rise: ‖pred − true‖₂ / ‖true − T∞‖₂ over the grid per scenario and step "
        "(T∞ the scenario's ambient temperature), averaged over the scenarios",
    ),
    "rmse": ("K", "RMSE over every grid value of every scenario"),
    "max_abs": ("K", "largest absolute error over every grid value of every scenario"),
    "energy_residual": (
        "1",
        "|heat in + edge conduction − face convection − change of stored heat| over a saved interval, as a "
        "fraction of the scenario's mean heat input, averaged over the scenarios",
    ),
}
#: ``/twin_validation/<model>`` → what the model is
TWIN_MODELS = {
    "twin": "the twin (the run's surrogate) rolled out from the true u[0]",
    "persistence": "the persistence baseline (u[t] = u[0])",
    "linear": "the linear baseline (least squares in POD coordinates, fitted on the training split)",
    "truth": "the simulated trajectories themselves (the energy balance's floor)",
}
TWIN_FIXED = {
    "horizon": ("1", "horizons, in saved steps after u[0], of the rows of every per-horizon dataset"),
    "step": ("1", "saved steps 1..T of the rows of every *_per_step dataset"),
    "scenario_index": ("1", "indices within the split of the scenarios rolled out"),
    "examples/index": ("1", "indices within the split of the example scenarios"),
    "examples/time": ("1", "saved steps of the example fields (the horizons)"),
    "examples/truth": ("state units", "the true field of each example scenario at each example time"),
    "examples/twin": ("state units", "the twin's field of each example scenario at each example time"),
    "stability/excursion": (
        "1",
        "stability check, per scenario (rows: scenario_index): the largest excursion of the twin's rollout of "
        "stability_steps saved steps from the last true state with the forcing off beyond the span that bounds "
        "it (stability_span), as a share of that span's width; 0: inside",
    ),
    "stability/diverged_at": (
        "1",
        "stability check, per scenario (rows: scenario_index): the first step of that rollout whose state is "
        "not finite; -1: none",
    ),
}


def twin_stable(excursion: Any, diverged_at: Any, tolerance: float) -> bool:
    """The stability check's verdict (``/twin_validation/stability``, docs/twin.md): no
    scenario's state became non-finite (``diverged_at`` all −1) and no ``excursion`` exceeds
    ``tolerance`` widths of the span."""
    return bool((np.asarray(diverged_at) < 0).all() and np.max(excursion) <= tolerance)


def describe_twin(path: str) -> tuple[str, str]:
    """``(units, description)`` of ``/twin_validation/<path>``."""
    if path in TWIN_FIXED:
        return TWIN_FIXED[path]
    model, _, name = path.partition("/")
    if name.startswith("one_step_"):
        units, what = TWIN_METRICS.get(name.removeprefix("one_step_"), ("1", name))
        return (
            units,
            f"{TWIN_MODELS.get(model, model)}: {what}, one step ahead from every true state u[t] (teacher forcing)",
        )
    suffixes = {"_full": "over the full rollout (every step)", "_per_step": "at each saved step (rows: step)"}
    suffix = next((x for x in suffixes if name.endswith(x)), "")
    metric = name.removesuffix(suffix) if suffix else name
    where = suffixes.get(suffix, "at each horizon (rows: horizon)")
    units, what = TWIN_METRICS.get(metric, ("1", metric))
    return units, f"{TWIN_MODELS.get(model, model)}: {what}, {where}"


def write_twin_validation(path: str | os.PathLike[str], attrs: Mapping[str, Any], datasets: Mapping[str, Any]) -> Path:
    """Replace ``/twin_validation`` of an existing results file (a file or a run directory):
    ``attrs`` become the group's attributes, ``datasets`` (``"twin/nrmse"``: array or scalar)
    its datasets, each with ``units`` and ``description`` (:func:`describe_twin`).

    The file is copied to ``results.h5.tmp``, changed there, fsynced and renamed over
    ``results.h5``: a reader sees the old file or the new one. Training again rewrites
    ``results.h5`` without the group (the validation described a checkpoint it replaces).

    Raises
    ------
    TwinError
        Naming the file: missing or not a twinhpc results file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    read_results(path)  # refuses a missing, foreign or damaged file
    tmp = path.with_name(path.name + ".tmp")
    try:
        with atomic.hdf5_image(tmp, base=path) as f:
            if TWIN in f:
                del f[TWIN]
            g = f.create_group(TWIN)
            for name, value in attrs.items():
                g.attrs[name] = value
            for name, value in datasets.items():
                ds = g.create_dataset(name, data=np.asarray(value))
                ds.attrs["units"], ds.attrs["description"] = describe_twin(name)
        atomic.replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_twin_validation(group: Any) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {"attrs": {k: _scalar(v) for k, v in group.attrs.items()}}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()] if obj.shape else _scalar(obj[()])

    group.visititems(visit)
    return out


def read_twin_validation(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``/twin_validation`` of a results file (or run directory): ``{"attrs": {...},
    "horizon": array, "twin/nrmse": array, "twin/nrmse_full": float, ...}``; ``{}`` when the run
    has none. Raises :class:`TwinError` as :func:`read_results`."""
    return dict(read_results(path)["twin_validation"])
