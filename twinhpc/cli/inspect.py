"""``twinhpc inspect DIR [--json]``."""

from __future__ import annotations

import argparse
import json

from .main import add_common, setup_logging_for


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect",
        help="show a dataset's schema, splits, counts and field statistics",
        description="Show a dataset's schema, splits, sample counts, class counts and per-field "
        "statistics (min/max/mean/std; text lengths) from up to --max-samples samples "
        "per split. Under MPI, rank 0 does the work and prints.",
    )
    p.add_argument("dir", metavar="DIR", help="dataset directory (made by `twinhpc ingest`)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--max-samples",
        type=int,
        default=10000,
        metavar="N",
        help="samples per split used for statistics (default 10000)",
    )
    add_common(p)
    return p


def run(args) -> int:
    from ..comm.world import get_world
    from ..data.inspect import format_report, inspect_dataset
    from ..errors import DatasetError

    world = get_world()
    setup_logging_for(args, world)
    report = world.run(lambda: inspect_dataset(args.dir, args.max_samples) if world.is_root else None, DatasetError)
    if world.is_root:
        print(json.dumps(report, indent=2) if args.json else format_report(report), flush=True)
    return 0
