"""``twinhpc preprocess JOB.toml [--set k=v]``."""

from __future__ import annotations

import argparse
import shlex
import sys

from .main import add_common, add_overrides, setup_logging_for

DESCRIPTION = """\
Fit preprocessing on the training split of the job's dataset and write the preprocessed dataset
(job.preprocessed_dir: [preprocess] out, default <data.dataset>-pre) with its fitted state
state.h5: image per-channel mean/std, tabular per-feature mean/std, text vocabulary and idf.
Every later step (train, validate, predict) reads it. Running it again with an unchanged job and
dataset does nothing and says so. Under `mpirun -n N` / `srun` the ranks share the work; the
result is the same for every N. Format: docs/preprocess.md.

Numeric input fields (tabular data) are standardised: a NaN or inf value in any split (a CSV's
NA, an overflow) is an error naming the field, the split and the first sample holding one, and
nothing is written. --allow-nonfinite replaces each such value by its column's mean over the
finite values of the training split (which the fitted statistics are computed from) and reports
how many it replaced.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "preprocess",
        help="fit statistics/vocabularies and write the preprocessed dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file")
    add_overrides(p, "preprocess.text.max_vocab=20000")
    p.add_argument("--force", action="store_true", help="rewrite even when the existing one is up to date")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="replace NaN and inf values of numeric input fields by their column's finite training mean "
        "(default: refuse them, naming the field, split and first sample)",
    )
    add_common(p)
    return p


def run(args) -> int:
    from ..comm.world import get_world
    from ..config import load_job
    from ..preprocess import preprocess

    world = get_world()
    setup_logging_for(args, world)
    job = world.run(lambda: load_job(args.job, args.overrides))
    result = preprocess(
        job,
        world=world,
        force=args.force,
        command="twinhpc " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        allow_nonfinite=args.allow_nonfinite,
    )
    if world.is_root:
        samples = ", ".join(f"{k} {v}" for k, v in result["samples"].items())
        if result["status"] == "up to date":
            print(f"{result['path']}: up to date (same job settings and dataset); nothing to do")
        else:
            print(f"wrote {result['path']} ({samples}) in {result['seconds']:.1f} s on {world.size} rank(s)")
        print(f"  {result['kind']}: {result['summary']}")
        for name, splits in result.get("imputed", {}).items():
            counts = ", ".join(f"{split} {n}" for split, n in splits.items())
            print(
                f"  {name}: {sum(splits.values())} NaN/inf value(s) replaced by the column's training mean ({counts})"
            )
    return 0
