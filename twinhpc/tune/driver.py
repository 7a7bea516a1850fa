"""The sweep's driver: it drives a :class:`~twinhpc.tune.sweep.Sweep` through a
:class:`~twinhpc.tune.executors.TrialExecutor` to the end.

::

    sweep = Sweep.load("sweeps/digits")
    executor = executors.make("local", sweep.directory, sweep.job, sweep.settings.concurrent)
    status = Driver(sweep, executor, poll=5).run()      # 0: finished

What it does, in order:

1. **Lock.** It holds ``SWEEP/driver.lock`` (``fcntl.flock``) for its whole life, the holder's
   host and pid written in it; a second driver on the same sweep is refused, naming the holder.
2. **Settle.** Trials that sweep.h5 says are ``running`` were launched by a driver that died.
   Their job ids go to :meth:`TrialExecutor.states` in one call: ``pending``/``running`` →
   watched like its own; ``done`` → the outcome is read from the trial's results.h5 and
   reported; ``failed`` → :meth:`Sweep.fail` with the error and the log; ``gone`` →
   :meth:`Sweep.requeue`: the segment runs again from the trial's newest checkpoint. A trial
   without a job id (the old driver died between handing it out and saving the job id) is
   first looked up in its ``OUT/segment.json`` (:func:`~twinhpc.tune.segments.handed_out_job`):
   a record of its current segment gives the job id, asked about with the others and saved;
   without one the segment never started and is requeued.
3. **Loop** until :attr:`Sweep.finished`: :meth:`Sweep.next_trials` (saved: the trials are
   ``running``) → :meth:`TrialExecutor.launch` → each job id to the trial's ``OUT/segment.json``
   → :meth:`Sweep.started` with each job id; then every ``poll`` seconds one batched
   :meth:`TrialExecutor.states` call for the watched segments, and for each that ended:
   report, fail or requeue. One line per event goes to stdout and ``SWEEP/driver.log``.

A launch the executor refuses (:class:`~twinhpc.errors.TwinError`) requeues the trials it held
and ends the driver with the executor's message: nothing looks running that is not. SIGTERM,
SIGINT or SIGHUP: nothing more is launched, running segments go on, and :meth:`Driver.run`
returns ``128 + signal`` saying that ``twinhpc sweep resume SWEEP`` continues the sweep.

Exactly once: a segment is launched only from :meth:`Sweep.next_trials`, which hands out a trial
that is not running, and every launched segment is watched until its state is final; the
trial's ``RUN/twinhpc.lock`` refuses a second training process on one run folder besides.

This module imports no executor (and neither torch nor submitit): ``twinhpc sweep status``
uses its lock and leaderboard helpers.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import TwinError
from ..io.results import read_results
from .asha import Decision
from .segments import SEGMENT_FILE, handed_out_job, write_segment_record
from .sweep import Sweep

if TYPE_CHECKING:
    from .executors.base import SegmentState, TrialExecutor

#: the driver's lock file and log, in the sweep's folder
DRIVER_LOCK = "driver.lock"
DRIVER_LOG = "driver.log"
#: the signals that stop a driver (it launches nothing more and leaves running segments running)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: the statuses of a trial that has ended
ENDED = ("completed", "failed", "stopped")


class DriverLocked(TwinError):
    """Another driver holds the sweep's ``driver.lock``."""


# -- the lock -----------------------------------------------------------------------------------
def _holder_text(path: Path) -> str:
    try:
        fields = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    except OSError:
        fields = {}
    if "pid" in fields:
        return f"pid {fields['pid']} on {fields.get('host', '?')}"
    return "a process that has not written its name yet"


class DriverLock:
    """``SWEEP/driver.lock``: an exclusive ``flock`` held for the driver's life, holding
    ``host NAME`` and ``pid N`` (the kernel releases it when the process ends, however)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / DRIVER_LOCK
        self.file: IO[str] | None = None

    def acquire(self, wait_s: float = 2.0) -> None:
        """Take the lock (waiting up to ``wait_s`` for a ``sweep status`` that peeks at it).

        Raises
        ------
        DriverLocked
            Naming the holder (host and pid) and the lock file.
        """
        f = open(self.path, "a+")  # noqa: SIM115 - held for the driver's life
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    raise DriverLocked(
                        f"{self.path.parent}: the sweep is driven by {_holder_text(self.path)} ({self.path}); "
                        f"one driver per sweep: wait for it, or stop it (kill its pid) and run "
                        f"`twinhpc sweep resume {self.path.parent}`"
                    ) from None
                time.sleep(0.1)
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()}\npid {os.getpid()}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


def lock_holder(directory: str | os.PathLike[str]) -> str | None:
    """Who drives the sweep in ``directory`` now (``"pid N on HOST"``), or ``None``: peeks with a
    shared ``flock`` that is released at once."""
    path = Path(directory) / DRIVER_LOCK
    try:
        f = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(path)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


# -- a segment's outcome --------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What a finished segment left in the trial's results.h5: the sweep's ``metric`` at the
    segment's last epoch (``epochs`` at most; NaN allowed: a diverged trial), the epochs
    recorded, and whether early stopping ended the run."""

    metric: float
    epochs: int
    early_stopped: bool


