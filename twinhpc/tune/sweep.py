"""A sweep's state: the job and its ``[sweep]`` table, the sampler, the ASHA scheduler and each
trial's record, kept in ``SWEEP/sweep.h5``.

::

    sweep = Sweep.create(job, "sweeps/digits")       # checks the space, writes sweep.h5
    for work in sweep.next_trials():                 # as many as there are free workers
        ...  # run work.job from work.start_epochs to work.epochs (resume from work.out's checkpoint)
        sweep.started(work.trial, job_id="123", node="n1", log=".../log")
    sweep.report(trial, rung, metric)                # promote / pause / complete
    sweep.fail(trial, "exit status 1", log=".../log")
    sweep = Sweep.load("sweeps/digits")              # after the driver died: the same state

Every call that changes the state writes sweep.h5 atomically (when the sweep has a folder), so
a driver that dies loses nothing it had been told: :meth:`Sweep.load` gives a sweep that makes
exactly the decisions the old one would have made. The sweep runs nothing itself: executors
(which import submitit and Dask; not this module) hand out :class:`TrialWork` and call back.

A trial's job is the base job with its values applied through
:func:`twinhpc.config.override` (validated like ``--set`` items), ``train.out`` set to
``SWEEP/trials/<id>`` (4 digits) and ``train.epochs`` to the sweep's ``max_epochs``, so a
learning-rate schedule spans the full budget whether or not the trial is promoted; a segment
stops at its rung's epochs.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Job, JobFileError, override
from ..errors import TwinError
from ..io.sweep import SWEEP_FILE, DecisionRow, ReportRow, SweepFile, TrialRow, read_sweep, write_sweep
from . import asha as _asha
from .asha import ASHA, Decision, Report, Step, TrialState, TuneError
from .space import Observation, base_job, check_space, sampler

#: where a trial's run goes, under the sweep's folder
TRIALS_DIR = "trials"


@dataclass(frozen=True)
class TrialWork:
    """A segment for a free worker: train trial ``trial``'s ``job`` (whose run folder is
    ``out``) from ``start_epochs`` (0: from scratch, else resume from the checkpoint written at
    that epoch) to ``epochs``, then call :meth:`Sweep.report` with ``rung``."""

    trial: int
    rung: int
    epochs: int
    start_epochs: int
    params: dict[str, Any]
    out: Path
    job: Job


@dataclass
class _Record:
    """What the sweep knows of a trial beyond the scheduler's state."""

    params: dict[str, Any]
    epochs: int = 0
    busy_s: float = 0.0
    started_at: float = math.nan
    ended_at: float = math.nan
    job_id: str = ""
    node: str = ""
    log: str = ""
    error: str = ""


