"""``twinhpc verify DIR``."""

from __future__ import annotations

import argparse
import logging
import time

from .main import add_common, setup_logging_for

log = logging.getLogger("twinhpc")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "verify",
        help="check every shard's checksum and schema against the manifest",
        description="Check a dataset: every shard listed in the manifest exists, its SHA-256 "
        "matches, and its fields have the manifest's dtypes, shapes and counts. "
        "Under MPI the shards are divided among the ranks. Exit status 0 when intact, "
        "1 when any shard is bad (each named on stderr), 2 when the manifest itself "
        "is missing or malformed.",
    )
    p.add_argument("dir", metavar="DIR", help="dataset directory")
    add_common(p)
    return p


def run(args) -> int:
    from ..comm.world import get_world
    from ..data.inspect import verify_dataset

    world = get_world()
    setup_logging_for(args, world)
    t0 = time.perf_counter()
    manifest, problems, warnings = verify_dataset(args.dir, world)
    n = sum(len(s.shards) for s in manifest.splits)
    if world.is_root:
        for w in warnings:
            log.warning("warning: %s", w)
    if problems:
        if world.is_root:
            for p in problems:
                log.error("BAD %s", p)
            log.error("verify %s: %d of %d shard(s) bad", args.dir, len({p.split(":")[0] for p in problems}), n)
        return 1
    log.info(
        "verify %s: OK, %d shard(s), %d samples, checked on %d rank(s) in %.1f s",
        args.dir,
        n,
        sum(s.count for s in manifest.splits),
        world.size,
        time.perf_counter() - t0,
    )
    return 0