def segment_outcome(run: str | os.PathLike[str], metric: str, epochs: int) -> Outcome:
    """Read the outcome of a segment that trained ``run`` to epoch ``epochs``.

    Raises
    ------
    TwinError
        The run has no readable results.h5, or it does not record ``metric`` (naming both).
    """
    results = read_results(run)
    values = results["metrics"].get(metric)
    if values is None:
        raise TwinError(
            f"{Path(run) / 'results.h5'}: no metric {metric!r} per epoch (it records {', '.join(results['metrics'])})"
        )
    n = int(results["epochs"])
    early = any(a["reason"] == "early_stopped" for a in results["attempts"])
    at = min(n, epochs)
    return Outcome(float(values[at - 1]) if at > 0 else math.nan, n, early)


# -- leaderboard ----------------------------------------------------------------------------------
def ranked_trials(sweep: Sweep) -> list[tuple[int, int, float]]:
    """``(trial, rung, metric)`` of every trial that reported, best first: the highest rung
    reached first, then by its metric there in the sweep's direction (NaN last)."""
    sign = 1.0 if sweep.direction == "min" else -1.0
    out = []
    for t in sweep.scheduler.trials:
        if t.reached >= 0:
            metric = next(r.metric for r in reversed(sweep.scheduler.reports) if r.trial == t.id)
            out.append((t.id, t.reached, metric))
    return sorted(out, key=lambda x: (-x[1], math.isnan(x[2]), sign * x[2], x[0]))


def leader(sweep: Sweep) -> tuple[int, int, float] | None:
    """The best trial so far (:func:`ranked_trials`' first), or ``None``."""
    ranked = ranked_trials(sweep)
    return ranked[0] if ranked else None


def leaderboard(sweep: Sweep, top: int = 5) -> str:
    """The ``top`` trials (:func:`ranked_trials`) with their values and metric, and the best."""
    lines = [f"{'trial':>5}  {'status':<9} {'rung':>4} {'epochs':>6}  {sweep.metric:>12}  values"]
    for trial, rung, metric in ranked_trials(sweep)[:top]:
        rec = sweep.records[trial]
        values = ", ".join(f"{k}={v!r}" for k, v in rec.params.items())
        lines.append(f"{trial:>5}  {sweep.status(trial):<9} {rung:>4} {rec.epochs:>6}  {metric:>12.6g}  {values}")
    best = leader(sweep)
    if best is None:
        lines.append("best: none (no trial has reported)")
    else:
        trial, rung, metric = best
        lines.append(
            f"best: trial {trial} ({sweep.metric} {metric:.6g} at rung {rung}, {sweep.rungs[rung]} epochs; "
            f"run {sweep.trial_dir(trial)}): " + ", ".join(f"{k}={v!r}" for k, v in sweep.params(trial).items())
        )
    return "\n".join(lines)


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


