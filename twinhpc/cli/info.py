"""``twinhpc info``: what this job runs on, printed once by rank 0 (table or JSON)."""

from __future__ import annotations

import argparse
import json

from .main import add_common, setup_logging_for

DESCRIPTION = """\
Print the startup table: twinhpc, python and torch versions, how the compiled extension was
built (CUDA, the MPI it was compiled against), the MPI library mpi4py loaded and its thread
level, then one row per rank (host, local rank, pid, torch threads, devices) and the Slurm and
Open MPI variables each rank sees, plus warnings for mismatches (e.g. an srun --mpi setting that
started every rank as a singleton). Works without the compiled extension ("not built").

Run it the way the real job will run, to check the launch:
  mpirun -n 4 twinhpc info        srun -n 4 twinhpc info        twinhpc info --json
"""


def add_parser(sub):
    p = sub.add_parser(
        "info",
        help="show versions, the build, the MPI world and each rank",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_common(p)
    return p


def run(args) -> int:
    from ..comm.world import get_world
    from ..env import format_report, startup_report

    world = get_world()
    setup_logging_for(args, world)
    report = startup_report(world)
    if report is not None:
        print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    return 0
