"""The ``slurm`` sweep executor: trial segments as Slurm job arrays, through submitit.

Each segment is one Slurm job of ``nodes × ntasks_per_node`` tasks (the job's ``[slurm]``
table, :meth:`~twinhpc.config.slurm.SlurmConfig.submitit_parameters`, plus ``--requeue``), one
rank per task under submitit's ``srun`` (launcher ``"task"``, as ``twinhpc submit --executor
slurm``). :meth:`SlurmTrials.launch` submits its works as job arrays (submitit's
``executor.batch()``) with the throttle ``%N`` (``N`` = the sweep's ``concurrent``); submitit's
files (pickles, ``<id>_<task>_log.out/err``, results) go to ``SWEEP/executor/slurm``.

When there are more works than the site's ``MaxArraySize`` allows (``scontrol show config``,
read once per executor), they are split into several arrays (:func:`array_plan`). The throttle
holds for all of them together: the arrays form ``min(arrays, concurrent)`` *lanes* whose
throttles add up to ``concurrent``; an array waits (``--dependency=afterany``) for the one before
it in its lane. Everything lives in Slurm, so it holds when the driver is gone.

A refused ``sbatch`` raises :class:`~twinhpc.errors.TwinError` quoting sbatch; the arrays this
call submitted before it are cancelled, so nothing of the call stays queued.

Preemption and ``scontrol requeue`` follow :class:`~twinhpc.tune.submit.VerbCall`'s protocol: the
segment checkpoints and Slurm (or submitit) requeues it under the same job id; its restart
resumes from the checkpoint. Meanwhile :meth:`SlurmTrials.states` reports it ``pending``.
"""

from __future__ import annotations

import datetime
import math
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from ...config import Job
from ...errors import TwinError
from ..submit import make_executor, result_error, result_outcome, slurm_states
from ..sweep import TrialWork
from .base import Launched, SegmentState, TrialExecutor, executor_folder, segment_call

#: sacct/squeue states of a segment that waits for a start (again)
PENDING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "PREEMPTED",  # with --requeue, Slurm requeues a preempted job under the same id
    "CONFIGURING",
    "STOPPED",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
}
#: ... that runs
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
#: ... that ended without a result
FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE", "REVOKED"}


@dataclass(frozen=True)
class ArrayPlan:
    """One array of a launch: works ``[start, stop)``, its throttle, and the index of the array
    (in the same plan) it waits for, or ``None``."""

    start: int
    stop: int
    throttle: int
    after: int | None