@dataclass
class Sweep:
    """The state of one sweep; build it with :meth:`create` or :meth:`load`."""

    job: Job
    directory: Path | None
    scheduler: ASHA
    records: list[_Record] = field(default_factory=list)
    report_at: list[float] = field(default_factory=list)
    decision_at: list[float] = field(default_factory=list)
    created_at: float = math.nan
    updated_at: float = math.nan
    first_start: float = math.nan
    #: the executor the sweep runs on (its ``--executor`` name; "" unknown)
    executor: str = ""

    def __post_init__(self) -> None:
        if self.job.sweep is None:
            raise JobFileError("sweep", "missing: the job has no [sweep] table")
        self.settings = self.job.sweep
        self.metric, self.direction = self.settings.objective(self.job.train.early_stopping)
        self.max_epochs = self.settings.max_epochs_of(self.job.train.epochs)
        self.sampler = sampler(self.settings, self.direction)
        self.base = base_job(self.job)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls, job: Job, directory: str | os.PathLike[str] | None = None, now: float | None = None, executor: str = ""
    ) -> Sweep:
        """A new sweep of ``job`` (which has a ``[sweep]`` table), written to
        ``directory/sweep.h5`` when a folder is given; ``executor``: the name of the executor it
        runs on (recorded for ``twinhpc sweep resume``).

        Raises
        ------
        JobFileError
            The job has no ``[sweep]``, or a parameter or value does not fit the job
            (:func:`~twinhpc.tune.space.check_space`), naming the key.
        TwinError
            ``directory`` holds a sweep.h5 already (a sweep is never overwritten).
        """
        if job.sweep is None:
            raise JobFileError("sweep", "missing: the job has no [sweep] table")
        if directory is not None and (Path(directory) / SWEEP_FILE).exists():
            raise TwinError(
                f"{Path(directory) / SWEEP_FILE}: the folder holds a sweep already; continue it "
                "(Sweep.load) or choose another folder"
            )
        check_space(job)
        s = job.sweep
        top = s.max_epochs_of(job.train.epochs)
        rungs = _asha.rungs(s.min_epochs, s.reduction_factor, top) if s.scheduler == "asha" else (top,)
        _, direction = s.objective(job.train.early_stopping)
        stamp = time.time() if now is None else now
        sweep = cls(
            job,
            Path(directory) if directory is not None else None,
            ASHA(rungs, s.reduction_factor, direction, s.budget),
            created_at=stamp,
            updated_at=stamp,
            executor=executor,
        )
        sweep.save(stamp)
        return sweep

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Sweep:
        """The sweep saved in ``directory/sweep.h5``, ready to continue where it stopped.

        Raises
        ------
        TwinError
            The file is missing or not a sweep file (naming it).
        """
        directory = Path(directory)
        return cls.from_file(read_sweep(directory / SWEEP_FILE), directory)

    @classmethod
    def from_file(cls, f: SweepFile, directory: Path | None = None) -> Sweep:
        """The sweep whose state ``f`` holds (:meth:`to_file` gives it back)."""
        where = str(directory / SWEEP_FILE) if directory else SWEEP_FILE
        job = Job.from_dict(f.job, where=where)
        if job.sweep is None:
            raise TwinError(f"{where}: the stored job has no [sweep] table")
        trials = [TrialState(t.id, t.status, t.target, t.rung) for t in f.trials]
        scheduler = ASHA(
            tuple(f.rungs),
            job.sweep.reduction_factor,
            f.direction,
            f.budget,
            trials=trials,
            reports=[Report(r.seq, r.trial, r.rung, r.metric) for r in f.reports],
            decisions=[
                Decision(d.seq, d.trial, d.rung, d.action, d.metric, d.rank, d.reports, d.keep, d.cut, d.note)
                for d in f.decisions
            ],
            queue=list(f.queue),
        )
        records = [
            _Record(t.params, t.epochs, t.busy_s, t.started_at, t.ended_at, t.job_id, t.node, t.log, t.error)
            for t in f.trials
        ]
        return cls(
            job,
            directory,
            scheduler,
            records,
            [r.at for r in f.reports],
            [d.at for d in f.decisions],
            f.created_at,
            f.updated_at,
            f.first_start,
            f.executor,
        )

    # -- state -------------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """``SWEEP/sweep.h5``, or ``None`` for a sweep without a folder."""
        return self.directory / SWEEP_FILE if self.directory is not None else None

    @property
    def rungs(self) -> tuple[int, ...]:
        return self.scheduler.rungs

    @property
    def decisions(self) -> list[Decision]:
        return self.scheduler.decisions

    @property
    def finished(self) -> bool:
        """Every trial of the budget has completed, failed or been stopped."""
        return self.scheduler.finished

    def status(self, trial: int) -> str:
        return self.scheduler.state_of(trial).status

    def params(self, trial: int) -> dict[str, Any]:
        return dict(self.records[trial].params)

    def busy_s(self, now: float | None = None) -> float:
        """The trials' running time, summed (running segments up to ``now``)."""
        stamp = self.updated_at if now is None else now
        running = sum(stamp - self.records[t].started_at for t in self.scheduler.running())
        return sum(r.busy_s for r in self.records) + running

    def utilisation(self, now: float | None = None) -> float:
        """Busy time ÷ (workers × time since the first trial started); NaN before that."""
        stamp = self.updated_at if now is None else now
        span = stamp - self.first_start
        if math.isnan(span) or span <= 0:
            return math.nan
        return self.busy_s(stamp) / (self.settings.concurrent * span)

    def best(self) -> tuple[int, float] | None:
        """``(trial, metric)`` of the best trial at the last rung, or ``None`` before one got there."""
        ranked = self.scheduler.at_rung(self.scheduler.last)
        return (ranked[0].trial, ranked[0].metric) if ranked else None

    def trial_dir(self, trial: int) -> Path:
        """``SWEEP/trials/<id>``: the trial's run folder."""
        return (self.directory if self.directory is not None else Path(".")) / TRIALS_DIR / f"{trial:04d}"

    def trial_job(self, trial: int) -> Job:
        """The trial's job: the base job with its values, ``train.out`` and ``train.epochs``.

        Raises
        ------
        JobFileError
            When the values together do not make a valid job (naming the key and the trial).
        """
        values = {
            **self.records[trial].params,
            "train.out": str(self.trial_dir(trial)),
            "train.epochs": self.max_epochs,
        }
        return override(self.base, values, where=f"sweep trial {trial}")

    def history(self, before: int) -> list[Observation]:
        """What a sampler may know when it chooses trial ``before``: the trials before it."""
        metrics: dict[int, dict[int, float]] = {}
        for r in self.scheduler.reports:
            metrics.setdefault(r.trial, {})[self.rungs[r.rung]] = r.metric
        return [
            Observation(self.records[t].params, self.scheduler.trials[t].status, metrics.get(t, {}))
            for t in range(min(before, len(self.records)))
        ]

    # -- events ------------------------------------------------------------------------------
    def next_trials(self, n: int | None = None, now: float | None = None) -> list[TrialWork]:
        """Work for up to ``n`` free workers (at most ``concurrent`` trials run at once; ``None``:
        fill every free worker): promoted trials first, then new trials while the budget lasts.

        A new trial whose values make an invalid job is recorded as failed (the error names the
        key) and the next one is tried.
        """
        stamp = time.time() if now is None else now
        free = self.settings.concurrent - len(self.scheduler.running())
        want = free if n is None else min(n, free)
        out: list[TrialWork] = []
        before = len(self.scheduler.decisions)
        while len(out) < want:
            steps = self.scheduler.next(want - len(out))
            if not steps:
                break
            out += [w for w in (self._work(s, stamp) for s in steps) if w is not None]
        if out or len(self.scheduler.decisions) != before:  # else nothing changed: no write
            self._event(stamp)  # saved before an executor gets the work: it is `running` in sweep.h5
        return out

    def _work(self, step: Step, stamp: float) -> TrialWork | None:
        if step.trial == len(self.records):  # a new trial
            self.records.append(_Record(self.sampler.sample(step.trial, self.history(step.trial))))
        record = self.records[step.trial]
        try:
            job = self.trial_job(step.trial)
        except JobFileError as e:
            record.error, record.ended_at = str(e), stamp
            self.scheduler.fail(step.trial, f"invalid job: {e}")
            return None
        record.started_at = stamp
        record.job_id = record.node = ""  # the segment's, once an executor has started it
        if math.isnan(self.first_start):
            self.first_start = stamp
        out = self.trial_dir(step.trial)
        return TrialWork(step.trial, step.rung, step.epochs, step.start_epochs, dict(record.params), out, job)

    def started(self, trial: int, job_id: str = "", node: str = "", log: str = "", now: float | None = None) -> None:
        """An executor started ``trial``'s segment: where it runs (its busy time counts from now)."""
        stamp = time.time() if now is None else now
        if self.status(trial) != "running":
            raise TuneError(f"trial {trial} started but is {self.status(trial)}, not running")
        record = self.records[trial]
        record.started_at = stamp
        record.job_id, record.node, record.log = job_id or record.job_id, node or record.node, log or record.log
        self._event(stamp)

    def report(
        self, trial: int, rung: int, metric: float, now: float | None = None, early_stopped: int | None = None
    ) -> Decision:
        """``trial`` reached ``rung`` (an index of :attr:`rungs`) with ``metric``: the decision
        (promote, pause or complete), recorded with the values it compared. ``early_stopped``:
        early stopping ended the trial's run at that epoch (≤ the rung's epochs), which
        completes the trial at ``rung`` (:meth:`ASHA.report <twinhpc.tune.asha.ASHA.report>`)."""
        stamp = time.time() if now is None else now
        decision = self.scheduler.report(trial, rung, metric, early_stopped)
        self.records[trial].epochs = self.rungs[rung] if early_stopped is None else early_stopped
        self._segment_ended(trial, stamp)
        self._event(stamp)
        return decision

    def fail(
        self, trial: int, error: str, log: str = "", epochs: int | None = None, now: float | None = None
    ) -> Decision:
        """``trial`` crashed: recorded as failed with ``error`` and its ``log``; its worker is free."""
        stamp = time.time() if now is None else now
        decision = self.scheduler.fail(trial, error)
        record = self.records[trial]
        record.error, record.log = error, log or record.log
        if epochs is not None:
            record.epochs = epochs
        self._segment_ended(trial, stamp)
        self._event(stamp)
        return decision

    def requeue(self, trial: int, reason: str, now: float | None = None) -> Decision:
        """``trial``'s segment must run again (its job vanished or was preempted before it
        reported): it is handed out first by the next :meth:`next_trials`."""
        stamp = time.time() if now is None else now
        decision = self.scheduler.requeue(trial, reason)
        self._segment_ended(trial, stamp)
        self._event(stamp)
        return decision

    def _segment_ended(self, trial: int, stamp: float) -> None:
        record = self.records[trial]
        if not math.isnan(record.started_at):
            record.busy_s += stamp - record.started_at
        record.ended_at = stamp

    def _event(self, stamp: float) -> None:
        """Time-stamp the new reports and decisions, and save."""
        self.report_at += [stamp] * (len(self.scheduler.reports) - len(self.report_at))
        self.decision_at += [stamp] * (len(self.scheduler.decisions) - len(self.decision_at))
        self.save(stamp)

    # -- sweep.h5 ----------------------------------------------------------------------------
    def to_file(self, now: float | None = None) -> SweepFile:
        """The state as :func:`~twinhpc.io.sweep.write_sweep` writes it."""
        stamp = self.updated_at if now is None else now
        n_rungs = len(self.rungs)
        metrics = [[math.nan] * n_rungs for _ in self.records]
        for r in self.scheduler.reports:
            metrics[r.trial][r.rung] = r.metric
        trials = [
            TrialRow(
                id=t.id,
                params=dict(rec.params),
                status=t.status,
                rung=t.reached,
                target=t.target,
                metric=metrics[t.id],
                epochs=rec.epochs,
                busy_s=rec.busy_s,
                started_at=rec.started_at,
                ended_at=rec.ended_at,
                job_id=rec.job_id,
                node=rec.node,
                log=rec.log,
                error=rec.error,
            )
            for t, rec in zip(self.scheduler.trials, self.records)
        ]
        return SweepFile(
            sweep=self.settings.to_dict(),
            job=self.job.to_dict(),
            params={p.key: p.column_type for p in self.settings.params},
            rungs=list(self.rungs),
            metric=self.metric,
            direction=self.direction,
            budget=self.scheduler.budget,
            workers=self.settings.concurrent,
            trials=trials,
            reports=[
                ReportRow(r.seq, r.trial, r.rung, self.rungs[r.rung], r.metric, at)
                for r, at in zip(self.scheduler.reports, self.report_at)
            ],
            decisions=[
                DecisionRow(d.seq, d.trial, d.rung, d.action, d.metric, d.rank, d.reports, d.keep, d.cut, d.note, at)
                for d, at in zip(self.scheduler.decisions, self.decision_at)
            ],
            queue=list(self.scheduler.queue),
            created_at=self.created_at,
            updated_at=stamp,
            first_start=self.first_start,
            busy_s=self.busy_s(stamp),
            utilisation=self.utilisation(stamp),
            executor=self.executor,
        )

    def save(self, now: float | None = None) -> None:
        """Write ``SWEEP/sweep.h5`` atomically (nothing for a sweep without a folder)."""
        self.updated_at = time.time() if now is None else now
        if self.path is not None:
            write_sweep(self.path, self.to_file(self.updated_at))
