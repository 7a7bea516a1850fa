"""``twinhpc jobs RUN|SWEEP ... [--json]``: what was submitted there, and its state now."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
The submissions recorded in RUN/submitted.json (`twinhpc submit`), or in the run directories
one level below a SWEEP: job id, verb, executor, ranks, state, exit code, elapsed time, nodes
and the job's output file. Slurm's states come from one batched sacct call for all the jobs
(squeue when accounting does not answer); a local job's from submitit's files and its process.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "jobs",
        help="state of the jobs submitted into run directories (one sacct call)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="RUN|SWEEP", help="run directory, or a folder of them")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    return p


def run(args) -> int:
    from ..tune.submit import job_states

    rows = job_states(args.paths)
    if args.json:
        print(json.dumps(rows, indent=1), flush=True)
        return 0
    print(f"{'job id':>12} {'verb':>8} {'executor':>8} {'ranks':>5} {'state':>12} {'exit':>6} {'elapsed':>10}  output")
    for r in rows:
        print(
            f"{r['job_id']:>12} {r['verb']:>8} {r['executor']:>8} {r['ranks']:>5} {r['state']:>12} "
            f"{r.get('exit_code', ''):>6} {r.get('elapsed', ''):>10}  {r['stdout']}",
            flush=True,
        )
    return 0
