"""A small sweep driven by hand for the report and jobs tests: the real :class:`Sweep` and
sweep.h5, reports and failures given in a fixed order, and a real ``results.h5`` written with
:class:`~twinhpc.io.results.ResultsWriter` into each trial's run folder as its segments "train".

The trials' metrics are made up so that the outcome is known: ``accuracy(trial, epoch)`` rises
with the epoch from a level per trial; trial :data:`DIVERGES` reports NaN; trial :data:`FAILS`
reports the best metric of rung 0, is promoted, and crashes one epoch into its next segment.
The base job's ``train.epochs`` (10) is not the sweep's ``max_epochs`` (4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures import small_cnn_job
from twinhpc.config import load_job
from twinhpc.io.results import ResultsWriter
from twinhpc.tune import Sweep, TrialWork

#: each trial's level (accuracy at epoch 0); 6 trials
LEVEL = (0.40, 0.55, 0.30, 0.50, 0.58, 0.35)
DIVERGES = 2
FAILS = 4
ERROR = "twinhpc train ended with exit status 1 (CUDA error: out of memory)"

SWEEP = """
[sweep]
strategy = "random"
trials = 6
concurrent = 2
metric = "{metric}"
min_epochs = 1
reduction_factor = 2
max_epochs = 4
seed = 3

[sweep.space."optim.lr"]
loguniform = [1e-3, 3e-1]

[sweep.space."optim.schedule"]
choice = ["none", "cosine"]

[sweep.space."model.structure.hidden"]
int = [4, 16]
log = true
"""


def accuracy(trial: int, epoch: int) -> float:
    return math.nan if trial == DIVERGES else LEVEL[trial] + 0.05 * epoch


def metric_value(metric: str, trial: int, epoch: int) -> float:
    a = accuracy(trial, epoch)
    return a if metric == "val_accuracy" else 2.0 - a


def job_file(directory: Path, dataset: str, metric: str = "val_accuracy") -> Path:
    """A sweep job file (tiny CNN on ``dataset``) in ``directory``."""
    path = directory / "sweep.toml"
    path.write_text(small_cnn_job(dataset, 0.05, 'epochs = 10\nmetric = "accuracy"') + SWEEP.format(metric=metric))
    return path


def write_results(out: Path, job_json: str, trial: int, epochs: int) -> None:
    """The trial's results.h5 with ``epochs`` epochs of made-up metrics."""
    w = ResultsWriter(out, job_json, {"ranks": 1})
    for e in range(1, epochs + 1):
        a = accuracy(trial, e)
        w.append_epoch({"loss": 1.5 - a, "val_loss": 2.0 - a, "val_accuracy": a, "accuracy": a, "lr": 0.01})
    w.flush()


def drive(
    sweep: Sweep,
    metric: str = "val_accuracy",
    rounds: int | None = None,
    start: float = 1000.0,
    job_id: Callable[[int], str] = lambda trial: f"50{trial}",
    log: Callable[[TrialWork], str] = lambda work: str(work.out / "log"),
) -> float:
    """Run the sweep by hand: each round hands out work, starts it (``job_id(trial)``, node
    ``n1``, ``log(work)``), writes each trial's results and reports (or fails trial
    :data:`FAILS`). With ``rounds``, the work of round ``rounds`` is started and left running.
    Returns the clock."""
    clock = start
    done = 0
    while not sweep.finished:
        works = sweep.next_trials(now=clock)
        assert works, "the sweep handed out nothing while not finished"
        for w in works:
            clock += 1.0
            sweep.started(w.trial, job_id=job_id(w.trial), node="n1", log=log(w), now=clock)
        if rounds is not None and done == rounds:
            return clock
        for w in works:
            clock += 5.0
            if w.trial == FAILS and w.rung > 0:
                write_results(w.out, w.job.to_json(), w.trial, w.start_epochs + 1)
                sweep.fail(w.trial, ERROR, epochs=w.start_epochs + 1, now=clock)
            else:
                write_results(w.out, w.job.to_json(), w.trial, w.epochs)
                sweep.report(w.trial, w.rung, metric_value(metric, w.trial, w.epochs), now=clock)
        done += 1
    return clock


def build(
    directory: Path,
    dataset: str,
    metric: str = "val_accuracy",
    rounds: int | None = None,
    name: str = "sweep",
    start: float = 1000.0,
    **how: Any,
) -> Sweep:
    """A sweep in ``directory/name`` created at ``start`` and driven by :func:`drive` (``how``:
    its ``job_id`` and ``log``)."""
    job = load_job(job_file(directory, dataset, metric))
    sweep = Sweep.create(job, directory / name, now=start - 1.0)
    drive(sweep, metric, rounds, start, **how)
    return sweep
