"""Asynchronous successive halving (ASHA, Li et al. 2018) with promotion by resume.

Pure Python: no I/O, no clock, no randomness; the same calls in the same order give the same
decisions. :class:`twinhpc.tune.Sweep` drives it and stores its state in sweep.h5.

Rungs are epochs: ``min_epochs · η^k`` for every k where that is below ``max_epochs``, then
``max_epochs`` itself (:func:`rungs`). A trial trains in segments, each ending at a rung, where
it reports its metric; a promoted trial's next segment resumes from the checkpoint that ended
the last one. The rules:

- **At a report** at rung k (not the last): the trial is promoted to rung k+1 iff it is among the
  top ``⌊n/η⌋`` of the ``n`` reports at rung k so far (itself included); otherwise it is paused.
  At the last rung the trial is completed.
- **When a worker is free** (:meth:`ASHA.next`): first the trials promoted at a report (in the
  order of their promotions), then paused trials that have since entered the top ``⌊n/η⌋`` of
  their rung because more reports arrived there (highest rung first, best first: Li et al.'s
  ``get_job``), then new trials at rung 0 while fewer than ``budget`` have started.
- **Ranking**: by the metric in the sweep's direction; a NaN metric ranks below every number;
  equal metrics rank by the order of their reports (the earlier first).
- **An early-stopped trial** (early stopping ended its run at epoch e, at or before the end of
  its segment) reports at the rung its segment ends at, with the metric of its last epoch, and
  is completed there (it cannot train on): its report counts at that rung for the others'
  ranks; the decision ``complete`` says at which epoch early stopping ended it.
- **A failed trial** frees its worker; its reports at lower rungs keep counting for the others'
  ranks. It counts against the budget.
- **End of the budget**: once every trial has started, none is queued or running and no paused
  trial is promotable, no report can ever promote one: the paused trials are stopped.

Every call that changes a trial's status appends a :class:`Decision` that records the values it
compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import TwinError

#: a trial's statuses: waiting for a worker, on a worker, waiting for better results at its rung,
#: finished at the last rung, crashed, stopped at the end of the budget
STATUSES = ("queued", "running", "paused", "completed", "failed", "stopped")
#: the actions of a decision
ACTIONS = ("start", "promote", "pause", "complete", "stop", "fail", "requeue")


class TuneError(TwinError):
    """A sweep was told something impossible (a report from a trial that is not running ...)."""


def rungs(min_epochs: int, eta: int, max_epochs: int) -> tuple[int, ...]:
    """The rungs' epochs: ``min_epochs · η^k`` below ``max_epochs``, then ``max_epochs``.

    ``rungs(1, 3, 9) == (1, 3, 9)``; ``rungs(1, 3, 10) == (1, 3, 9, 10)``; ``rungs(10, 3, 10)
    == (10,)`` (one rung: every trial trains ``max_epochs``, as with ``scheduler = "none"``).
    """
    if min_epochs < 1 or eta < 2 or max_epochs < min_epochs:
        raise ValueError(f"rungs({min_epochs}, {eta}, {max_epochs}): need 1 ≤ min ≤ max and η ≥ 2")
    out = []
    r = min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    out.append(max_epochs)
    return tuple(out)


@dataclass(frozen=True)
class Step:
    """A segment of work for a free worker: train ``trial`` from ``start_epochs`` (0: from
    scratch; else resume from the checkpoint written at that epoch) to ``epochs``, then report at
    ``rung``."""

    trial: int
    rung: int
    epochs: int
    start_epochs: int


@dataclass(frozen=True)
class Report:
    """A trial's metric at a rung; ``seq`` is its place among all reports (it breaks ties)."""

    seq: int
    trial: int
    rung: int
    metric: float


@dataclass(frozen=True)
class Decision:
    """One decision and the values it compared.

    Attributes
    ----------
    seq : its place in the decision log.
    trial, rung : the trial and the rung the decision is about (for ``start``: rung 0).
    action : one of :data:`ACTIONS`.
    metric : the trial's metric at ``rung`` (NaN where none was compared).
    rank : its rank at the rung, 1 = best (0 where none was compared).
    reports : the reports at the rung when it was decided.
    keep : ``⌊reports/η⌋``, how many of them go on.
    cut : the metric of the last of those that go on (NaN when ``keep`` is 0).
    note : the decision in words.
    """

    seq: int
    trial: int
    rung: int
    action: str
    metric: float = math.nan
    rank: int = 0
    reports: int = 0
    keep: int = 0
    cut: float = math.nan
    note: str = ""


@dataclass
class TrialState:
    """Where a trial stands: ``status`` (one of :data:`STATUSES`), ``target`` the rung its
    current or next segment ends at (-1: none), ``reached`` the highest rung it reported at
    (-1: none)."""

    id: int
    status: str
    target: int = 0
    reached: int = -1


