"""The batch script of a job: ``twinhpc sbatch JOB.toml`` (docs/jobs.md).

:func:`render` writes the bash script that Slurm runs for one job file: ``#SBATCH`` lines from
the job's ``[slurm]`` table (the one place a job's resources are written down), then
``srun twinhpc preprocess``, ``srun twinhpc train``, ``srun twinhpc validate`` and
``twinhpc report``, each checked for the requeue status.

::

    from twinhpc.batch import render
    text = render(job, "jobs/digits.toml", ["train.epochs=5"], workdir="/home/me/project", venv=".venv")

Note:
    *Requeue.* ``--signal=USR2@<slurm.signal_seconds> --requeue --open-mode=append``: near the
    time limit Slurm sends SIGUSR2 to the job's steps; ``train`` checkpoints after its next step
    and exits 255 (``preprocess`` finishes and exits 255; the later verbs finish and exit 0,
    twinhpc/cli/main.py), and the script runs ``scontrol requeue``. The requeued job runs the
    same script again with ``SLURM_RESTART_COUNT`` > 0.

    *One run directory per submission.* The run goes to ``<train.out>-$SLURM_JOB_ID``
    (``runs/<job name>-<job id>``), so two submissions of one job file never share a run, and
    ``train`` gets ``--resume`` exactly when the job is a restart of the same Slurm job (a
    requeue), which continues from the checkpoint of the attempt before. ``--out RUN`` names a
    fixed run directory instead; ``--resume`` continues an existing run from its first attempt.

    *Read when the job starts.* The script names the job file and its ``--set`` overrides; the
    verbs read them when they run, like a user's own commands. The resources are those of the
    job file when the script was written.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from .config import Job
from .config.fields import JobFileError

#: sbatch options the script writes itself, and where their values come from
MANAGED = {
    "job-name": "slurm.job_name",
    "nodes": "slurm.nodes",
    "ntasks": "slurm.nodes and slurm.ntasks_per_node",
    "ntasks-per-node": "slurm.ntasks_per_node",
    "cpus-per-task": "slurm.cpus_per_task",
    "gpus-per-node": "slurm.gpus_per_node",
    "gpus": "slurm.gpus_per_node",
    "mem": "slurm.mem_gb",
    "time": "slurm.time",
    "partition": "slurm.partition",
    "account": "slurm.account",
    "qos": "slurm.qos",
    "constraint": "slurm.constraint",
    "signal": "slurm.signal_seconds (the requeue needs SIGUSR2)",
    "requeue": "twinhpc sbatch (the requeue needs it)",
    "no-requeue": "twinhpc sbatch (the requeue needs --requeue)",
    "open-mode": "twinhpc sbatch (a requeued job appends to its output)",
    "chdir": "twinhpc sbatch (the directory it was run in)",
}
#: sbatch's single-letter forms of the managed options
SHORT = {"J": "job-name", "N": "nodes", "n": "ntasks", "c": "cpus-per-task", "G": "gpus", "t": "time"}
_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Option:
    """One ``#SBATCH`` line: ``--name=value`` (``--name`` when ``value`` is None); ``key`` is the
    job-file key it comes from, for error messages."""

    name: str
    value: str | None
    key: str

    def line(self) -> str:
        if self.value is None:
            return f"#SBATCH --{self.name}"
        value = self.value
        if "\n" in value or "\r" in value or '"' in value or "\0" in value:
            raise JobFileError(self.key, f"{value!r} cannot be written on an #SBATCH line (a quote or line break)")
        if not value or any(c.isspace() for c in value):
            value = f'"{value}"'
        return f"#SBATCH --{self.name}={value}"


def sbatch_options(job: Job) -> list[Option]:
    """The ``#SBATCH`` options of ``job``'s ``[slurm]`` table, in the order the script lists them.

    Raises
    ------
    JobFileError
        Naming the key: a signal time not shorter than the time limit, an ``[slurm.additional]``
        option that is not an option name, or one the script writes itself (naming the key
        that sets it).
    """
    s = job.slurm
    if s.signal_seconds >= s.minutes * 60:
        raise JobFileError(
            "slurm.signal_seconds",
            f"{s.signal_seconds} s is not shorter than slurm.time ({s.time!r}, {s.minutes} min): Slurm would send "
            "the stop signal as the job starts; lower it or raise slurm.time",
        )
    opts = [
        Option("job-name", s.job_name or "twinhpc", "slurm.job_name"),
        Option("nodes", str(s.nodes), "slurm.nodes"),
        Option("ntasks-per-node", str(s.ntasks_per_node), "slurm.ntasks_per_node"),
        Option("cpus-per-task", str(s.cpus_per_task), "slurm.cpus_per_task"),
    ]
    if s.gpus_per_node:
        opts.append(Option("gpus-per-node", str(s.gpus_per_node), "slurm.gpus_per_node"))
    if s.mem is not None:
        opts.append(Option("mem", s.mem, "slurm.mem_gb"))
    opts.append(Option("time", str(s.time), "slurm.time"))
    for name in ("partition", "account", "qos", "constraint"):
        value = getattr(s, name)
        if value is not None:
            opts.append(Option(name, value, f"slurm.{name}"))
    opts += [
        Option("output", f"{s.job_name or 'twinhpc'}-%j.out", "slurm.job_name"),
        Option("open-mode", "append", "slurm"),
        Option("requeue", None, "slurm"),
        Option("signal", f"USR2@{s.signal_seconds}", "slurm.signal_seconds"),
    ]
    for name, value in s.additional.items():
        key = f"slurm.additional.{name}"
        bare = name.lstrip("-")
        if not _OPTION.match(bare):
            raise JobFileError(key, f"{name!r} is not an sbatch option name (write it without dashes, e.g. mail-type)")
        long = SHORT.get(bare, bare)
        if long in MANAGED:
            raise JobFileError(key, f"--{long} is written by {MANAGED[long]}; set it there")
        if value is False:
            continue
        option = Option(long, None if value is True else str(value), key)
        opts = [o for o in opts if o.name != long] + [option]  # e.g. output, error: the job's own
    for o in opts:
        o.line()  # every value can be written
    return opts


def render(
    job: Job,
    job_file: str,
    overrides: list[str],
    *,
    workdir: str,
    venv: str | None,
    out: str | None = None,
    resume: bool = False,
) -> str:
    """The batch script of ``job`` (read from ``job_file`` with ``overrides``, the ``--set``
    items), run in ``workdir`` with the virtual environment ``venv`` (``None``: none is
    activated; ``$TWINHPC_VENV`` overrides it when the job runs); ``out`` is a fixed run
    directory (default ``<train.out>-$SLURM_JOB_ID``); ``resume`` passes ``--resume`` to every
    attempt's ``train``, not only to restarts. The header names the ``twinhpc sbatch`` command
    that writes it.

    Raises
    ------
    JobFileError
        From :func:`sbatch_options`, naming the key.
    """
    options = sbatch_options(job)
    name = job.slurm.job_name or "twinhpc"
    q = shlex.quote
    run = q(out) if out else f'{q(job.train.out or f"runs/{name}")}-"$SLURM_JOB_ID"'
    sets = " ".join(q(a) for item in overrides for a in ("--set", item))
    command = " ".join(
        ["twinhpc sbatch", q(job_file), sets, *(["--out", q(out)] if out else []), *(["--resume"] if resume else [])]
    ).replace("  ", " ")
    lines = [
        "#!/bin/bash",
        f"# The batch job of {job_file}, written by `{command}`.",
        "# Preprocess, train, validate and report on the allocation of the #SBATCH lines (the job",
        "# file's [slurm] table). Near the time limit Slurm sends USR2: training checkpoints after",
        "# its next step and exits 255, and this script requeues the job; a requeued run",
        "# (SLURM_RESTART_COUNT > 0) resumes the same run directory. docs/jobs.md explains it.",
        *(o.line() for o in options),
        f"#SBATCH --chdir={workdir}" if not any(c.isspace() for c in workdir) else f'#SBATCH --chdir="{workdir}"',
        "set -uo pipefail",
    ]
    if venv is not None:
        lines.append(f'source "${{TWINHPC_VENV:-{venv}}}/bin/activate"')
    lines += [
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        f"JOB={q(job_file)}",
        f"SETS=({sets})",
        f"RUN={run}",
        f'LOGS={q(f"logs/{name}")}-"$SLURM_JOB_ID"',
        "RESUME=(--resume)" if resume else "RESUME=()",
    ]
    if not resume:
        lines.append('if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then RESUME=(--resume); fi  # a requeue: continue')
    lines += [
        'echo "twinhpc: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, on $(hostname): run $RUN"',
        "",
        "# run one step; its exit status 255 (stopped by a signal, work saved) requeues the job",
        "step() {",
        "  local what=$1 status",
        "  shift",
        '  "$@"',
        "  status=$?",
        '  if [ "$status" -eq 255 ]; then',
        '    echo "twinhpc: $what stopped by a signal (exit status 255): requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
        '    echo "twinhpc: scontrol requeue failed; continue later with twinhpc sbatch --out $RUN --resume" >&2',
        "  fi",
        '  [ "$status" -eq 0 ] || exit "$status"',
        "}",
        "",
        'step preprocess srun twinhpc preprocess "$JOB" "${SETS[@]}" --log-dir "$LOGS"',
        'step train srun twinhpc train "$JOB" "${SETS[@]}" --out "$RUN" "${RESUME[@]}" --log-dir "$LOGS"',
        'step validate srun twinhpc validate "$JOB" "${SETS[@]}" --run "$RUN" --log-dir "$LOGS"',
        'step report twinhpc report "$RUN"',
    ]
    return "\n".join(lines) + "\n"
