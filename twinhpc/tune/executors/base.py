"""What every sweep executor offers the sweep's driver (:mod:`twinhpc.tune.driver`).

An executor runs trial *segments*: a :class:`~twinhpc.tune.sweep.TrialWork` is "train this
trial's job into ``work.out`` (resuming from its newest checkpoint, if any) until epoch
``work.epochs``". Each segment is one ``twinhpc train TRIAL_JOB --out OUT --resume
--until-epoch E`` (:func:`segment_call`), started by the executor's launcher: ``mpirun -n N``
(local, Dask), ``srun`` through submitit (Slurm), or in this process (debug).

The driver never asks an executor for a result object: it asks for the *state* of the
segments it launched, by job id, in one batched call (:meth:`TrialExecutor.states`), and reads
the metric from the trial's ``results.h5`` itself once a segment is ``done``. So a new driver
(``twinhpc sweep resume``) can settle the segments an old, dead driver launched from their job
ids alone, which sweep.h5 holds.
"""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...config import Job
from ...io.atomic import replace_durably
from ..submit import VerbCall
from ..sweep import TrialWork

#: a segment's states, as :meth:`TrialExecutor.states` reports them
#: - ``pending``: submitted, not started (Slurm PENDING, a Dask task waiting for a worker)
#: - ``running``: started
#: - ``done``: the segment's command exited 0 (the trial's results.h5 holds epoch ``work.epochs``,
#:   or fewer epochs when early stopping ended the run)
#: - ``failed``: it exited non-zero, or Slurm ended it FAILED/TIMEOUT/OUT_OF_MEMORY/...: ``error``
#:   says why, ``log`` where its output is
#: - ``gone``: the executor knows nothing of that job id (its process or Slurm job vanished
#:   without a result, e.g. the node rebooted): the driver requeues the segment
SEGMENT_STATES = ("pending", "running", "done", "failed", "gone")

#: the file a trial's job is written to, inside the trial's run folder
TRIAL_JOB_FILE = "trial.job.toml"


@dataclass(frozen=True)
class Launched:
    """A segment handed to an executor: the trial, the executor's job id for it (what
    :meth:`TrialExecutor.states` takes; stored in sweep.h5's ``job_id``), its log file and,
    when the executor knows it at launch, the node it runs on."""

    trial: int
    job_id: str
    log: str
    node: str = ""


@dataclass(frozen=True)
class SegmentState:
    """The state of a launched segment (one of :data:`SEGMENT_STATES`), where it runs or ran
    (``node``), why it failed (``error``) and its log."""

    job_id: str
    state: str
    node: str = ""
    error: str = ""
    log: str = ""


class TrialExecutor(abc.ABC):
    """Runs trial segments; one per sweep driver.

    ``directory``: the sweep's folder (executors keep their own files under
    ``SWEEP/executor/``); ``job``: the sweep's base job (its ``[slurm]`` table sets each
    segment's resources: ``nodes × ntasks_per_node`` ranks); ``concurrent``: at most that many
    segments run at once.
    """

    #: the name ``--executor`` takes
    name: str = ""
    #: seconds between two :meth:`states` calls when ``--poll`` is not given: short where asking
    #: costs nothing (files, futures), longer where it queries a shared service (``sacct``)
    default_poll: float = 1.0

    def __init__(self, directory: Path, job: Job, concurrent: int) -> None:
        self.directory = Path(directory)
        self.job = job
        self.concurrent = concurrent
        self.ranks = job.slurm.nodes * job.slurm.ntasks_per_node

    @abc.abstractmethod
    def launch(self, works: Sequence[TrialWork]) -> list[Launched]:
        """Start (or queue) a segment for each of ``works``, in order; one :class:`Launched` each.

        Raises
        ------
        TwinError
            The submission was refused (``sbatch`` said no, the scheduler is unreachable): the
            message names the executor and says why. Nothing of ``works`` runs then.
        """

    @abc.abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, SegmentState]:
        """The state of every job id in ``job_ids`` (each a key of the answer), asked in one
        batched call (one ``sacct`` on Slurm), never one call per job. Must work for job ids
        launched by another executor object of the same kind (a driver that died)."""

    def cancel(self, job_ids: Sequence[str]) -> None:  # noqa: B027 - optional
        """Stop these segments (the trials' checkpoints stay); nothing by default."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the executor holds (a Dask client ...); running segments go on."""


def write_trial_job(work: TrialWork) -> Path:
    """``work.job`` as a job file in the trial's folder (``OUT/trial.job.toml``), atomically:
    what every segment of the trial runs."""
    out = Path(work.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TRIAL_JOB_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"# sweep trial {work.trial}: {work.params}\n" + work.job.to_toml())
    replace_durably(tmp, path)
    return path


def segment_call(work: TrialWork, ranks: int, launcher: str, python: str | None = None) -> VerbCall:
    """The callable (submitit's, or run directly) that trains ``work``'s segment:
    ``twinhpc train OUT/trial.job.toml --out OUT --resume --until-epoch E`` (``--resume`` from
    scratch when the trial has no checkpoint yet), launched by ``launcher`` (``"task"``,
    ``"mpirun"`` or ``"inprocess"``, as :class:`~twinhpc.tune.submit.VerbCall`). Under
    submitit it records its job id in ``OUT/segment.json`` when it starts
    (:mod:`twinhpc.tune.segments`)."""
    job_file = write_trial_job(work)
    return VerbCall(
        "train",
        str(job_file),
        str(work.out),
        ranks,
        launcher,
        ("--until-epoch", str(work.epochs)),
        resume=True,
        python=python if python is not None else sys.executable,
        segment=(work.trial, work.rung, work.epochs),
    )


def executor_folder(directory: Path, name: str) -> Path:
    """``SWEEP/executor/<name>``: where an executor keeps its files (submitit's pickles, logs)."""
    path = Path(directory) / "executor" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment (for tests and sites), ``default`` when unset."""
    value = os.environ.get(name)
    return int(value) if value else default
