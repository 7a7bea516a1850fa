"""``twinhpc sbatch JOB.toml [--set k=v] [--out RUN] [--resume] [--script PATH] [--submit]``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ..env import launch_environ
from ..errors import TwinError
from .main import add_overrides

DESCRIPTION = """\
Write the Slurm batch script of a job file: #SBATCH lines from its [slurm] table (nodes,
ntasks_per_node, cpus_per_task, time, partition, account, [slurm.additional] ...; USR2
signal_seconds before the time limit, --requeue, --open-mode=append), then `srun twinhpc
preprocess`, `srun twinhpc train`, `srun twinhpc validate` and `twinhpc report`.

Each submission trains into its own run directory, <train.out>-<Slurm job id> (e.g.
runs/digits-1234), unless --out names one. When training stops on Slurm's signal it
checkpoints and exits 255; the script then requeues the job, and the requeued job (the same id,
SLURM_RESTART_COUNT > 0) resumes that run. Per-rank logs go to logs/<job name>-<job id>/, the
job's output to <job name>-<job id>.out in the current directory.

Prints the script, or writes it (--script PATH); --submit hands it to sbatch and prints the job
id. The verbs read the job file and the --set items when the job runs.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sbatch",
        help="write (and submit) the Slurm batch script of a job file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file")
    add_overrides(p, "slurm.time=120")
    p.add_argument("--out", metavar="RUN", help="a fixed run directory (default: <train.out>-<Slurm job id>)")
    p.add_argument(
        "--resume", action="store_true", help="continue RUN's checkpoint from the first attempt on (with --out)"
    )
    p.add_argument("--script", metavar="PATH", help="write the script here instead of printing it")
    p.add_argument("--submit", action="store_true", help="submit it with sbatch; print the job id")
    return p


def venv() -> str | None:
    """The virtual environment of this interpreter (the job runs with it), or None outside one."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def submit(script: Path | None, text: str) -> str:
    """``sbatch --parsable`` the script (the file, else ``text`` on stdin); the job id."""
    cmd = ["sbatch", "--parsable"] + ([str(script)] if script else [])
    try:
        r = subprocess.run(
            cmd, input=None if script else text, capture_output=True, text=True, timeout=120, env=launch_environ()
        )
    except FileNotFoundError:
        raise TwinError(
            "--submit: sbatch not found (is this a Slurm login node?); --script PATH writes the script"
        ) from None
    except subprocess.TimeoutExpired:
        raise TwinError("--submit: sbatch did not answer within 120 s") from None
    if r.returncode != 0:
        raise TwinError(f"--submit: sbatch failed (exit status {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip().split(";")[0]


def run(args) -> int:
    from ..batch import render
    from ..config import load_job

    if args.resume and not args.out:
        raise TwinError("--resume: continues a fixed run directory; give it with --out RUN")
    job = load_job(args.job, args.overrides)
    text = render(
        job,
        args.job,
        args.overrides,
        workdir=os.getcwd(),
        venv=venv(),
        out=args.out,
        resume=args.resume,
    )
    script = Path(args.script) if args.script else None
    if script is not None:
        try:
            write_atomically(script, text)
        except OSError as e:
            raise TwinError(f"--script {script}: cannot write it ({e.strerror or e})") from None
    elif not args.submit:
        sys.stdout.write(text)
        return 0
    if args.submit:
        job_id = submit(script, text)
        run_dir = args.out or f"{job.train.out}-{job_id}"
        print(job_id, flush=True)
        print(
            f"twinhpc sbatch: submitted job {job_id}: run {run_dir}, output {job.slurm.job_name}-{job_id}.out",
            file=sys.stderr,
        )
    else:
        print(f"wrote {script}; submit it with: sbatch {script}", file=sys.stderr)
    return 0
