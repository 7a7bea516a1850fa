"""``twinhpc submit train|validate|predict JOB.toml [--executor local|slurm|debug] [--set k=v]
[--out RUN] [--resume] [--wait] [--verb-args OPTIONS]``."""

from __future__ import annotations

import argparse
import json
import shlex

from ..errors import TwinError
from .main import add_overrides

DESCRIPTION = """\
Submit one twinhpc verb on a job file through submitit, with the resources of the job's [slurm]
table (nodes, ntasks_per_node, cpus_per_task, gpus_per_node, mem_gb, time, partition, account,
qos, constraint, signal_seconds, [slurm.additional]).

Executors: slurm (one Slurm job of nodes x ntasks_per_node tasks started by srun, one rank per
task, --requeue), local (submitit's local executor: one task that runs mpirun -n N itself; the
default), debug (in this process, one rank, before the command returns).

train trains into RUN (--out; default <train.out>-<UTC time>); validate and predict read the
trained RUN (default train.out). The job file, with the --set items applied, is frozen into
RUN/<verb>.job.toml; submitit's files and the job's output go to RUN/submitit/, and the
submission is recorded in RUN/submitted.json (`twinhpc jobs RUN` shows its state).

Preemption and time limits: near the time limit Slurm sends USR2 (slurm.signal_seconds before
it); training checkpoints at its next step, submitit requeues the job, and the requeued job
resumes the run exactly from that checkpoint. `scontrol requeue` (SIGTERM) checkpoints and
resumes the same way.

Options of the verb itself go in --verb-args, e.g.
  twinhpc submit predict job.toml --out runs/job-1 --verb-args '--input data/new --out pred.h5'
Prints the job id (--wait, and always with debug: waits and prints rank 0's result as JSON; exit
status 2 if the job failed).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "submit",
        help="submit train/validate/predict of a job file through submitit (slurm, local, debug)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=("train", "validate", "predict"), metavar="VERB", help="train, validate or predict")
    p.add_argument("job", metavar="JOB.toml", help="job file")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local", help="default: local")
    add_overrides(p, "train.epochs=20")
    p.add_argument("--out", metavar="RUN", help="run directory (train: default <train.out>-<UTC time>)")
    p.add_argument("--resume", action="store_true", help="train: continue RUN from its checkpoint")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.add_argument(
        "--verb-args",
        default="",
        metavar="'OPTIONS'",
        help="options of the verb itself, in one quoted string, e.g. --verb-args '--input data/new --out pred.h5'",
    )
    return p


def run(args) -> int:
    from ..tune.submit import read_record, submit

    extra = shlex.split(args.verb_args)
    job = submit(
        args.job, args.what, args.executor, overrides=args.overrides, run=args.out, args=extra, resume=args.resume
    )
    record = read_record(job.paths.folder.parent)[-1]
    print(f"{record['job_id']} {record['run']} (output: {record['stdout']})", flush=True)
    if not args.wait and args.executor != "debug":  # debug: runs here, when its result is asked for
        return 0
    try:
        results = job.results()
    except Exception as e:  # noqa: BLE001 — submitit raises the job's own error, or UncompletedJobError
        raise TwinError(
            f"job {job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
        ) from None
    print(json.dumps(results[0], default=str), flush=True)
    return 0
