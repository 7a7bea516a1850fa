"""Dispatching one job through submitit: ``twinhpc submit`` and :func:`submit`.

::

    import twinhpc
    job = twinhpc.submit("jobs/digits.toml", verb="train", executor="slurm", overrides=["train.epochs=20"])
    job.job_id, job.state                       # submitit's job
    job.results()[0]                            # {"verb": "train", "run": "runs/digits-...", ...}

One submission is one submitit job that runs one ``twinhpc VERB`` on the job file as it was
when submitted (written to ``RUN/<verb>.job.toml``), with its resources from the job's
``[slurm]`` table (:meth:`~twinhpc.config.slurm.SlurmConfig.submitit_parameters`):

- ``slurm``: one Slurm job of ``nodes`` × ``ntasks_per_node`` tasks, started by submitit's
  ``srun``; each task runs one rank (``python -m twinhpc VERB ...``, which inherits the task's
  MPI environment);
- ``local``: submitit's local executor with one task, which starts ``mpirun -n N`` itself (its
  own tasks would be N unconnected MPI singletons);
- ``debug``: submitit's debug executor: the verb runs in this process, one rank, when the
  job's result is asked for.

Submissions are recorded in ``RUN/submitted.json`` (atomically, one entry per submission), which
``twinhpc jobs RUN`` reads (:func:`job_states`: one batched ``squeue`` and one ``sacct`` call for all of them).

Note:
    *Preemption, time limits and requeue follow submitit's protocol.* The submitted callable
    (:class:`VerbCall`) is a :class:`submitit.helpers.Checkpointable`. While the verb runs it
    takes over SIGUSR2 and SIGTERM from submitit and passes them on to the verb (under
    ``mpirun``, always as SIGUSR2, which ``mpirun`` forwards to its ranks); the verb
    checkpoints at its next step boundary and exits 255 (:mod:`twinhpc.train.signals`). Only
    then, with the work saved, the callable hands SIGUSR2 to submitit's own handler, which calls
    :meth:`VerbCall.checkpoint` (the same call with ``resume``), saves it in place of the
    submitted pickle, requeues the job (``scontrol requeue``; the local executor's requeue
    status) and exits. After SIGTERM (``scontrol requeue``, preemption, ``scancel``) Slurm itself
    requeues or ends the job: every task exits 255 without a result, so submitit never takes a
    stopped run for a finished one; a restart (``SLURM_RESTART_COUNT`` > 0) resumes. The
    requeued job trains into the same run directory with ``--resume`` and continues exactly
    from the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import DelayedSubmission
from submitit.helpers import Checkpointable

from ..config import Job, load_job
from ..config.load import override
from ..env import launch_environ, unset_runtime_vars_line
from ..errors import TwinError
from ..io.atomic import replace_durably
from ..io.sweep import SWEEP_FILE, read_sweep
from ..signals import REQUEUE_EXIT_STATUS
from .segments import write_segment_record

#: the verbs that can be submitted
VERBS = ("train", "validate", "predict")
#: the executors
EXECUTORS = ("local", "slurm", "debug")
#: the record of a run's submissions
RECORD = "submitted.json"
#: the folder of submitit's files (pickles, logs) in the run directory
FOLDER = "submitit"
#: the signals the callable takes over while the verb runs
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
#: sacct's states of a job that has ended
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def restart_count() -> int:
    """``SLURM_RESTART_COUNT``: how often Slurm restarted this job (0 outside Slurm)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


