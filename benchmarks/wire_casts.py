"""The 16-bit wire casts and sums, vector against scalar: ``python benchmarks/wire_casts.py [options]``."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from twinhpc import ops
from twinhpc.bench import format_table, median
from twinhpc.io.bench_results import write_results

DESCRIPTION = """\
Times the kernels behind DataParallel's 16-bit wire formats (docs/data-parallel.md) and the
engine's float16/bfloat16 sums, on one process with one thread, with the AVX2/F16C conversions
of csrc/simd16.cpp (`vector`) and with the scalar c10 conversions they replace (`scalar`) —
the before and after of one change, measured in the same run: the two alternate within each
round, the order reversed every other round; times are medians, and `speedup` is the median of
the per-round ratios scalar / vector. Both paths must give the same bits (checked on every row;
the tests check them against numpy: tests/unit/test_simd16.py).

Rows, for bfloat16 and float16, on a gradient bucket of --mib MiB of float32:
  pack     float32 bucket -> 16-bit wire buffer (ops.pack with dtype)
  unpack   16-bit buffer -> float32 bucket, times 1/ranks (ops.unpack with scale)
  sum      two 16-bit buffers summed in float32, rounded once (the engine's reduce_many)

Prints a table (--json: the rows as JSON) and writes a new record
FOLDER/wire_casts/<UTC time>-<commit>.h5 (table `wire_casts`, row names in the attribute `names`;
docs/benchmark-records.md). Exit status 1 if the CPU lacks AVX2/F16C (nothing to
compare) or the two paths differ.

example:
  python benchmarks/wire_casts.py --mib 12 --rounds 9
"""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="wire_casts.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mib", type=float, default=12.0, help="bucket size in MiB of float32 (default 12)")
    p.add_argument("--rounds", type=int, default=9, help="alternating rounds; medians reported (default 9)")
    p.add_argument("--repeat", type=int, default=10, help="calls per timed batch (default 10)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--results", default="bench-results", help="folder of the records (default ./bench-results)")
    args = p.parse_args(argv)
    if args.mib <= 0 or args.rounds < 1 or args.repeat < 1:
        p.error("--mib must be > 0, --rounds and --repeat >= 1")
    return args


def cases(n: int, dtype: torch.dtype) -> dict:
    """name -> (call, output tensor to compare across paths)."""
    core = ops._load()
    g = torch.Generator().manual_seed(0)
    bucket = torch.randn(n, generator=g) * 100
    wire = bucket.to(dtype)
    other = (torch.randn(n, generator=g) * 100).to(dtype)
    out, total = torch.empty(n), torch.empty(n, dtype=dtype)
    packed = {}

    def pack():
        packed["flat"] = ops.pack([bucket], dtype=dtype)

    return {
        "pack": (pack, lambda: packed["flat"]),
        "unpack": (lambda: ops.unpack(wire, [out], scale=0.5), lambda: out),
        "sum": (lambda: core.reduce_many(total, [wire, other]), lambda: total),
    }


def run(args) -> list[dict]:
    core = ops._load()
    if not core.simd16_available():
        raise SystemExit("wire_casts.py: this CPU lacks AVX2 or F16C: there is no vector path to compare")
    torch.set_num_threads(1)
    n = int(args.mib * (1 << 20)) // 4
    rows = []
    before = core.set_simd16(True)
    try:
        for dtype in (torch.bfloat16, torch.float16):
            for name, (call, result) in cases(n, dtype).items():
                times = {"vector": [], "scalar": []}
                outputs = {}
                for path in ("vector", "scalar"):  # warm-up, and the bits of each path
                    core.set_simd16(path == "vector")
                    call()
                    outputs[path] = result().clone()
                for r in range(args.rounds):
                    for path in ("vector", "scalar") if r % 2 == 0 else ("scalar", "vector"):
                        core.set_simd16(path == "vector")
                        t0 = time.perf_counter()
                        for _ in range(args.repeat):
                            call()
                        times[path].append((time.perf_counter() - t0) / args.repeat)
                a, b = outputs["vector"], outputs["scalar"]
                same = bool(
                    torch.equal(
                        a.view(torch.int16) if a.dtype != torch.float32 else a.view(torch.int32),
                        b.view(torch.int16) if b.dtype != torch.float32 else b.view(torch.int32),
                    )
                )
                gb = n * 4 / 1e9
                rows.append(
                    {
                        "name": f"{name}_{str(dtype).removeprefix('torch.')}",
                        "elements": n,
                        "vector_ms": median(times["vector"]) * 1e3,
                        "scalar_ms": median(times["scalar"]) * 1e3,
                        "vector_gfloat_s": gb / 4 / median(times["vector"]),
                        "speedup": median(s / v for s, v in zip(times["scalar"], times["vector"])),
                        "same_bits": same,
                    }
                )
    finally:
        core.set_simd16(before)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"wire_casts: {args.mib:g} MiB float32 bucket, 1 thread, "
            f"{args.rounds} rounds x {args.repeat} calls (medians)"
        )
        print(
            format_table(
                rows,
                {
                    "name": "",
                    "elements": "d",
                    "vector_ms": ".3f",
                    "scalar_ms": ".3f",
                    "vector_gfloat_s": ".2f",
                    "speedup": ".2f",
                    "same_bits": "",
                },
            )
        )
    path = write_results(
        f"{args.results}/wire_casts.h5",
        {"wire_casts": [{k: v for k, v in r.items() if k != "name"} for r in rows]},
        {
            "names": [r["name"] for r in rows],
            "mib": args.mib,
            "rounds": args.rounds,
            "repeat": args.repeat,
            "threads": 1,
        },
    )
    print(f"results: {path.absolute()}", flush=True)
    return 0 if all(r["same_bits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
