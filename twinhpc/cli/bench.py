"""``twinhpc bench BENCHMARK ...``: measurements that run under ``mpirun``.

Each benchmark is a sub-command declared in :data:`BENCHMARKS` (name -> ``(add_parser, run)``);
its work is done by ``twinhpc.bench.<name>``, which ``benchmarks/<name>.py`` also calls.
"""

from __future__ import annotations

import argparse
import json

from .main import add_common, setup_logging_for

DESCRIPTION = """\
Benchmarks. Run them under MPI like any verb (`mpirun -n N twinhpc bench NAME ...`); rank 0
prints the table (or JSON) and writes FOLDER/NAME.h5. `twinhpc bench NAME --help` explains one.
"""

LOADER_DESCRIPTION = """\
Measure the rank-aware loader (twinhpc.data.loader.ShardedLoader) on DIR, and in the same run
the raw sequential h5py read of the same shard files, then print per-rank and total samples/s
and MB/s and the ratio loader/raw (target >= 0.8).

Raw read: each rank reads its contiguous 1/N of the split, shard by shard, in slices of about
8 MiB, into reused buffers. A warm-up pass of both comes first (page cache, open files); then
ROUNDS rounds alternate raw and loader measurements, and the medians are reported, since shared
machines are noisy. MB counts the numeric fields (1 MB = 10^6 bytes); totals are all ranks'
bytes over the slowest rank's time.

Results go to FOLDER/loader.h5 (written by rank 0, atomically): datasets `ranks` (one row per
rank), `total` and `rounds`, attributes dataset, world_size, batch_size, ratio, target, pass.
Read it with `h5dump FOLDER/loader.h5`. The exit status is 0 whether or not the target is met.

example:
  mpirun -n 2 twinhpc bench loader data/cifar10 --batch-size 256 --json
"""


def add_loader(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("loader", help="loader throughput against a raw sequential read",
                       description=LOADER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DIR", help="dataset directory (made by `twinhpc ingest`)")
    p.add_argument("--split", default="train", help="split to read (default train)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="batch size per rank (default 256)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--epochs", type=int, default=1, metavar="E",
                     help="loader epochs (and raw passes) per measurement (default 1)")
    how.add_argument("--seconds", type=float, metavar="S",
                     help="instead: whole epochs/passes until S seconds have passed")
    p.add_argument("--prefetch", type=int, default=2, metavar="K", help="batches prefetched by the loader's thread (default 2; 0: none)")
    p.add_argument("--rounds", type=int, default=3, metavar="R", help="alternating rounds; medians reported (default 3)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.add_argument("--results", default="bench-results", metavar="FOLDER",
                   help="folder for loader.h5 (default ./bench-results)")
    return p


def run_loader(args) -> int:
    from ..bench.loader import bench_loader, report
    from ..comm.world import get_world

    world = get_world()
    setup_logging_for(args, world)
    figures = bench_loader(args.dataset, split=args.split, batch_size=args.batch_size, epochs=args.epochs,
                           seconds=args.seconds, prefetch=args.prefetch, rounds=args.rounds,
                           results=args.results, world=world)
    if world.is_root:
        print(json.dumps(figures, indent=2) if args.json else report(figures), flush=True)
    return 0


#: benchmark name -> (add its sub-parser, run it)
BENCHMARKS = {"loader": (add_loader, run_loader)}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmarks (loader)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (add, _) in BENCHMARKS.items():
        add_common(add(benches))
    return p


def run(args) -> int:
    return BENCHMARKS[args.benchmark][1](args)