# -- the driver -----------------------------------------------------------------------------------
class Driver:
    """Drives ``sweep`` through ``executor`` (see the module docstring).

    ``poll``: seconds between two :meth:`TrialExecutor.states` calls. ``echo``: print each line
    on stdout too. ``log``: also append each line to ``SWEEP/driver.log`` (off for a detached
    driver, whose stdout is that file). ``on_event``: called with each event's line (tests).
    """

    def __init__(
        self,
        sweep: Sweep,
        executor: TrialExecutor,
        *,
        poll: float = 5.0,
        echo: bool = True,
        log: bool = True,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if sweep.directory is None:
            raise TwinError("a sweep without a folder cannot be driven (Sweep.create(job, FOLDER))")
        self.sweep, self.executor, self.poll, self.echo = sweep, executor, poll, echo
        self.directory: Path = sweep.directory
        self.log_path = self.directory / DRIVER_LOG if log else None
        self.on_event = on_event
        self.watched: dict[int, str] = {}  # trial -> job id of its running segment
        self.printed = len(sweep.decisions)  # decisions before this are in an earlier log
        self.signal: int | None = None
        self.lock = DriverLock(self.directory)

    # -- output --
    def line(self, text: str, event: bool = False) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.echo:
            print(text, flush=True)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(f"{stamp} {text}\n")
        if event and self.on_event is not None:
            self.on_event(text)

    def progress(self) -> str:
        s = self.sweep
        ended = sum(1 for t in s.scheduler.trials if t.status in ENDED)
        best = leader(s)
        where = "" if best is None else f", best trial {best[0]} {s.metric} {best[2]:.6g} (rung {best[1]})"
        return f"[{ended}/{s.scheduler.budget} finished{where}]"

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the driver to stop as on ``signum``: nothing more is launched."""
        self.signal = signum

    # -- the run --
    def run(self) -> int:
        """Drive the sweep to its end: 0 when it is finished, ``128 + signal`` when a signal
        stopped the driver (the sweep goes on with ``twinhpc sweep resume``).

        Raises
        ------
        DriverLocked
            Another driver holds the sweep.
        TwinError
            The executor refused a launch (its message; the trials are queued again).
        """
        self.lock.acquire()
        try:
            with self._signals():
                s = self.sweep
                self.line(
                    f"driver pid {os.getpid()} on {socket.gethostname()}: sweep {self.directory}, executor "
                    f"{self.executor.name}, {s.scheduler.budget} trials, rungs {list(s.rungs)} epochs, "
                    f"{s.settings.concurrent} at once"
                )
                self.settle()
                while not s.finished and self.signal is None:
                    self.launch()
                    if s.finished or self.signal is not None:
                        break
                    if not self.watched:
                        raise TwinError(
                            f"{self.directory}: nothing runs and nothing can be started, yet the sweep is not finished"
                        )
                    self.wait()
                    self.check()
                if s.finished:
                    self.line(f"sweep finished {self.progress()}")
                    return 0
                assert self.signal is not None
                name = signal.Signals(self.signal).name
                self.line(
                    f"{name}: the driver stops; {len(self.watched)} segment(s) left running "
                    f"(trials {sorted(self.watched)}). `twinhpc sweep resume {self.directory}` continues the sweep"
                )
                return 128 + self.signal
        finally:
            self.executor.close()
            self.lock.release()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: Any) -> None:  # only records
            self.signal = signum

        previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self) -> None:
        """Sleep ``poll`` seconds, waking early on a stop signal."""
        end = time.monotonic() + self.poll
        while self.signal is None and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def settle(self) -> None:
        """Find out what became of the trials a dead driver left ``running`` (module docstring)."""
        s = self.sweep
        running = [t.id for t in s.scheduler.trials if t.status == "running"]
        if not running:
            return
        ids = {t: s.records[t].job_id for t in running}
        adopted = {}  # trial -> the job id its OUT/segment.json records for its current segment
        for t in running:
            target = s.scheduler.trials[t].target
            found = None if ids[t] else handed_out_job(s.trial_dir(t), t, target, s.rungs[target])
            if found:
                adopted[t] = ids[t] = found
        asked = [j for j in ids.values() if j]
        states = self.executor.states(asked) if asked else {}
        listed = ", ".join(
            f"{t} (job {ids[t] or 'none'}{', from its ' + SEGMENT_FILE if t in adopted else ''})" for t in running
        )
        self.line(f"settling {len(running)} trial(s) left running: {listed}")
        for t in running:
            if not ids[t]:
                self.requeue(
                    t,
                    f"no job id, and no segment of it recorded one in {s.trial_dir(t) / SEGMENT_FILE}: the driver "
                    "that handed it out ended before an executor took it",
                )
                continue
            state = states.get(ids[t]) or self._gone(ids[t])
            if t in adopted:  # the job id the dead driver did not save
                s.started(t, job_id=ids[t], node=state.node, log=state.log)
            self.handle(t, state)

    def launch(self) -> None:
        """Hand every free worker a segment (:meth:`Sweep.next_trials`) and launch them."""
        works = self.sweep.next_trials()
        self.side_decisions()
        if not works:
            return
        try:
            launched = self.executor.launch(works)
        except TwinError as e:
            for w in works:
                self.requeue(w.trial, f"launch refused by {self.executor.name}: {e}")
            raise TwinError(
                f"executor {self.executor.name} refused to launch trials {[w.trial for w in works]}: {e}. "
                f"They are queued again; `twinhpc sweep resume {self.directory}` continues the sweep"
            ) from None
        for w, got in zip(works, launched, strict=True):  # first, as fast as can be: each job id beside its run
            try:
                write_segment_record(w.out, got.job_id, w.trial, w.rung, w.epochs, by="driver")
            except TwinError as e:  # the segment records it too, when it starts
                self.line(f"trial {w.trial}: {e}")
        for w, got in zip(works, launched, strict=True):
            self.sweep.started(got.trial, job_id=got.job_id, node=got.node, log=got.log)
            self.watched[got.trial] = got.job_id
            how = "resumes from epoch " + str(w.start_epochs) if w.start_epochs else "starts"
            self.line(
                f"trial {w.trial} rung {w.rung} ({_epochs(w.epochs)}): launched job {got.job_id}, {how} "
                f"[{', '.join(f'{k}={v!r}' for k, v in w.params.items())}] log {got.log}",
                event=True,
            )

    def check(self) -> None:
        """One batched state call for the watched segments; act on those that ended."""
        if not self.watched:
            return
        states = self.executor.states(list(self.watched.values()))
        for trial, job_id in list(self.watched.items()):
            state = states.get(job_id) or self._gone(job_id)
            if state.state not in ("pending", "running"):
                self.handle(trial, state)

    def _gone(self, job_id: str) -> SegmentState:
        from .executors.base import SegmentState

        return SegmentState(job_id, "gone", error="the executor did not answer for it")

    def handle(self, trial: int, state: SegmentState) -> None:
        """Act on a segment's state: watch, report, fail or requeue."""
        s = self.sweep
        if state.state in ("pending", "running"):
            self.watched[trial] = state.job_id
            return
        self.watched.pop(trial, None)
        log = state.log or s.records[trial].log
        if state.state == "done":
            self.done(trial, log)
        elif state.state == "failed":
            self.fail(trial, state.error or "the segment failed", log)
        else:
            self.requeue(trial, f"job {state.job_id} is gone ({state.error or 'the executor knows nothing of it'})")

    def done(self, trial: int, log: str) -> None:
        s = self.sweep
        rung = s.scheduler.trials[trial].target
        epochs = s.rungs[rung]
        try:
            o = segment_outcome(s.trial_dir(trial), s.metric, epochs)
        except TwinError as e:
            self.fail(trial, f"the segment ended but its outcome cannot be read: {e}", log)
            return
        if o.epochs >= epochs and not (o.early_stopped and o.epochs == epochs and rung != s.scheduler.last):
            d = s.report(trial, rung, o.metric)
        elif o.early_stopped:
            d = s.report(trial, rung, o.metric, early_stopped=o.epochs)
        else:
            self.fail(
                trial,
                f"the segment to epoch {epochs} ended at epoch {o.epochs} without early stopping "
                f"({s.trial_dir(trial) / 'results.h5'})",
                log,
            )
            return
        self.decided(d, f"{s.metric} {o.metric:.6g} at epoch {min(o.epochs, epochs)}")

    def fail(self, trial: int, error: str, log: str) -> None:
        d = self.sweep.fail(trial, error, log=log)
        self.decided(d, f"log {log}" if log else "")

    def requeue(self, trial: int, reason: str) -> None:
        self.watched.pop(trial, None)
        self.decided(self.sweep.requeue(trial, reason), "")

    def decided(self, d: Decision, what: str) -> None:
        """One line for decision ``d`` (``what``: the values that led to it), then the decisions
        it brought with it (trials stopped at the end of the budget)."""
        self.line(
            f"trial {d.trial} {self._where(d)}: {what + ' → ' if what else ''}{d.action}: {d.note} {self.progress()}",
            event=True,
        )
        self.printed = max(self.printed, d.seq + 1)
        self.side_decisions()

    def side_decisions(self) -> None:
        """Lines for the decisions not printed yet (``stop``, ``fail`` of an invalid trial job)."""
        for d in self.sweep.decisions[self.printed :]:
            if d.action in ("stop", "fail"):
                self.line(f"trial {d.trial} {self._where(d)}: {d.action}: {d.note}", event=True)
        self.printed = len(self.sweep.decisions)

    def _where(self, d: Decision) -> str:
        return f"rung {d.rung} ({_epochs(self.sweep.rungs[d.rung])})" if d.rung >= 0 else "no rung"
