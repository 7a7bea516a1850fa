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
prints the table (or JSON) and writes a new record FOLDER/NAME/<UTC time>-<commit>.h5.
`twinhpc bench report` renders docs/benchmarks.md from the records. `twinhpc bench NAME --help`
explains one.
"""

LOADER_DESCRIPTION = """\
Measure the rank-aware loader (twinhpc.data.loader.ShardedLoader) on DIR, and in the same run
the raw sequential HDF5 read of the same shard files, then print per-rank and total samples/s
and MB/s and the ratio loader/raw (target >= 0.8).

Raw read: each rank reads its contiguous 1/N of the split, shard by shard, in slices of about
8 MiB, into reused buffers. A warm-up pass of both comes first (page cache, open files); then
ROUNDS rounds alternate raw and loader measurements, and the medians are reported, since shared
machines are noisy. MB counts the numeric fields (1 MB = 10^6 bytes); totals are all ranks'
bytes over the slowest rank's time.

Results go to a new record FOLDER/loader/<UTC time>-<commit>.h5 (written by rank 0; never over
an earlier run's; docs/benchmark-records.md): datasets `ranks` (one row per
rank), `total` and `rounds`, attributes dataset, world_size, batch_size, ratio, target, pass.
Read it with `h5dump`. The exit status is 0 whether or not the target is met.

example:
  mpirun -n 2 twinhpc bench loader data/cifar10 --batch-size 256 --json
"""


def add_loader(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "loader",
        help="loader throughput against a raw sequential read",
        description=LOADER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DIR", help="dataset directory (made by `twinhpc ingest`)")
    p.add_argument("--split", default="train", help="split to read (default train)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="batch size per rank (default 256)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--epochs", type=int, default=1, metavar="E", help="loader epochs (and raw passes) per measurement (default 1)"
    )
    how.add_argument(
        "--seconds", type=float, metavar="S", help="instead: whole epochs/passes until S seconds have passed"
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=2,
        metavar="K",
        help="batches prefetched by the loader's thread (default 2; 0: none)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, metavar="R", help="alternating rounds; medians reported (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.add_argument(
        "--results", default="bench-results", metavar="FOLDER", help="folder of the records (default ./bench-results)"
    )
    return p


def run_loader(args) -> int:
    from ..bench.loader import bench_loader, report
    from ..comm.world import get_world

    world = get_world()
    setup_logging_for(args, world)
    figures = bench_loader(
        args.dataset,
        split=args.split,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seconds=args.seconds,
        prefetch=args.prefetch,
        rounds=args.rounds,
        results=args.results,
        world=world,
    )
    if world.is_root:
        print(json.dumps(figures, indent=2) if args.json else report(figures), flush=True)
    return 0


ALLREDUCE_DESCRIPTION = """\
Measure the all-reduce engine (twinhpc.comm.engine.Engine: each algorithm and `auto`) against
mpi4py's Allreduce on numpy buffers (MPI's defaults, and each Open MPI algorithm forced on its
own communicator), torch.distributed gloo (and NCCL with GPUs), and a memcpy of the same size,
interleaved in one job, for float32 messages of powers of 4 from --min-bytes to --max-bytes.
Prints time, algbw and busbw = algbw * 2(n-1)/n per implementation and size, then the ratios of
twinhpc:auto over mpi4py (target >= 1.0 from 1 MiB) and over the best MPI row (target >= 0.9).
Figures are medians over the rounds (the order reversed every other round); each ratio is the
median of the ratios within a round, where the two ran seconds apart (VM speed drifts).

