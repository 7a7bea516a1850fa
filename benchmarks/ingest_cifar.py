"""Benchmark: ingest of a CIFAR-10-sized set (60,000 x 32x32x3) on 2 ranks in under a minute.

The script writes a synthetic CIFAR-10 python-version directory of full size (``data_batch_1..5``
of 10,000 images and ``test_batch`` of 10,000; random pixels; the real file format) with
``tests/fixtures.py``, or reuses the one already in ``--work``, then times::

    mpirun -n R --oversubscribe PYTHON -m twinhpc ingest cifar10 SRC --out OUT --shards 4 --overwrite

for each R of ``--ranks`` (default 1 and 2: the target and the scaling ratio). The time is the
wall time of the whole command, MPI start-up included. It prints a table (ranks, seconds,
samples/s, target met), or the rows as JSON with ``--json``, and writes the figures as a new
record ``--results DIR/ingest_cifar/<UTC time>-<commit>.h5`` (table ``rows``, the settings as
attributes; docs/benchmark-records.md).

Exit status: 0 when the target is met, 1 when it is not, 2 when an ingest fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import fixtures as fx  # noqa: E402
from twinhpc.bench.targets import INGEST_RANKS, INGEST_SECONDS  # noqa: E402
from twinhpc.io.bench_results import write_results  # noqa: E402

PER_BATCH = 10_000
RESULTS_FILE = "ingest_cifar.h5"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--work",
        type=Path,
        help="directory for the synthetic source and the datasets; an existing "
        "source in WORK/cifar-10-batches-py is reused (default: a temporary directory, removed after)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=Path("benchmark-results"),
        help="directory of the records (default ./benchmark-results)",
    )
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts to time (default 1,2)")
    p.add_argument(
        "--target-seconds",
        type=float,
        default=INGEST_SECONDS,
        help=f"the target wall time (default {INGEST_SECONDS:g})",
    )
    p.add_argument(
        "--target-ranks",
        type=int,
        default=INGEST_RANKS,
        help=f"the rank count the target applies to (default {INGEST_RANKS})",
    )
    p.add_argument("--shards", type=int, default=4, help="shards per split (default 4)")
    p.add_argument(
        "--per-batch",
        type=int,
        default=PER_BATCH,
        help=f"images per batch file, six files (default {PER_BATCH}: the real size)",
    )
    p.add_argument("--mpirun", default="mpirun", help="the MPI launcher (default mpirun)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args(argv)
    args.ranks = [int(r) for r in args.ranks.split(",")]
    return args


def ensure_source(src: Path, per_batch: int) -> None:
    """Write the synthetic batches into ``src`` unless a complete set of that size is there."""
    names = [*fx.CIFAR_TRAIN_BATCHES, fx.CIFAR_TEST_BATCH]
    marker = src / f".complete-{per_batch}"
    if marker.exists() and all((src / n).is_file() for n in names):
        return
    fx.write_cifar10(src, n_train_per_batch=per_batch, n_test=per_batch, seed=0)
    marker.write_text("")


def time_ingest(args, ranks: int, src: Path, out: Path) -> float:
    """Wall seconds of one ``mpirun -n ranks ... twinhpc ingest``; exits with status 2 if it fails."""
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers run as root; Open MPI refuses without these
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        args.mpirun,
        "-n",
        str(ranks),
        "--oversubscribe",
        sys.executable,
        "-m",
        "twinhpc",
        "ingest",
        "cifar10",
        str(src),
        "--out",
        str(out),
        "--shards",
        str(args.shards),
        "--overwrite",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.stderr.write(f"ingest on {ranks} rank(s) failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stderr}")
        raise SystemExit(2)
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest-cifar-"))
    try:
        src = work / "cifar-10-batches-py"
        ensure_source(src, args.per_batch)
        samples = 6 * args.per_batch
        rows = []
        for ranks in args.ranks:
            seconds = time_ingest(args, ranks, src, work / f"dataset-{ranks}")
            rows.append(
                {
                    "ranks": ranks,
                    "seconds": round(seconds, 3),
                    "samples_per_s": round(samples / seconds, 1),
                    "target_met": seconds <= args.target_seconds,
                }
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    at_target = [r for r in rows if r["ranks"] == args.target_ranks]
    passed = bool(at_target) and all(r["target_met"] for r in at_target)
    by_ranks = {r["ranks"]: r["seconds"] for r in rows}
    speedup = by_ranks[1] / by_ranks[args.target_ranks] if {1, args.target_ranks} <= set(by_ranks) else float("nan")
    record = write_results(
        args.results / RESULTS_FILE,
        {"rows": rows},
        {
            "benchmark": "ingest_cifar",
            "samples": samples,
            "shards": args.shards,
            "target": f"{samples} samples on {args.target_ranks} ranks in under {args.target_seconds:g} s",
            "target_seconds": args.target_seconds,
            "target_ranks": args.target_ranks,
            "passed": passed,
            f"speedup_1_to_{args.target_ranks}": speedup,
        },
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"ingest cifar10: {samples} samples, {args.shards} shards per split, target: "
            f"under {args.target_seconds:g} s on {args.target_ranks} ranks"
        )
        print(f"{'ranks':>5}  {'seconds':>8}  {'samples/s':>10}  target met")
        for r in rows:
            print(
                f"{r['ranks']:>5}  {r['seconds']:>8.2f}  {r['samples_per_s']:>10.0f}  "
                f"{'yes' if r['target_met'] else 'no'}"
            )
        print(f"speedup 1 -> {args.target_ranks} ranks: {speedup:.2f}x; results: {record}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
