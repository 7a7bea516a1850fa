"""The ``local`` executor: each trial segment is a job of submitit's local executor on this
machine, ``mpirun -n N`` when the job's ``[slurm]`` table gives N > 1 ranks.

- At most ``concurrent`` segments run at once (the sweep hands out no more; :meth:`launch`
  refuses more of its own).
- The job id is submitit's local job id: the pid of submitit's controller process
  (``python -m submitit.local._local SWEEP/executor/local``), which starts the task
  (:class:`~twinhpc.tune.submit.VerbCall`) and writes ``<pid>_0_log.out`` (stdout and stderr)
  and ``<pid>_0_result.pkl`` there.
- **Segments outlive the driver.** submitit starts its controller as a plain child, in the
  driver's session and process group: Ctrl-C or a closed terminal (SIGINT/SIGHUP to the
  group) would reach the controller, which then kills its task. This executor starts the
  controller the same way but in a new session (``start_new_session``), so nothing sent to the
  driver's terminal or group reaches a segment; a driver killed outright leaves its segments
  running (they are re-parented), and a new driver finds them by pid.
- :meth:`states` reads each job's result pickle with
  :func:`~twinhpc.tune.submit.result_outcome` (its tag, never unpickled): ``success`` → done,
  ``error`` → failed (the error line of the log); without a result, a live controller (its
  ``/proc`` entry names submitit's controller and this folder, so a reused pid does not count)
  → running, else gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.local.local import LocalJob

from ...config import Job
from ...env import launch_environ
from ...errors import TwinError
from ..submit import result_outcome
from ..sweep import TrialWork
from .base import Launched, SegmentState, TrialExecutor, executor_folder, segment_call

#: the controller's module (what its command line holds)
CONTROLLER = "submitit.local._local"


class _SessionLocalExecutor(submitit.LocalExecutor):
    """submitit's local executor whose controller starts in a new session (module docstring),
    its stderr into its stdout log."""

    def _submit_command(self, command: str) -> LocalJob[Any]:
        env = launch_environ()
        env.update(
            SUBMITIT_LOCAL_NTASKS="1",
            SUBMITIT_LOCAL_COMMAND=command,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="1",
            SUBMITIT_EXECUTOR="local",
            SUBMITIT_LOCAL_WITH_SHELL="",
        )
        process = subprocess.Popen(
            [sys.executable, "-m", CONTROLLER, str(self.folder)],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=[0])


def _alive(pid: str, folder: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) submitit controller of ``folder``."""
    proc = Path("/proc") / pid
    if not Path("/proc/self").exists():  # no procfs: the pid alone
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return CONTROLLER.encode() in cmdline and str(folder).encode() in cmdline


def error_line(log: Path) -> str:
    """The last error line of a segment's log (``twinhpc train: error: ...``, else an
    exception's last line), or a note that there is none."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {log}"
    for pick in (lambda ln: ": error: " in ln, lambda ln: "Error: " in ln or "Error(" in ln):
        found = [ln for ln in lines if pick(ln)]
        if found:
            return found[-1]
    return lines[-1] if lines else f"the log {log} is empty"


def _reap(job: LocalJob[Any], timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` s) for the process of a job that wrote its result to exit, so
    that a segment reported ended no longer counts as running when the next is launched."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        if job._process is not None:
            job._process.wait(timeout=timeout)


class LocalExecutor(TrialExecutor):
    """Trial segments as submitit local jobs (module docstring)."""

    name = "local"
    default_poll = 0.5  # states are read from files and pids

    def __init__(self, directory: Path, job: Job, concurrent: int, **options: object) -> None:
        super().__init__(directory, job, concurrent)
        if options:
            raise TwinError(f"--executor local takes no options, got {', '.join(options)}")
        self.folder = executor_folder(self.directory, "local").resolve()
        self.launcher = "mpirun" if self.ranks > 1 else "task"
        if self.ranks > 1 and shutil.which("mpirun") is None:
            raise TwinError(
                f"--executor local: {self.ranks} ranks per trial (slurm.nodes × ntasks_per_node) need mpirun, not found"
            )
        self.jobs: dict[str, LocalJob[Any]] = {}  # launched here: polled, so that none stays a zombie

    def _running_here(self) -> int:
        return sum(1 for j in self.jobs.values() if j._process is not None and j._process.poll() is None)

    def launch(self, works: Sequence[TrialWork]) -> list[Launched]:
        if self._running_here() + len(works) > self.concurrent:
            raise TwinError(
                f"executor local: {len(works)} more segment(s) with {self._running_here()} running would exceed "
                f"concurrent = {self.concurrent}"
            )
        ex = _SessionLocalExecutor(self.folder)
        ex.update_parameters(timeout_min=self.job.slurm.submitit_parameters()["timeout_min"], tasks_per_node=1)
        out = []
        for w in works:
            try:
                sjob = ex.submit(segment_call(w, self.ranks, self.launcher))
            except (OSError, subprocess.SubprocessError) as e:
                raise TwinError(f"executor local: cannot start the segment of trial {w.trial}: {e}") from None
            jid = str(sjob.job_id)
            self.jobs[jid] = sjob
            out.append(Launched(w.trial, jid, str(self.folder / f"{jid}_0_log.out"), node=socket.gethostname()))
        return out

    def states(self, job_ids: Sequence[str]) -> dict[str, SegmentState]:
        host = socket.gethostname()
        out = {}
        for jid in job_ids:
            log = self.folder / f"{jid}_0_log.out"
            result = self.folder / f"{jid}_0_result.pkl"
            own = self.jobs.get(jid)
            ended = own is not None and own._process is not None and own._process.poll() is not None
            if result.exists():
                outcome = result_outcome(result.read_bytes())
                if outcome is not None and own is not None and not ended:
                    _reap(own)  # its process ends right after writing the result: a free worker
                if outcome == "success":
                    out[jid] = SegmentState(jid, "done", host, log=str(log))
                elif outcome is None:  # being written
                    out[jid] = SegmentState(jid, "running", host, log=str(log))
                else:
                    out[jid] = SegmentState(jid, "failed", host, error_line(log), str(log))
            elif (own is not None and not ended) or (own is None and _alive(jid, self.folder)):
                out[jid] = SegmentState(jid, "running", host, log=str(log))
            else:
                out[jid] = SegmentState(
                    jid,
                    "gone",
                    host,
                    f"process {jid} ended without a result (killed, or stopped for a requeue)",
                    str(log),
                )
        return out


EXECUTOR = LocalExecutor