@dataclass
class VerbCall(Checkpointable):
    """``twinhpc VERB JOB_FILE`` on run directory ``run``: the callable submitted.

    ``launcher``: ``"task"`` runs the verb as a child process of this task (one rank per
    submitit task), ``"mpirun"`` as ``mpirun -n ranks``, ``"inprocess"`` in this process.
    ``resume`` is set by :meth:`checkpoint` (and implied on a Slurm restart). ``segment``: a
    sweep segment's ``(trial, rung, epochs)``; the call then records its own job id
    (``submitit.JobEnvironment().job_id``, task 0) with them in ``RUN/segment.json`` each time
    it starts, before the verb (:mod:`twinhpc.tune.segments`).
    """

    verb: str
    job_file: str
    run: str
    ranks: int = 1
    launcher: str = "task"
    args: tuple[str, ...] = ()
    resume: bool = False
    python: str = field(default_factory=lambda: sys.executable)
    segment: tuple[int, int, int] | None = None

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The call that continues this one: the same verb with ``resume`` (the run's state is
        its checkpoint on disk, not this object)."""
        return DelayedSubmission(replace(self, resume=True))

    def command(self, restart: bool) -> list[str]:
        """The command line of the verb (``restart``: continue the run)."""
        cmd = [self.python, "-m", "twinhpc", self.verb, self.job_file]
        if self.verb == "train":
            cmd += ["--out", self.run, *(["--resume"] if restart else [])]
        else:
            cmd += ["--run", self.run, "--log-dir", str(Path(self.run) / "logs")]
        cmd += list(self.args)
        if self.launcher == "mpirun":
            cmd = ["mpirun", "-n", str(self.ranks), *cmd]
        return cmd

    def __call__(self) -> dict[str, Any]:
        if self.launcher == "inprocess":
            return self._in_process()
        self._record_segment()
        restart = self.resume or restart_count() > 0
        received: list[int] = []
        proc: subprocess.Popen[bytes] | None = None

        def forward(signum: int, frame: types.FrameType | None) -> None:  # record, pass on to the verb
            received.append(signum)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGUSR2 if self.launcher == "mpirun" else signum)

        previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
        try:
            env = launch_environ() if self.launcher == "mpirun" else None  # srun's tasks: their own
            proc = subprocess.Popen(self.command(restart), env=env)
            if received:  # arrived before the verb started: pass it on now
                forward(received[-1], None)
            status = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if status == 0:
            return {"verb": self.verb, "run": self.run, "resumed": restart, "restarts": restart_count()}
        if status == REQUEUE_EXIT_STATUS:
            self._stopped(received, previous.get(signal.SIGUSR2))
        raise TwinError(
            f"twinhpc {self.verb} {self.job_file} (run {self.run}) ended with exit status {status}; "
            f"the log: {_own_log()}"
        )

    def _record_segment(self) -> None:
        """A sweep segment (``segment`` set) started: its job id to ``RUN/segment.json``."""
        if self.segment is None:
            return
        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # not a submitit job: no job id to record
            return
        if env.global_rank == 0:
            trial, rung, epochs = self.segment
            write_segment_record(self.run, env.job_id, trial, rung, epochs, by="segment")

    def _stopped(self, received: list[int], submitit_handler: Any) -> None:
        """The verb checkpointed and exited 255. After SIGUSR2 (or a signal only the verb saw),
        submitit's handler checkpoints this call, requeues the job and exits (rank 0; it returns
        on the other ranks); after SIGTERM Slurm requeues or ends the job itself. Either way the
        task exits 255 without a result file."""
        if signal.SIGTERM not in received and callable(submitit_handler):
            submitit_handler(signal.SIGUSR2, None)
        sys.exit(REQUEUE_EXIT_STATUS)

    def _in_process(self) -> dict[str, Any]:
        """The debug executor: the verb in this process, one rank."""
        from ..train.loop import train
        from ..train.predict import predict, validate

        job = load_job(self.job_file)
        if self.verb == "train":
            t = argparse.ArgumentParser(prog="twinhpc submit train", add_help=False)
            t.add_argument("--until-epoch", type=int)
            until = t.parse_known_args(list(self.args))[0].until_epoch
            result = train(job, self.run, resume=self.resume, until_epoch=until)
            if result.status == "preempted":
                raise TwinError(f"twinhpc train (run {self.run}) stopped on a signal after a checkpoint")
            return {"verb": "train", "run": self.run, "status": result.status, "step": result.step}
        p = argparse.ArgumentParser(prog=f"twinhpc submit {self.verb}", add_help=False)
        for option in ("--checkpoint", "--split", "--input", "--out"):
            p.add_argument(option)
        a = p.parse_args(list(self.args))
        if self.verb == "validate":
            report = validate(job, self.run, checkpoint=a.checkpoint, split=a.split)
            return {"verb": "validate", "run": self.run, "report": report}
        if a.input is None or a.out is None:
            raise TwinError("twinhpc submit predict: give the verb's --input DATASET --out PRED.h5 (--verb-args)")
        out = predict(job, self.run, a.input, a.out, checkpoint=a.checkpoint, split=a.split)
        return {"verb": "predict", "run": self.run, "predictions": str(out)}


def _own_log() -> str:
    """Where this submitit job's output goes (its stderr file), or where submitit's files are."""
    try:
        return str(submitit.JobEnvironment().paths.stderr)
    except RuntimeError:  # not inside a submitit job (the debug executor)
        return "this process's output"


def make_executor(kind: str, folder: str | os.PathLike[str], job: Job) -> submitit.AutoExecutor:
    """submitit's executor ``kind`` writing into ``folder``, with ``job``'s resources: its
    ``[slurm]`` table on Slurm (``--requeue`` added), the time limit elsewhere (one task)."""
    if kind not in EXECUTORS:
        raise TwinError(f"--executor: {kind!r} is not one of {', '.join(EXECUTORS)}")
    ex = submitit.AutoExecutor(folder=folder, cluster=kind)
    params = job.slurm.submitit_parameters()
    if kind == "slurm":
        params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}), "requeue": True}
        params["slurm_setup"] = [unset_runtime_vars_line()]
        ex.update_parameters(**params)
    else:
        ex.update_parameters(name=params["name"], timeout_min=params["timeout_min"], tasks_per_node=1, nodes=1)
    return ex


def default_run(job: Job, verb: str) -> Path:
    """Where a submission works when ``--out`` names nothing: for ``train`` a new directory
    ``<train.out>-<UTC time>`` (``-2``, ``-3`` ... when taken), else ``train.out``."""
    base = job.train.out or f"runs/{job.slurm.job_name or 'job'}"
    if verb != "train":
        return Path(base)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    run, n = Path(f"{base}-{stamp}"), 1
    while run.exists():
        n += 1
        run = Path(f"{base}-{stamp}-{n}")
    return run


def write_json(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path``, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    replace_durably(tmp, path)


def read_record(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The submissions recorded in ``RUN/submitted.json`` (oldest first; none: [])."""
    path = Path(run) / RECORD
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as e:
        raise TwinError(f"{path}: cannot read the record of submissions ({e})") from None
    return list(value["submissions"])


