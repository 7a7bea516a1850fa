"""The ``dask`` sweep executor: trial segments as tasks of a ``dask.distributed`` cluster.

``address`` chooses the cluster:

- ``None``: a ``LocalCluster`` in the driver's process of ``concurrent`` worker processes of one
  thread each (so at most ``concurrent`` segments run at once);
- ``"slurm"``: a ``dask_jobqueue.SLURMCluster`` whose every worker is one Slurm job sized from
  the job's ``[slurm]`` table (``nodes × ntasks_per_node`` tasks of ``cpus_per_task`` CPUs, its
  partition, account, QOS, time limit ...), scaled to ``concurrent`` workers, each running one
  segment at a time;
- a scheduler address (``tcp://host:8786``): that cluster's workers; how many segments run at
  once is its number of worker threads.

A Dask worker is not an MPI rank: each segment is a task (:func:`run_segment`) that starts the
segment's command (:func:`~twinhpc.tune.executors.base.segment_call`) as its own process —
``mpirun -n N`` for N > 1 ranks, or ``srun --ntasks N`` when the worker itself runs inside a Slurm
allocation (``SLURM_JOB_ID`` set, as under ``"slurm"``) — writes its output to
``SWEEP/executor/dask/<trial>-<n>.log`` and returns its exit status; before the command it records
its key in ``OUT/segment.json`` (:mod:`twinhpc.tune.segments`). The segment's process gets
SIGUSR2 when the worker's task thread dies (``PR_SET_PDEATHSIG``): the training checkpoints and
exits 255, so a segment whose worker is gone does not train on unseen.

Job ids are the futures' keys. :meth:`DaskTrials.states` reads the futures this object holds;
a key it does not hold (launched by a driver that died) is ``gone``, and the driver runs that
segment again from the trial's checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import Job
from ...env import launch_environ
from ...errors import TwinError
from ...signals import REQUEUE_EXIT_STATUS
from ..segments import write_segment_record
from ..sweep import TrialWork
from .base import Launched, SegmentState, TrialExecutor, executor_folder, segment_call

#: the resource each Dask worker of ``address="slurm"`` offers once (one segment at a time)
SEGMENT_RESOURCE = "twinhpc_segment"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGUSR2 to this process when the thread that started it ends (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGUSR2)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launcher_prefix(ranks: int, environ: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    """How a worker starts a segment of ``ranks`` ranks: nothing for one rank, ``srun -n N``
    inside a Slurm allocation, else ``mpirun -n N``."""
    env = os.environ if environ is None else environ
    if ranks <= 1:
        return []
    if env.get("SLURM_JOB_ID"):
        return ["srun", "--ntasks", str(ranks), "--kill-on-bad-exit=1"]
    return ["mpirun", "-n", str(ranks)]


def run_segment(
    command: list[str], ranks: int, log: str, record: tuple[str, str, int, int, int] | None = None
) -> dict[str, Any]:
    """On a Dask worker: run one segment's command (with its launcher), output to ``log``;
    returns its exit status, the log and the worker's host. ``record``: ``(OUT, key, trial,
    rung, epochs)``, written to ``OUT/segment.json`` first (:mod:`twinhpc.tune.segments`)."""
    if record is not None:
        out, key, trial, rung, epochs = record
        write_segment_record(out, key, trial, rung, epochs, by="segment")
    cmd = launcher_prefix(ranks) + command
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        status = subprocess.call(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=launch_environ(), preexec_fn=_die_with_parent
        )
    return {"status": status, "log": log, "node": socket.gethostname()}


def _executing(dask_worker: Any) -> list[str]:
    """On each worker (``Client.run``): the keys of the tasks it executes now."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _error_line(log: str) -> str:
    """What a failing segment said last: the log's last line with ``error`` in it (a twinhpc
    command's ``twinhpc train: error: ...``; mpirun's own banner after it is skipped), else its
    last line of text; read from the log's last 16 KiB."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line.strip("-= ")]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1]


def slurm_cluster(job: Job, concurrent: int, folder: Path) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` whose workers are Slurm jobs sized from ``job``'s
    ``[slurm]`` table, each offering one segment at a time; not yet scaled."""
    from dask_jobqueue import SLURMCluster

    s = job.slurm
    ranks = s.nodes * s.ntasks_per_node
    directives = [f"--nodes={s.nodes}", f"--ntasks-per-node={s.ntasks_per_node}", "--requeue"]
    directives += [f"--gpus-per-node={s.gpus_per_node}"] if s.gpus_per_node else []
    directives += [f"--constraint={s.constraint}"] if s.constraint else []
    directives += [f"--qos={s.qos}"] if s.qos else []  # dask_jobqueue's SLURMCluster has no qos argument
    directives += [f"--{k}={v}" for k, v in s.additional.items()]
    hours, minutes = divmod(s.minutes, 60)
    return SLURMCluster(
        queue=s.partition,
        account=s.account,
        cores=ranks * s.cpus_per_task,
        processes=1,
        memory=f"{s.mem_gb or 1}GB",
        job_cpu=s.cpus_per_task,
        walltime=f"{hours:02d}:{minutes:02d}:00",
        job_name=s.job_name or "twinhpc-dask",
        job_extra_directives=directives,
        job_directives_skip=["--mem", "-n 1", "--ntasks=1"] if s.mem_gb is None else ["-n 1", "--ntasks=1"],
        worker_extra_args=["--resources", f"{SEGMENT_RESOURCE}=1"],
        log_directory=str(folder / "slurm"),
    )