@dataclass
class ASHA:
    """The scheduler: rungs (epochs, ascending; the last is completion), η, the direction
    (``"min"`` or ``"max"``) and the budget (trials started in all).

    The state (:attr:`trials`, :attr:`reports`, :attr:`decisions`, :attr:`queue`) is plain data:
    :class:`~twinhpc.tune.Sweep` saves it and builds an equal scheduler from it.
    """

    rungs: tuple[int, ...]
    eta: int
    direction: str
    budget: int
    trials: list[TrialState] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: trials promoted at a report, waiting for a worker, in the order of their promotion
    queue: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.direction not in ("min", "max"):
            raise ValueError(f"direction must be 'min' or 'max', got {self.direction!r}")
        if self.eta < 2 or self.budget < 1 or not self.rungs or list(self.rungs) != sorted(set(self.rungs)):
            raise ValueError(f"need η ≥ 2, budget ≥ 1 and ascending rungs, got {self.eta}, {self.budget}, {self.rungs}")

    # -- queries ---------------------------------------------------------------------------
    @property
    def last(self) -> int:
        """The index of the last rung (completion)."""
        return len(self.rungs) - 1

    def at_rung(self, rung: int) -> list[Report]:
        """The reports at ``rung``, best first (see the module docstring for ties and NaN)."""
        sign = 1.0 if self.direction == "min" else -1.0
        reports = [r for r in self.reports if r.rung == rung]
        return sorted(reports, key=lambda r: (math.isnan(r.metric), sign * r.metric, r.seq))

    def active(self) -> list[int]:
        """Trials queued or running."""
        return [t.id for t in self.trials if t.status in ("queued", "running")]

    def running(self) -> list[int]:
        return [t.id for t in self.trials if t.status == "running"]

    def promotable(self) -> list[tuple[int, int]]:
        """``(trial, rung)`` of the paused trials now in the top ``⌊n/η⌋`` of their rung, in the
        order :meth:`next` promotes them: highest rung first, best first."""
        out = []
        for rung in range(self.last - 1, -1, -1):
            ranked = self.at_rung(rung)
            for r in ranked[: len(ranked) // self.eta]:
                if self.trials[r.trial].status == "paused" and self.trials[r.trial].reached == rung:
                    out.append((r.trial, rung))
        return out

    @property
    def finished(self) -> bool:
        """Every trial of the budget has started and ended (completed, failed or stopped)."""
        return len(self.trials) >= self.budget and all(
            t.status in ("completed", "failed", "stopped") for t in self.trials
        )

    # -- events ----------------------------------------------------------------------------
    def next(self, free: int) -> list[Step]:
        """Up to ``free`` steps for free workers (see the module docstring); each trial handed out
        is ``running``. Ends the sweep (:meth:`_finish_if_done`) when nothing is left to run."""
        steps: list[Step] = []
        while len(steps) < free and self.queue:
            steps.append(self._dispatch(self.queue.pop(0)))
        while len(steps) < free:
            candidates = self.promotable()
            if not candidates:
                break
            trial, rung = candidates[0]
            self._rank_decision(trial, rung, "promote", "paused, now")
            self.trials[trial].target = rung + 1
            steps.append(self._dispatch(trial))
        while len(steps) < free and len(self.trials) < self.budget:
            trial = len(self.trials)
            self.trials.append(TrialState(trial, "queued", target=0))
            self._log(trial, 0, "start", note=f"new trial {trial + 1} of {self.budget}")
            steps.append(self._dispatch(trial))
        self._finish_if_done()
        return steps

    def report(self, trial: int, rung: int, metric: float, early_stopped: int | None = None) -> Decision:
        """``trial`` reached ``rung`` with ``metric``: promote, pause or complete it.
        ``early_stopped``: the epoch at which early stopping ended the trial's run (at or before
        the rung's epochs): the report counts at ``rung`` and the trial is completed there.

        Raises
        ------
        TuneError
            The trial is not running, or ``rung`` is not the rung its segment ends at.
        """
        t = self.state_of(trial)
        if t.status != "running":
            raise TuneError(f"trial {trial} reported at rung {rung} but is {t.status}, not running")
        if rung != t.target:
            raise TuneError(f"trial {trial} reported at rung {rung}, but its segment ends at rung {t.target}")
        self.reports.append(Report(len(self.reports), trial, rung, float(metric)))
        t.reached = rung
        if early_stopped is not None:
            t.status, t.target = "completed", -1
            decision = self._rank_decision(trial, rung, "complete", "", early_stopped)
        elif rung == self.last:
            t.status, t.target = "completed", -1
            decision = self._rank_decision(trial, rung, "complete", "")
        elif self._in_top(trial, rung):
            t.status, t.target = "queued", rung + 1
            self.queue.append(trial)
            decision = self._rank_decision(trial, rung, "promote", "")
        else:
            t.status, t.target = "paused", -1
            decision = self._rank_decision(trial, rung, "pause", "")
        self._finish_if_done()
        return decision

    def fail(self, trial: int, error: str) -> Decision:
        """``trial`` crashed (or its job could not be built): it is failed, its worker free.

        Raises
        ------
        TuneError
            The trial is not queued or running.
        """
        t = self.state_of(trial)
        if t.status not in ("queued", "running"):
            raise TuneError(f"trial {trial} failed but is {t.status}, not queued or running")
        rung = t.target
        t.status, t.target = "failed", -1
        if trial in self.queue:
            self.queue.remove(trial)
        decision = self._log(trial, rung, "fail", note=error)
        self._finish_if_done()
        return decision

    def requeue(self, trial: int, reason: str) -> Decision:
        """A running trial's segment must run again (its job vanished or was preempted before it
        reported): it is queued first, to resume from its last checkpoint.

        Raises
        ------
        TuneError
            The trial is not running.
        """
        t = self.state_of(trial)
        if t.status != "running":
            raise TuneError(f"trial {trial} cannot be requeued: it is {t.status}, not running")
        t.status = "queued"
        self.queue.insert(0, trial)
        return self._log(trial, t.target, "requeue", note=reason)

    # -- internals -------------------------------------------------------------------------
    def state_of(self, trial: int) -> TrialState:
        """The state of ``trial``; :class:`TuneError` for a trial the sweep does not have."""
        if not 0 <= trial < len(self.trials):
            raise TuneError(f"no trial {trial} (the sweep has {len(self.trials)})")
        return self.trials[trial]

    def step(self, trial: int) -> Step:
        """The segment ``trial`` runs (or would run) next: to its ``target`` rung."""
        t = self.trials[trial]
        return Step(trial, t.target, self.rungs[t.target], self.rungs[t.target - 1] if t.target > 0 else 0)

    def _dispatch(self, trial: int) -> Step:
        self.trials[trial].status = "running"
        return self.step(trial)

    def _in_top(self, trial: int, rung: int) -> bool:
        ranked = self.at_rung(rung)
        return any(r.trial == trial for r in ranked[: len(ranked) // self.eta])

    def _log(self, trial: int, rung: int, action: str, **values: float | int | str) -> Decision:
        decision = Decision(len(self.decisions), trial, rung, action, **values)  # type: ignore[arg-type]
        self.decisions.append(decision)
        return decision

    def _rank_decision(
        self, trial: int, rung: int, action: str, prefix: str, early_stopped: int | None = None
    ) -> Decision:
        """Log ``action`` for ``trial`` at ``rung`` with its rank among the rung's reports
        (``early_stopped``: the epoch at which early stopping ended the trial)."""
        ranked = self.at_rung(rung)
        rank = next(i for i, r in enumerate(ranked, start=1) if r.trial == trial)
        metric = ranked[rank - 1].metric
        n = len(ranked)
        where = f"rung {rung} ({_epochs(self.rungs[rung])})"
        if action == "complete" and early_stopped is not None:
            note = f"early stopping ended it at epoch {early_stopped}: completed at {where}, rank {rank} of {n}"
            return self._log(trial, rung, action, metric=metric, rank=rank, reports=n, note=note)
        if action == "complete":
            return self._log(
                trial, rung, action, metric=metric, rank=rank, reports=n, note=f"rank {rank} of {n} at the last {where}"
            )
        keep = n // self.eta
        cut = ranked[keep - 1].metric if keep else math.nan
        top = f"top {keep} of {n} at {where}" + (f", cut {cut:.6g} ({self.direction})" if keep else "")
        text = {
            "promote": f"rank {rank}, in the {top}: continues to {_epochs(self.rungs[rung + 1])}",
            "pause": f"rank {rank}, not in the {top}: paused",
            "stop": f"end of budget: rank {rank}, not in the {top}: stopped",
        }[action]
        return self._log(
            trial,
            rung,
            action,
            metric=metric,
            rank=rank,
            reports=n,
            keep=keep,
            cut=cut,
            note=f"{prefix} {text}".strip(),
        )

    def _finish_if_done(self) -> None:
        """Stop the paused trials once no report can come that would promote one."""
        if len(self.trials) < self.budget or self.active() or self.promotable():
            return
        for t in self.trials:
            if t.status == "paused":
                t.status = "stopped"
                self._rank_decision(t.id, t.reached, "stop", "")


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def decisions_text(decisions: Sequence[Decision]) -> str:
    """The decision log, one line per decision: ``#seq trial T rung R action: note``."""
    return "\n".join(f"#{d.seq} trial {d.trial} rung {d.rung} {d.action}: {d.note}" for d in decisions)
