"""``twinhpc tune JOB.toml [--out SWEEP] [--executor E] [--address ADDR] [--set k=v] [--poll S] [--detach]``."""

from __future__ import annotations

import argparse

from .main import add_overrides

DESCRIPTION = """\
Run the hyper-parameter sweep of the job's [sweep] table (docs/tune.md): create SWEEP/sweep.h5
(the state, written atomically after every event) and drive the sweep to its end: trials are
trained in segments, one per ASHA rung (`twinhpc train SWEEP/trials/<id>/trial.job.toml --resume
--until-epoch E`), on the executor:

  local   submitit's local executor on this machine (default); `mpirun -n N` per segment when
          the job's [slurm] table gives N > 1 ranks; segments outlive the driver
  slurm   submitit on Slurm (job arrays)
  dask    a dask.distributed cluster (--address, else a LocalCluster)
  debug   in this process, one rank, one segment at a time

One line per event (launch, report with the decision, failure, requeue) goes to stdout and
SWEEP/driver.log; at the end a leaderboard and the best trial. One driver per sweep
(SWEEP/driver.lock). SIGTERM/SIGINT/SIGHUP stop the driver (running segments go on):
`twinhpc sweep resume SWEEP` continues the sweep, as after a driver killed any other way.
--detach starts the driver as a detached process (output to SWEEP/driver.log) and returns
once its first trials are launched.

Exit status: 0 the sweep finished, 2 an error (a bad job or [sweep], a refused launch),
128+N the driver stopped on signal N.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune",
        help="run the job's hyper-parameter sweep ([sweep]: ASHA, executors local/slurm/dask/debug)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file with a [sweep] table")
    p.add_argument("--out", metavar="SWEEP", help="the sweep's folder (default sweeps/<job file name>-<UTC time>)")
    add_driver_options(p, default="local")
    add_overrides(p, "sweep.trials=8")
    return p


def add_driver_options(p: argparse.ArgumentParser, default: str | None) -> None:
    """The options ``tune`` and ``sweep resume`` share (the executor's name is checked when it is
    made: importing the executors here would import submitit for every command)."""
    p.add_argument(
        "--executor",
        metavar="local|slurm|debug|dask",
        default=default,
        help="where trial segments run" + (f" (default {default})" if default else " (default: the sweep's own)"),
    )
    p.add_argument(
        "--address", metavar="ADDR", help="--executor dask: the scheduler's address (default: a LocalCluster)"
    )
    p.add_argument(
        "--poll",
        type=float,
        metavar="S",
        help="seconds between two state queries (default: the executor's: local 0.5, slurm 5, dask 0.5, debug 0)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="start the driver as a detached process (output to SWEEP/driver.log); return once trials are launched",
    )
    p.add_argument("--detached-driver", action="store_true", help=argparse.SUPPRESS)  # the detached process itself


def run(args) -> int:
    import datetime
    from pathlib import Path

    from ..config import load_job
    from ..errors import TwinError
    from ..tune import Sweep
    from ..tune.executors import EXECUTORS
    from .sweep import drive

    if args.executor not in EXECUTORS:
        raise TwinError(f"--executor: {args.executor!r} is not one of {', '.join(EXECUTORS)}")
    job = load_job(args.job, args.overrides)
    if job.sweep is None:
        raise TwinError(f"{args.job}: no [sweep] table (docs/tune.md); to train once, use `twinhpc train`")
    out = args.out
    if out is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        out = Path("sweeps") / f"{Path(args.job).stem}-{stamp}"
        n = 1
        while Path(out).exists():
            n += 1
            out = Path("sweeps") / f"{Path(args.job).stem}-{stamp}-{n}"
    sweep = Sweep.create(job, out, executor=args.executor)
    print(f"sweep {out}: {sweep.scheduler.budget} trials, rungs {list(sweep.rungs)} epochs, executor {args.executor}")
    return drive(sweep, args)