def submit(
    job: Job | str | os.PathLike[str],
    verb: str = "train",
    executor: str = "local",
    *,
    overrides: Sequence[str] = (),
    run: str | os.PathLike[str] | None = None,
    args: Iterable[str] = (),
    resume: bool = False,
) -> submitit.Job[Any]:
    """Submit ``twinhpc VERB`` on ``job`` (a job file, read with ``overrides``, or a
    :class:`~twinhpc.config.Job`) to ``executor``; returns submitit's job.

    ``run``: the run directory (``train``: trained into, default :func:`default_run`;
    ``validate``/``predict``: the trained run read, default ``train.out``). ``args``: more options of
    the verb (``predict``: ``--input DATASET --out PRED.h5``). ``resume``: continue ``run``'s
    training from its checkpoint.

    Raises
    ------
    TwinError
        An unknown verb or executor, a bad job file (naming the key), a ``train`` run directory
        that holds a run already (without ``resume``), a submission that ``sbatch`` refused.
    """
    if verb not in VERBS:
        raise TwinError(f"verb {verb!r}: submit one of {', '.join(VERBS)}")
    if executor not in EXECUTORS:
        raise TwinError(f"--executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    job_file = None
    if isinstance(job, Job):
        if overrides:
            raise TwinError("overrides go with a job file; give a Job with its values set (twinhpc.config.override)")
    else:
        job_file = str(job)
        job = load_job(job, overrides)
    run_dir = Path(run) if run is not None else default_run(job, verb)
    if verb == "train" and not resume and ((run_dir / "results.h5").exists() or (run_dir / "ckpt").exists()):
        raise TwinError(f"{run_dir}: holds a run already; continue it with --resume, or give another --out")
    ranks = job.slurm.nodes * job.slurm.ntasks_per_node
    launcher = {"slurm": "task", "local": "mpirun" if ranks > 1 else "task", "debug": "inprocess"}[executor]
    if executor == "local" and ranks > 1 and shutil.which("mpirun") is None:
        raise TwinError(f"--executor local: {ranks} ranks (slurm.ntasks_per_node × nodes) need mpirun, not found")
    run_dir.mkdir(parents=True, exist_ok=True)
    if verb == "train":
        job = override(job, {"train.out": str(run_dir)}, where="twinhpc submit --out")
    frozen = run_dir / f"{verb}.job.toml"
    tmp = frozen.with_name(f".{frozen.name}.tmp")
    tmp.write_text(f"# {verb} job submitted from {job_file or 'a Job object'}\n" + job.to_toml())
    replace_durably(tmp, frozen)
    call = VerbCall(verb, str(frozen), str(run_dir), ranks, launcher, tuple(args), resume)
    ex = make_executor(executor, run_dir / FOLDER, job)
    try:
        sjob = ex.submit(call)
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as e:
        detail = getattr(e, "stderr", None) or e
        raise TwinError(f"{executor}: the submission of {verb} {job_file or ''} was refused: {detail}") from None
    with _record_lock(run_dir):
        _append_record(run_dir, sjob, verb, executor, ranks, launcher, job_file, overrides, frozen)
    return sjob


@contextlib.contextmanager
def _record_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock (``flock``) on ``RUN/.submitted.lock``, for the read-append-write of the
    record: two submissions into one run at once both get their entry."""
    with open(run_dir / ".submitted.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _append_record(
    run_dir: Path,
    sjob: submitit.Job[Any],
    verb: str,
    executor: str,
    ranks: int,
    launcher: str,
    job_file: str | None,
    overrides: Sequence[str],
    frozen: Path,
) -> None:
    records = read_record(run_dir)
    records.append(
        {
            "job_id": str(sjob.job_id),
            "verb": verb,
            "executor": executor,
            "ranks": ranks if executor != "debug" else 1,
            "launcher": launcher,
            "submitted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "job_file": job_file,
            "overrides": list(overrides),
            "frozen_job": str(frozen),
            "run": str(run_dir),
            "folder": str(run_dir / FOLDER),
            "stdout": str(sjob.paths.stdout),
            "stderr": str(sjob.paths.stderr),
        }
    )
    write_json(run_dir / RECORD, {"submissions": records})


#: what :func:`slurm_states` reads of each job from sacct (squeue: the same fields but the exit code)
SACCT_FIELDS = ("JobID", "State", "ExitCode", "Elapsed", "NodeList", "Submit", "Start", "End")
#: a row of sacct for the pending elements of an array: ``1234_[5-9,12%2]``
_ARRAY_ROW = re.compile(r"^(?P<array>\d+)_\[(?P<ranges>[\d,\-]+)(?:%\d+)?\]$")


def _array_elements(job_id: str) -> list[str]:
    """The element ids a row of sacct stands for: itself, or each pending element of a row
    ``1234_[5-9%2]``."""
    m = _ARRAY_ROW.match(job_id)
    if m is None:
        return [job_id]
    out = []
    for part in m["ranges"].split(","):
        first, _, last = part.partition("-")
        out += [f"{m['array']}_{i}" for i in range(int(first), int(last or first) + 1)]
    return out


#: job states after which Slurm runs nothing more of the job (sacct then has its exit code)
ENDED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)


#: job states in which it waits for a start (again)
_NOT_STARTED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})


def slurm_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """State, exit code, elapsed time, nodes and the submit, start and end times of Slurm jobs,
    with one ``squeue`` call and one ``sacct`` call for all of them.

    A job the controller still holds and that has not ended is answered by ``squeue``: it is
    slurmctld's own view, while accounting learns of a start or a requeue a moment later (under
    load, seconds: sacct would still call a running array element pending). An ended job, or one
    the controller has forgotten, is answered by ``sacct`` (it has the exit code); the newest row
    of a requeued job counts. An array element (``1234_5``) is asked of sacct through its array
    (``1234``): sacct lists the elements that have not started as one row ``1234_[5-9%2]``.
    Ids neither knows are not in the answer."""
    if not job_ids:
        return {}
    wanted = set(job_ids)
    queued = _squeue_states(sorted(wanted))
    out = {j: row for j, row in queued.items() if row["state"] not in ENDED}
    asked = sorted(wanted - set(out))
    if asked:
        accounted = _sacct_states(asked)
        out.update(accounted)
        out.update({j: row for j, row in queued.items() if j not in out})
    return out


def _sacct_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """:func:`slurm_states` of ``job_ids`` as accounting records them (one ``sacct`` call)."""
    wanted = set(job_ids)
    asked = ",".join(sorted({j.split("_")[0] for j in wanted}))
    out: dict[str, dict[str, str]] = {}
    try:
        r = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", asked, "-o", ",".join(SACCT_FIELDS)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return out
    if r.returncode != 0:
        return out
    rows = [line.split("|") for line in r.stdout.splitlines()]
    rows = [row for row in rows if len(row) == len(SACCT_FIELDS)]
    rows.sort(key=lambda row: _ARRAY_ROW.match(row[0]) is None)  # an element's own rows win
    for jid, state, code, elapsed, nodes, submitted, start, end in rows:
        for element in _array_elements(jid):
            if element in wanted:
                out[element] = {
                    "state": state.split()[0] if state else "UNKNOWN",
                    "exit_code": code,
                    "elapsed": elapsed,
                    "nodes": nodes,
                    "submit": submitted,
                    "start": start,
                    "end": end,
                }
    return out


def _squeue_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """:func:`slurm_states` of the ``job_ids`` the controller holds (one ``squeue`` call; array
    elements one per line). No exit code: sacct has it once the job has ended."""
    out: dict[str, dict[str, str]] = {}
    try:
        q = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%M|%N|%V|%S"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return out
    wanted = set(job_ids)
    for line in q.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 6 and parts[0] in wanted:
            jid, state, elapsed, nodes, submitted, start = parts
            state = state.split()[0] if state else "UNKNOWN"
            if state in _NOT_STARTED:
                start = "Unknown"  # squeue's start of a waiting job is a forecast; sacct's is Unknown
            out[jid] = {
                "state": state,
                "exit_code": "",
                "elapsed": elapsed,
                "nodes": nodes,
                "submit": submitted,
                "start": start,
                "end": "Unknown",
            }
    return out


#: the pickle opcodes that push a str
_STRING_OPCODES = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def result_outcome(data: bytes) -> str | None:
    """The tag of submitit's result pickle, ``("success" | "error", ...)``: its first string,
    read from the pickle's opcodes without unpickling it (the file lies in a run directory that
    may be someone else's, and loading a pickle can run any code); ``None`` when the data holds
    no such string (a file still being written)."""
    import pickletools

    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _STRING_OPCODES:
                return str(arg)
    except ValueError:
        return None
    return None


def result_error(data: bytes) -> str | None:
    """The last line of the traceback in submitit's error result ``("error", TRACEBACK)`` (the
    exception and its message), read from the pickle's opcodes like :func:`result_outcome`;
    ``None`` for a success or data that holds no such pair."""
    import pickletools

    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _STRING_OPCODES:
                strings.append(str(arg))
                if len(strings) == 2:
                    break
    except ValueError:
        return None
    if len(strings) < 2 or strings[0] != "error":
        return None
    lines = [line for line in strings[1].splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _local_state(record: dict[str, Any]) -> str:
    """A local or debug job's state from submitit's files: its result file, else its process."""
    if record["executor"] == "debug" and not _result_file([Path(record["folder"])], record["job_id"]):
        return "IN-PROCESS (debug: ran, if at all, in the process that asked for its result)"
    return _local_job_state([Path(record["folder"])], record["job_id"])


def _result_file(folders: Sequence[Path], job_id: str) -> Path | None:
    """submitit's result file of job ``job_id`` (``<job_id>_0_result.pkl``) in the first of
    ``folders`` that holds one."""
    return next((p for f in folders if (p := f / f"{job_id}_0_result.pkl").exists()), None)


def _local_job_state(folders: Sequence[Path], job_id: str) -> str:
    """A submitit local job's state: the outcome in its result file (read without unpickling),
    else whether its process (the job id is its pid) is alive."""
    result = _result_file(folders, job_id)
    if result is not None:
        outcome = result_outcome(result.read_bytes())
        if outcome is None:  # a result file being written, or of another version
            return "UNKNOWN"
        return "COMPLETED" if outcome == "success" else "FAILED"
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return "ENDED WITHOUT RESULT"
    except PermissionError:
        pass
    return "RUNNING"


def _trial_executor(sweep_dir: Path, log: str, default: str) -> str:
    """The executor of a trial's segment: ``<name>`` when its log lies in the executor's folder
    ``SWEEP/executor/<name>/`` (a sweep resumed with another executor has both), else ``default``
    (sweep.h5's ``executor`` attribute)."""
    if log:
        parts = Path(log).parts
        for i in range(len(parts) - 1):
            if parts[i] == "executor" and parts[i + 1] in (*EXECUTORS, "dask"):
                return parts[i + 1]
    return default


def sweep_records(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One record per trial of the sweep in ``sweep_dir`` that was handed to an executor: its
    latest segment's job id, executor, node and log as sweep.h5 holds them, and the trial's
    status in the sweep (``status``)."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    f = read_sweep(path)
    executor = f.executor
    return [
        {
            "sweep": str(sweep_dir),
            "trial": t.id,
            "job_id": t.job_id,
            "executor": _trial_executor(sweep_dir, t.log, executor),
            "status": t.status,
            "node": t.node,
            "log": t.log,
        }
        for t in f.trials
        if t.job_id or math.isfinite(t.started_at)  # handed out to an executor
    ]


def _sweep_state(r: dict[str, Any], slurm: dict[str, dict[str, str]]) -> None:
    """Fill in ``state`` (and Slurm's exit code, elapsed time and nodes) of a sweep record."""
    executor, job_id = r["executor"], r["job_id"]
    if executor == "debug":
        r["state"] = "DEBUG (ran in the sweep driver's process)"
    elif not job_id:
        r["state"] = "UNKNOWN (no job id recorded)"
    elif executor == "slurm":
        known = slurm.get(job_id)
        if known is None:
            r["state"] = "UNKNOWN (not in sacct/squeue)"
        else:
            nodes = known.get("nodes", "")
            r.update({k: v for k, v in known.items() if k != "nodes"})
            if nodes and nodes != "None assigned":
                r["node"] = nodes
    elif executor == "local":
        folders = [Path(r["log"]).parent] if r["log"] else []
        r["state"] = _local_job_state([*folders, Path(r["sweep"]) / "executor" / "local"], job_id)
    elif executor == "dask":
        r["state"] = "UNKNOWN (dask: the scheduler knows; see twinhpc sweep status)"
    else:
        r["state"] = "UNKNOWN (sweep.h5 does not record the executor)"


def job_states(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """The submissions recorded in each RUN (or in each run directory one level below a
    folder), and one record per trial of each SWEEP (a folder holding sweep.h5:
    :func:`sweep_records`, each with ``sweep`` and ``trial``), with their state now: Slurm's from
    one batched :func:`slurm_states` call for all of them, a local job's from its files."""
    records: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise TwinError(f"{path}: no such run directory or sweep folder")
        if (path / SWEEP_FILE).is_file():
            records += sweep_records(path)
            continue
        dirs = [path] if (path / RECORD).exists() else sorted(p for p in path.iterdir() if (p / RECORD).exists())
        if not dirs:
            raise TwinError(
                f"{path}: no {RECORD} here or in the folders below it, and no {SWEEP_FILE} "
                "(nothing was submitted to it)"
            )
        for d in dirs:
            records += read_record(d)
    states = slurm_states(sorted({r["job_id"] for r in records if r["executor"] == "slurm" and r["job_id"]}))
    for r in records:
        if "trial" in r:
            _sweep_state(r, states)
        elif r["executor"] == "slurm":
            r.update(states.get(r["job_id"], {"state": "UNKNOWN (not in sacct/squeue)"}))
        else:
            r["state"] = _local_state(r)
    return records
