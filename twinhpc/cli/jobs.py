"""``twinhpc jobs RUN|SWEEP ... [--json]``: what was submitted there, and its state now."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
RUN: the submissions recorded in RUN/submitted.json (`twinhpc submit`), or in the run
directories one level below a folder: job id, verb, executor, ranks, state, exit code, elapsed
time and the job's output file.

SWEEP (a folder holding sweep.h5): one row per trial handed to an executor, its latest segment's
job as sweep.h5 records it: trial, job id, executor, state, node, the trial's status in the
sweep, and its log.

Slurm's states come from one batched squeue call for all the jobs of all the paths (the
controller's live view) and one sacct call for those that have ended or that it no longer holds
(the exit code); a local job's from submitit's result file (read without
unpickling it) and its process; a debug trial ran in the sweep driver's own process.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "jobs",
        help="state of the jobs of runs and sweeps (one sacct call)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="RUN|SWEEP", help="run directory, a folder of them, or a sweep folder")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    return p


def _table(header: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Columns right-aligned, the last ``left`` ones left-aligned."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    cut = len(header) - left
    return [
        "  ".join(c.rjust(w) if i < cut else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in cells
    ]


def run(args) -> int:
    from pathlib import Path

    from ..io.sweep import SWEEP_FILE
    from ..tune.submit import job_states

    rows = job_states(args.paths)
    if args.json:
        print(json.dumps(rows, indent=1), flush=True)
        return 0
    runs = [r for r in rows if "trial" not in r]
    if runs:
        print(
            f"{'job id':>12} {'verb':>8} {'executor':>8} {'ranks':>5} {'state':>12} {'exit':>6} {'elapsed':>10}  output"
        )
        for r in runs:
            print(
                f"{r['job_id']:>12} {r['verb']:>8} {r['executor']:>8} {r['ranks']:>5} {r['state']:>12} "
                f"{r.get('exit_code', ''):>6} {r.get('elapsed', ''):>10}  {r['stdout']}",
                flush=True,
            )
    sweeps = list(dict.fromkeys(str(Path(p)) for p in args.paths if (Path(p) / SWEEP_FILE).is_file()))
    for i, sweep in enumerate(sweeps):
        trials = [r for r in rows if r.get("sweep") == sweep]
        if runs or i:
            print()
        if not trials:
            print(f"sweep {sweep}: no trial handed to an executor yet", flush=True)
            continue
        print(f"sweep {sweep}: {len(trials)} trial job(s)")
        header = ["trial", "job id", "executor", "state", "node", "status", "log"]
        body = [
            [
                str(r["trial"]),
                r["job_id"] or "-",
                r["executor"] or "-",
                r["state"],
                r["node"] or "-",
                r["status"],
                r["log"],
            ]
            for r in trials
        ]
        print("\n".join(_table(header, body, left=5)), flush=True)
    return 0