class DaskTrials(TrialExecutor):
    """Trial segments on a ``dask.distributed`` cluster (see the module's documentation)."""

    name = "dask"
    default_poll = 0.5  # the futures' states, in memory

    def __init__(self, directory: Path, job: Job, concurrent: int, address: str | None = None) -> None:
        super().__init__(directory, job, concurrent)
        from dask.distributed import Client, LocalCluster

        self.folder = executor_folder(self.directory, self.name)
        self.address = address
        self.cluster: Any = None
        self.futures: dict[str, Any] = {}
        try:
            if address is None:
                self.cluster = LocalCluster(
                    n_workers=concurrent, threads_per_worker=1, processes=True, dashboard_address=None
                )
            elif address == "slurm":
                self.cluster = slurm_cluster(job, concurrent, self.folder)
                self.cluster.scale(concurrent)
            self.client = Client(self.cluster if self.cluster is not None else address, timeout=60)
        except (OSError, TimeoutError, ValueError, RuntimeError) as e:  # RuntimeError: "Nanny failed to start"
            if self.cluster is not None:
                self.cluster.close()
            raise TwinError(f"--executor dask: no Dask cluster at {address or 'a new LocalCluster'}: {e}") from None

    def _log(self, trial: int) -> Path:
        """``SWEEP/executor/dask/<trial>-<n>.log`` with the next free ``n`` for the trial."""
        n = 1
        while (path := self.folder / f"{trial:04d}-{n}.log").exists():
            n += 1
        path.touch()
        return path

    def launch(self, works: Sequence[TrialWork]) -> list[Launched]:
        out = []
        resources = {SEGMENT_RESOURCE: 1} if self.address == "slurm" else None
        for w in works:
            call = segment_call(w, self.ranks, "task")
            log = self._log(w.trial)
            key = f"twinhpc-segment-{w.trial:04d}-{log.stem.split('-')[-1]}-{uuid.uuid4().hex[:8]}"
            try:
                record = (str(w.out), key, w.trial, w.rung, w.epochs)
                future = self.client.submit(
                    run_segment,
                    call.command(True),
                    self.ranks,
                    str(log),
                    record,
                    key=key,
                    pure=False,
                    resources=resources,
                )
            except (OSError, TimeoutError) as e:
                self.cancel([launched.job_id for launched in out])
                raise TwinError(f"--executor dask: the scheduler refused trial {w.trial}'s segment: {e}") from None
            self.futures[key] = future
            out.append(Launched(w.trial, key, str(log)))
        return out

    def states(self, job_ids: Sequence[str]) -> dict[str, SegmentState]:
        known = [j for j in job_ids if j in self.futures]
        processing: set[str] = set()
        if any(self.futures[j].status == "pending" for j in known):
            executing = self.client.run(_executing)  # one call to every worker
            processing = {str(k) for keys in executing.values() for k in keys}
        return {j: self._state(j, j in processing) for j in job_ids}

    def _state(self, job_id: str, processing: bool) -> SegmentState:
        future = self.futures.get(job_id)
        if future is None:
            return SegmentState(job_id, "gone", error="unknown to this Dask client (launched by another driver)")
        if future.status == "pending":
            return SegmentState(job_id, "running" if processing else "pending")
        if future.status == "finished":
            r = future.result()
            if r["status"] == 0:
                return SegmentState(job_id, "done", r["node"], log=r["log"])
            why = "stopped by a signal after a checkpoint" if r["status"] == REQUEUE_EXIT_STATUS else "failed"
            last = _error_line(r["log"])
            error = f"exit status {r['status']} ({why})" + (f": {last}" if last else "")
            return SegmentState(job_id, "failed", r["node"], error=error, log=r["log"])
        if future.status == "error":
            return SegmentState(job_id, "failed", error=f"the Dask task failed: {future.exception()!r}")
        return SegmentState(job_id, "gone", error=f"the Dask task is {future.status}")

    def cancel(self, job_ids: Sequence[str]) -> None:
        futures = [self.futures.pop(j) for j in job_ids if j in self.futures]
        if futures:
            self.client.cancel(futures)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


EXECUTOR = DaskTrials
