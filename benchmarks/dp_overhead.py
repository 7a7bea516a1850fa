"""Data-parallel overhead: ``mpirun -n N python benchmarks/dp_overhead.py [options]`` (``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from twinhpc.bench import format_table, median
from twinhpc.bench.targets import DP_OVERHEAD_RATIO
from twinhpc.comm.ddp import DataParallel
from twinhpc.comm.world import get_world
from twinhpc.config.defaults import BUCKET_CAP_MB
from twinhpc.io.bench_results import write_results

DESCRIPTION = f"""\
Step time of data-parallel training (twinhpc.comm.ddp.DataParallel) on N ranks against the same
per-rank work with communication off, at one intra-op thread per rank.

The model (--model) is either `mlp`, an MLP (WIDTH inputs, LAYERS hidden layers of WIDTH units, 10
outputs; the defaults give 3.16M float32 parameters, 12.6 MB of gradients, with little compute per
gradient byte: the communication-heavy stress case), or `resnet18`, twinhpc's ResNet-18 for
32x32x3 images (11.2M parameters, 44.7 MB of gradients: the CIFAR-10 worked case). Each rank
trains on its own fixed random batches of BATCH samples (cross-entropy, SGD). A step is forward,
backward, (synchronize), optimizer step. Measured in one run, interleaved: after a warm-up step of each, ROUNDS rounds
each time STEPS steps of the communication-free model and of one DataParallel model per
(bucket cap, wire dtype, overlap setting), in alternating order; a measurement's time is the slowest rank's
(barrier before, MPI max after), and the medians over rounds are reported. ratio = step time with
communication / step time without (target <= 1.10 on 2 ranks), the median of the per-round
ratios; ratio_min and ratio_max are the smallest and largest of them (how much the machine moved
during the run). wait_s is the median time per step spent in synchronize(), i.e. communication
that backward did not hide; without overlap (overlap 0) the sums run inside backward, in the
gradient hooks, so wait_s is about 0 and their cost is in step_s_comm.

The physical reference: memcpy_s is the median time (slowest rank) of every rank copying a buffer
of the gradients' size at once (measured in every round, one intra-op thread). On one node the
float32 all-reduce moves about two such copies per step (the hook copies each gradient into its
bucket; the in-place shared-memory sum reads and writes each byte once), work that no overlap
hides when every core computes; the report prints it as a share of the step without
communication: the scale of the overhead to expect on a machine with as many ranks as cores
(not an exact floor: caches and allocation differ between the two steps), and a record of how
fast the machine's memory was during the run.

All DataParallel models start from the same parameters and see the same batches, so their
parameters after the run can be compared: max_rel_diff is max over tensors of max|p - q| / max|q|
against the first float32 model (0 between float32 models of any cap).