Results go to a new record FOLDER/allreduce/<UTC time>-<commit>.h5 (written by rank 0; never
over an earlier run's; docs/benchmark-records.md): compound datasets `rows` and
`ratios`, attributes world_size, rounds, targets. The exit status is 0 whether or not the
targets are met.

example:
  mpirun -n 2 twinhpc bench allreduce --max-bytes 64MiB
"""


def parse_bytes(text: str) -> int:
    """``"4096"``, ``"64KiB"``, ``"64MiB"``, ``"1GiB"`` -> bytes."""
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit) and t[: -len(unit)].isdigit():
            return int(t[: -len(unit)]) * factor
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 64KiB, 64MiB)")


def add_allreduce(sub) -> argparse.ArgumentParser:
    # the defaults stay in twinhpc.bench.allreduce (DEFAULT_MIN_BYTES, DEFAULT_MAX_BYTES): that
    # module imports torch, which building the parser must not (tests check the help's figures)
    p = sub.add_parser(
        "allreduce",
        help="the all-reduce engine against MPI, mpi4py and gloo",
        description=ALLREDUCE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--min-bytes", type=parse_bytes, metavar="B", help="smallest message (default 4KiB)")
    p.add_argument(
        "--max-bytes",
        type=parse_bytes,
        metavar="B",
        help="largest message (default 64MiB; up to 256MiB as memory allows)",
    )
    p.add_argument(
        "--rounds", type=int, default=7, metavar="R", help="interleaved rounds; medians reported (default 7)"
    )
    p.add_argument("--no-gloo", action="store_true", help="skip torch.distributed (gloo / NCCL)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument(
        "--results", default="bench-results", metavar="FOLDER", help="folder of the records (default ./bench-results)"
    )
    return p


def run_allreduce(args) -> int:
    from ..bench.allreduce import DEFAULT_MAX_BYTES, DEFAULT_MIN_BYTES, bench_allreduce, report
    from ..comm.world import get_world

    world = get_world()
    setup_logging_for(args, world)
    min_bytes = DEFAULT_MIN_BYTES if args.min_bytes is None else args.min_bytes
    max_bytes = DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes
    figures = bench_allreduce(
        min_bytes, max_bytes, rounds=args.rounds, gloo=not args.no_gloo, results=args.results, world=world
    )
    if world.is_root:
        print(json.dumps(figures["rows"], indent=1) if args.json else report(figures), flush=True)
    return 0


REPORT_DESCRIPTION = """\
Render the benchmark page from the recorded runs in FOLDER (default benchmarks/results): every
benchmark run writes a new record FOLDER/<benchmark>/<UTC time>-<commit>.h5 (docs/benchmark-records.md).
Per target of twinhpc/bench/targets.py the page shows the target, the latest figure of its
default configuration, the median and range over the recorded runs of that configuration,
their number, and the date, machine and commit of the latest run; one PNG per benchmark plots
the key figures over the runs with the target line.

Verdicts: met when the median of at least 5 runs of the default configuration meets the target,
not met when it misses it, "not established (k runs)" below 5 runs; GPU rows say "not run" until
a GPU run is recorded. Runs on one process, no MPI.

example:
  twinhpc bench report                      # benchmarks/results -> docs/benchmarks.md, docs/benchmarks/*.png
  twinhpc bench report bench-results --out /tmp/page.md
"""


def add_report(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="the benchmark page (docs/benchmarks.md) from the recorded runs",
        description=REPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "folder",
        nargs="?",
        default="benchmarks/results",
        metavar="FOLDER",
        help="the records (default benchmarks/results)",
    )
    p.add_argument("--out", default="docs/benchmarks.md", metavar="PAGE", help="the page (default docs/benchmarks.md)")
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="folder for the PNGs (default: beside the page, PAGE without .md: docs/benchmarks/)",
    )
    return p


def run_report(args) -> int:
    from pathlib import Path

    from ..bench.report import write_page

    out = Path(args.out)
    made = write_page(args.folder, out, args.plots or out.with_suffix(""))
    print(f"{made['page']}: {made['records']} records; plots: {', '.join(made['plots']) or 'none'}", flush=True)
    return 0


#: benchmark name -> (add its sub-parser, run it)
BENCHMARKS = {
    "loader": (add_loader, run_loader),
    "allreduce": (add_allreduce, run_allreduce),
    "report": (add_report, run_report),
}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="benchmarks (loader, allreduce) and their page (report)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add, _ in BENCHMARKS.values():
        add_common(add(benches))
    return p


def run(args) -> int:
    return BENCHMARKS[args.benchmark][1](args)