def array_plan(n: int, max_array_size: int, concurrent: int) -> list[ArrayPlan]:
    """How ``n`` works go to Slurm: as few arrays as hold them with at most ``max_array_size``
    elements each (Slurm's ``MaxArraySize``: indices ``0 .. MaxArraySize-1``; 0 or 1: one job
    each), of sizes as even as can be, in
    ``min(arrays, concurrent)`` lanes whose throttles sum to ``concurrent``; each array after the
    first of its lane waits for the one before it (``afterany``)."""
    if n <= 0:
        return []
    arrays = -(-n // max(1, max_array_size))
    sizes = [n // arrays + (1 if j < n % arrays else 0) for j in range(arrays)]  # as even as can be
    bounds = [(sum(sizes[:j]), sum(sizes[: j + 1])) for j in range(arrays)]
    lanes = min(len(bounds), max(1, concurrent))
    throttles = [max(1, concurrent) // lanes + (1 if lane < max(1, concurrent) % lanes else 0) for lane in range(lanes)]
    return [
        ArrayPlan(start, stop, throttles[j % lanes], j - lanes if j >= lanes else None)
        for j, (start, stop) in enumerate(bounds)
    ]


def site_max_array_size() -> int:
    """The site's ``MaxArraySize`` (``scontrol show config``).

    Raises
    ------
    TwinError
        scontrol is missing, fails or does not say.
    """
    try:
        r = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise TwinError(
            f"--executor slurm: cannot ask Slurm for its MaxArraySize (scontrol show config: {e})"
        ) from None
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", r.stdout, re.MULTILINE)
    if r.returncode != 0 or m is None:
        raise TwinError(
            f"--executor slurm: scontrol show config does not give MaxArraySize "
            f"(exit status {r.returncode}): {r.stderr.strip() or r.stdout[-200:]}"
        )
    return int(m.group(1))


def _seconds(submitted: str, start: str) -> float | None:
    """Seconds from sacct's Submit to its Start (both ``YYYY-MM-DDTHH:MM:SS``), None before a start."""
    try:
        a = datetime.datetime.fromisoformat(submitted)
        b = datetime.datetime.fromisoformat(start)
    except ValueError:
        return None
    return (b - a).total_seconds()


class SlurmTrials(TrialExecutor):
    """Trial segments as Slurm job arrays (see the module's documentation).

    Job ids are submitit's: ``1234_5`` for element 5 of array 1234 (``1234`` for an array of
    one). Logs: ``SWEEP/executor/slurm/<id>_0_log.err`` (rank 0's; ``<id>_<rank>_log.*`` for
    the others).
    """

    name = "slurm"
    default_poll = 5.0  # one sacct call per poll: the controller and its database are shared
    #: seconds a job unknown to squeue and sacct still counts as running (:meth:`_unknown`)
    unknown_grace = 60.0

    def __init__(self, directory: Path, job: Job, concurrent: int) -> None:
        super().__init__(directory, job, concurrent)
        self.folder = executor_folder(self.directory, self.name)
        self._max_array_size: int | None = None
        self.unknown_since: dict[str, float] = {}  # job id -> first answer that knew nothing of it

    @property
    def max_array_size(self) -> int:
        """The site's ``MaxArraySize``, read once."""
        if self._max_array_size is None:
            self._max_array_size = site_max_array_size()
        return self._max_array_size

    def executor(self, plan: ArrayPlan, after: str | None) -> submitit.AutoExecutor:
        """submitit's executor for one array of a launch: the job's resources, ``--requeue``,
        the array's throttle and its dependency."""
        ex = make_executor("slurm", self.folder, self.job)
        additional = dict(ex._executor.parameters.get("additional_parameters") or {})
        if after is not None:
            additional["dependency"] = f"afterany:{after}"
        ex.update_parameters(slurm_array_parallelism=plan.throttle, slurm_additional_parameters=additional)
        return ex

    def sbatch_text(self, works: int, plan: ArrayPlan | None = None, after: str | None = None) -> str:
        """The batch script submitit hands to sbatch for an array of ``works`` segments (the
        first array of a launch unless ``plan`` is given); nothing is submitted."""
        plan = plan or ArrayPlan(0, works, self.concurrent, None)
        ex = self.executor(plan, after)
        ex._executor.parameters["map_count"] = works if works > 1 else None
        return str(ex._executor._make_submission_file_text("COMMAND", "UID"))

    def launch(self, works: Sequence[TrialWork]) -> list[Launched]:
        calls = [segment_call(w, self.ranks, "task") for w in works]
        submitted: list[str] = []
        jobs: list[Any] = []
        for plan in array_plan(len(works), self.max_array_size, self.concurrent):
            after = submitted[plan.after] if plan.after is not None else None
            ex = self.executor(plan, after)
            try:
                with ex.batch():
                    array = [ex.submit(call) for call in calls[plan.start : plan.stop]]
            except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as e:
                self.cancel(submitted)
                detail = str(getattr(e, "stderr", None) or e).strip()
                trials = ", ".join(str(w.trial) for w in works[plan.start : plan.stop])
                gone = f"; cancelled the {len(submitted)} array(s) submitted before it" if submitted else ""
                raise TwinError(
                    f"--executor slurm: sbatch refused the segments of trial(s) {trials}{gone}: {detail}"
                ) from None
            submitted.append(str(array[0].job_id).split("_")[0])
            jobs += array
        return [
            Launched(w.trial, str(j.job_id), str(self.log(str(j.job_id)))) for w, j in zip(works, jobs, strict=True)
        ]

    def log(self, job_id: str) -> Path:
        """Rank 0's log of a segment: submitit's ``<id>_0_log.err``."""
        return self.folder / f"{job_id}_0_log.err"

    def states(self, job_ids: Sequence[str]) -> dict[str, SegmentState]:
        rows = slurm_states(list(job_ids))
        return {j: self._state(j, rows.get(j)) for j in job_ids}

    def _state(self, job_id: str, row: dict[str, str] | None) -> SegmentState:
        log = str(self.log(job_id))
        result = self.folder / f"{job_id}_0_result.pkl"
        data = result.read_bytes() if result.is_file() else b""
        outcome = result_outcome(data) if data else None
        if row is None:
            return self._unknown(job_id, log, outcome, data, result)
        self.unknown_since.pop(job_id, None)
        state, node = row["state"], row["nodes"] if row["nodes"] not in ("None assigned", "(null)") else ""
        if state in PENDING:
            return SegmentState(job_id, "pending", node, log=log)
        if state in RUNNING:
            return SegmentState(job_id, "running", node, log=log)
        if state == "COMPLETED" and outcome == "success":
            return SegmentState(job_id, "done", node, log=log)
        why = f"Slurm {state}, exit code {row['exit_code'] or '?'}"
        if outcome == "error":
            why += f": {result_error(data) or 'an error (submitit result ' + str(result) + ')'}"
        elif state == "COMPLETED":
            why += f": no result from submitit ({result}); see the log"
        else:
            why += "; see the log"
        return SegmentState(job_id, "failed", node, error=why, log=log)

    def _unknown(self, job_id: str, log: str, outcome: str | None, data: bytes, result: Path) -> SegmentState:
        """A job neither ``squeue`` nor ``sacct`` lists. A job that has just ended can have left
        the controller's queue before accounting records its end (slurmdbd lags under load), so
        it counts as ``running`` for :attr:`unknown_grace` seconds from the first such answer,
        unless submitit's result file says it succeeded. Past the grace: a result file decides
        (an error fails the segment with it), else the job is ``gone``."""
        if outcome == "success":
            self.unknown_since.pop(job_id, None)
            return SegmentState(job_id, "done", log=log)
        first = self.unknown_since.setdefault(job_id, time.monotonic())
        if time.monotonic() - first < self.unknown_grace:
            return SegmentState(job_id, "running", log=log, error="in neither squeue nor sacct yet")
        if outcome == "error":
            error = result_error(data) or f"an error (submitit result {result})"
            return SegmentState(job_id, "failed", log=log, error=f"Slurm state unknown (not in sacct): {error}")
        return SegmentState(job_id, "gone", log=log, error="unknown to sacct and squeue")

    def queue_wait(self, job_ids: Sequence[str]) -> dict[str, float]:
        """Seconds from submission to the start of each segment that has started (sacct's Submit
        and Start; a requeued segment: its latest start), in one call. Segments that have not
        started are left out."""
        rows = slurm_states(list(job_ids))
        out = {}
        for j in job_ids:
            row = rows.get(j)
            wait = _seconds(row["submit"], row["start"]) if row else None
            if wait is not None and not math.isnan(wait):
                out[j] = wait
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)


EXECUTOR = SlurmTrials