Rank 0 prints a table (or with --json the rows as JSON: impl, ranks, bytes, time_s,
step_s_comm, step_s_nocomm, ratio, ratio_min, ratio_max, wait_s, bucket_cap_mb, buckets,
overlap_setting, overlap (1: CPU buckets summed by the engine's thread, 0: on the calling thread),
wire_dtype, max_rel_diff, memcpy_s, memcpy_gbps) and
writes a new record FOLDER/dp_overhead/<UTC time>-<commit>.h5 (docs/benchmark-records.md; the
model is its attribute `model`): one table per wire dtype (a row per bucket cap and overlap
setting: the JSON rows' columns but impl, wire_dtype and the memcpy figures, which are
attributes) and the settings as attributes. The record names the allocator settings of the
environment (`allocator`: "default", or e.g. MALLOC_TRIM_THRESHOLD_=...): the target is judged
on the default allocator.

example:
  mpirun -n 2 python benchmarks/dp_overhead.py --bucket-cap-mb 1,5,{BUCKET_CAP_MB:g},100 --wire-dtype float32,bfloat16
  mpirun -n 2 python benchmarks/dp_overhead.py --overlap auto,on,off --bucket-cap-mb 4,25
"""

TARGET = DP_OVERHEAD_RATIO
WIRE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
BATCHES = 4  # distinct batches per rank, cycled
OVERLAPS = {"auto": None, "on": True, "off": False}  # --overlap -> DataParallel(overlap=...)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="dp_overhead.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=("mlp", "resnet18"), default="mlp", help="the model (default mlp)")
    p.add_argument("--width", type=int, default=1024, help="MLP input and hidden width (default 1024)")
    p.add_argument("--layers", type=int, default=3, help="hidden layers (default 3)")
    p.add_argument("--batch", type=int, help="samples per rank per step (default: mlp 64, resnet18 8)")
    p.add_argument("--steps", type=int, default=10, help="steps per measurement (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported (default 5)")
    p.add_argument(
        "--bucket-cap-mb",
        default=f"{BUCKET_CAP_MB:g}",
        metavar="CAPS",
        help=f"comma-separated bucket caps in MiB to measure (default {BUCKET_CAP_MB:g}, the library default)",
    )
    p.add_argument(
        "--wire-dtype",
        default="float32",
        metavar="DTYPES",
        help=f"comma-separated wire dtypes among {', '.join(WIRE_DTYPES)} (default float32)",
    )
    p.add_argument(
        "--overlap",
        default="auto",
        metavar="MODES",
        help="comma-separated DataParallel overlap settings among auto (the library default: "
        "the engine's thread only with a spare core per rank), on (CPU buckets summed by the "
        "engine's thread during backward), off (summed on the calling thread) (default auto)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument(
        "--results",
        default="bench-results",
        metavar="FOLDER",
        help="folder for dp_overhead.h5 (default ./bench-results)",
    )
    args = p.parse_args(argv)
    args.batch = args.batch or {"mlp": 64, "resnet18": 8}[args.model]
    args.caps = [float(c) for c in args.bucket_cap_mb.split(",")]
    args.wires = ["float32"] + [w for w in args.wire_dtype.split(",") if w != "float32"]  # float32: the reference
    unknown = [w for w in args.wires if w not in WIRE_DTYPES]
    if unknown:
        p.error(f"--wire-dtype: unknown {', '.join(unknown)} (choose among {', '.join(WIRE_DTYPES)})")
    args.overlaps = args.overlap.split(",")
    unknown = [o for o in args.overlaps if o not in OVERLAPS]
    if unknown:
        p.error(f"--overlap: unknown {', '.join(unknown)} (choose among {', '.join(OVERLAPS)})")
    return args


def make_model(args) -> nn.Module:
    if args.model == "resnet18":
        from twinhpc.models import build

        torch.manual_seed(0)
        return build("resnet18")
    return mlp(args.width, args.layers)


def describe(args) -> str:
    return "ResNet-18 (32x32x3)" if args.model == "resnet18" else f"MLP {args.layers}x{args.width}"


def mlp(width: int, layers: int) -> nn.Sequential:
    torch.manual_seed(0)
    hidden = [m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*hidden, nn.Linear(width, 10))


class Trainer:
    """One model, its optimizer and batches; ``steps(n)`` trains ``n`` steps."""

    def __init__(self, model: nn.Module, batches, dp: DataParallel | None):
        self.model, self.batches, self.dp = model, batches, dp
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01)
        self.done = 0
        self.wait_s = 0.0

    def steps(self, n: int) -> None:
        for _ in range(n):
            x, y = self.batches[self.done % len(self.batches)]
            self.opt.zero_grad()
            F.cross_entropy(self.model(x), y).backward()
            if self.dp is not None:
                self.wait_s += self.dp.synchronize()
            self.opt.step()
            self.done += 1


def timed(world, trainer: Trainer, steps: int) -> tuple[float, float]:
    """Seconds per step (slowest rank) and synchronize seconds per step (slowest rank)."""
    from mpi4py import MPI

    world.barrier()
    wait0, t0 = trainer.wait_s, time.perf_counter()
    trainer.steps(steps)
    mine = [(time.perf_counter() - t0) / steps, (trainer.wait_s - wait0) / steps]
    return tuple(world.comm.allreduce(v, op=MPI.MAX) for v in mine)


def timed_memcpy(world, src: torch.Tensor, dst: torch.Tensor, repeat: int = 5) -> float:
    """Median seconds of ``dst.copy_(src)`` on every rank at once (slowest rank)."""
    from mpi4py import MPI

    times = []
    for _ in range(repeat):
        world.barrier()
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(world.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return median(times)


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a.parameters(), b.parameters()))


def run(args) -> list[dict]:
    from twinhpc.comm.engine import Engine

    torch.set_num_threads(1)
    world = get_world()
    engine = Engine(comm=world.comm)
    g = torch.Generator().manual_seed(world.rank)
    shape = (3, 32, 32) if args.model == "resnet18" else (args.width,)
    batches = [
        (torch.randn(args.batch, *shape, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
        for _ in range(BATCHES)
    ]
    baseline = Trainer(make_model(args), batches, None)
    configs = [(wire, cap, ov) for wire in args.wires for cap in args.caps for ov in args.overlaps]
    trainers = []
    for wire, cap, ov in configs:
        dp = DataParallel(
            make_model(args), engine=engine, bucket_cap_mb=cap, wire_dtype=WIRE_DTYPES[wire], overlap=OVERLAPS[ov]
        )
        trainers.append(Trainer(dp, batches, dp))

    grad_bytes = sum(p.numel() * p.element_size() for p in baseline.model.parameters())
    src, dst = torch.ones(grad_bytes, dtype=torch.uint8), torch.zeros(grad_bytes, dtype=torch.uint8)
    for t in (baseline, *trainers):  # warm-up: first-touch allocations, the engine's buffers
        t.steps(1)
    nocomm, comm, memcpy = [], [[] for _ in trainers], []
    for r in range(args.rounds):
        memcpy.append(timed_memcpy(world, src, dst))
        order = list(range(-1, len(trainers)))  # -1: the baseline
        for i in order if r % 2 == 0 else order[::-1]:
            if i < 0:
                nocomm.append(timed(world, baseline, args.steps)[0])
            else:
                comm[i].append(timed(world, trainers[i], args.steps))

    memcpy_s = median(memcpy)
    reference = trainers[0].model.module
    rows = []
    for (wire, cap, ov), t, times in zip(configs, trainers, comm):
        step_s = median(s for s, _ in times)
        step_s_nocomm = median(nocomm)
        rows.append(
            {
                "impl": "twinhpc",
                "ranks": world.size,
                "bytes": grad_bytes,
                "time_s": step_s,
                "step_s_comm": step_s,
                "step_s_nocomm": step_s_nocomm,
                "ratio": median(s / n for (s, _), n in zip(times, nocomm)),
                # the spread of the per-round ratios: how far one run can be trusted here
                "ratio_min": min(s / n for (s, _), n in zip(times, nocomm)),
                "ratio_max": max(s / n for (s, _), n in zip(times, nocomm)),
                "wait_s": median(w for _, w in times),
                "bucket_cap_mb": cap,
                "buckets": len(t.dp.buckets),
                "overlap_setting": ov,
                "overlap": int(t.dp.overlap),
                "wire_dtype": wire,
                "max_rel_diff": max_rel_diff(t.model.module, reference),
                "memcpy_s": memcpy_s,
                "memcpy_gbps": grad_bytes / memcpy_s / 1e9,
            }
        )
        t.dp.close()
    engine.close()
    return rows


def report(args, rows: list[dict]) -> str:
    r0 = rows[0]
    head = (
        f"dp_overhead: {describe(args)}, {r0['bytes'] / 1e6:.1f} MB of gradients, "
        f"{r0['ranks']} rank(s), batch {args.batch}/rank, 1 thread/rank, "
        f"{args.steps} steps x {args.rounds} rounds (median)"
    )
    formats = {
        "wire_dtype": "s",
        "bucket_cap_mb": "g",
        "buckets": "d",
        "overlap_setting": "s",
        "overlap": "d",
        "step_s_comm": ".4f",
        "step_s_nocomm": ".4f",
        "ratio": ".3f",
        "ratio_min": ".3f",
        "ratio_max": ".3f",
        "wait_s": ".4f",
        "max_rel_diff": ".2e",
    }
    default = [
        r
        for r in rows
        if r["wire_dtype"] == "float32" and r["bucket_cap_mb"] == BUCKET_CAP_MB and r["overlap_setting"] == "auto"
    ]
    lines = [
        head,
        format_table(rows, formats),
        f"memcpy of {r0['bytes'] / 1e6:.1f} MB on every rank at once: {r0['memcpy_s'] * 1e3:.2f} ms "
        f"({r0['memcpy_gbps']:.1f} GB/s); two of them, the data the float32 all-reduce moves per step "
        f"(copy-in, in-place sum), = {2 * r0['memcpy_s'] / r0['step_s_nocomm']:.1%} of the step "
        f"without communication",
    ]
    if default:
        ratio = default[0]["ratio"]
        lines.append(
            f"float32, default cap {BUCKET_CAP_MB:g} MiB, overlap auto: ratio {ratio:.3f} "
            f"(target <= {TARGET:.2f} on 2 ranks): {'PASS' if ratio <= TARGET else 'FAIL'}"
        )
    return "\n".join(lines)


def save(args, rows: list[dict]) -> str:
    tables = {
        wire: [
            {k: v for k, v in r.items() if k not in ("impl", "wire_dtype", "memcpy_s", "memcpy_gbps")}
            for r in rows
            if r["wire_dtype"] == wire
        ]
        for wire in args.wires
    }
    attrs = {
        "impl": "twinhpc",
        "model": describe(args),
        "batch_per_rank": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads_per_rank": 1,
        "target_ratio": TARGET,
        "default_bucket_cap_mb": BUCKET_CAP_MB,
        "memcpy_s": rows[0]["memcpy_s"],
        "memcpy_gbps": rows[0]["memcpy_gbps"],
    }
    return str(write_results(f"{args.results}/dp_overhead.h5", tables, attrs).absolute())


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    if get_world().is_root:
        path = save(args, rows)
        print(json.dumps(rows, indent=2) if args.json else f"{report(args, rows)}\nresults: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
