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


SCALING_DESCRIPTION = """\
Train the job at several rank counts and measure how it scales. Each rank count k is its own
MPI job: `mpirun -n k` here (`srun -n k` inside a Slurm allocation: --launcher srun, the
default when SLURM_JOB_ID is set) of `twinhpc train JOB --out WORK/k<k>` for WARMUP + STEPS
optimizer steps; the steps after the warm-up are measured (RUN/results.h5, one record per step).
Every rank runs slurm.cpus_per_task torch threads (OMP_NUM_THREADS) at every k, 1 included.

  weak    the per-rank batch is fixed (--batch, default data.batch_size); the global batch is k
          times it. efficiency = throughput(k) / (k x throughput(1)); speedup = throughput(k) /
          throughput(1).
  strong  the global batch is fixed (--batch, default data.batch_size); each rank gets global/k
          (a k that does not divide it is refused). speedup = T(1)/T(k) (median step times),
          efficiency = speedup / k.
  (With a smallest rank count k0 other than 1, k/k0 replaces k.)

Columns, per rank count: samples/s (global samples per step / median step), step_s (median
step) and its spread (step_p10_s, step_p90_s), the median step's phases on rank 0 (data_wait_s:
waiting for batches; forward_backward_s: forward and backward, including gradient buckets
reduced inside backward; communication_s: waiting for the gradient all-reduce after backward;
optimizer_s: clipping and the update), allreduce_bytes (per rank per step), speedup,
efficiency. A rank count whose ranks x threads exceed this machine's cores is run but says
"oversubscribed (k ranks on C cores)": such a row measures sharing of cores, not scaling.

A new record FOLDER/scaling/<UTC time>-<commit>.h5 (tables rows, fits, validation,
prediction; docs/benchmark-records.md) and two PNGs beside it (<record>-efficiency.png:
efficiency and speed-up against ranks with the ideal line; <record>-phases.png: the phases
stacked per rank count). A rank count that fails (mpirun error, a batch too large for the data)
stops the study: the error names k and its log WORK/k<k>.log, and no record is written.

The cost model (docs/scaling.md): an alpha-beta model of the all-reduce (latency and bandwidth
per link; ring, recursive halving/doubling, recursive doubling, direct shared memory,
hierarchical) fitted by least squares to the newest `twinhpc bench allreduce` record of each
rank count in --allreduce-results. It validates the study (each k > 1 predicted from the 1-rank
step and the fitted all-reduce; the error is printed and recorded) and, with --predict, gives
the weak-scaling efficiency on a cluster (--link-gbps, --latency-us, --ranks-per-node; the
intra-node link is this machine's fit unless --intra-gbps). Predicted step = 1-rank step +
max(0, all-reduce - OVERLAP x forward/backward). --predict without --ranks predicts from the
newest recorded study of the job (or --from RECORD) and writes nothing. --anchor horovod
prints the model at the setting of Horovod's published ResNet-101 figure (no JOB needed).

--submit sends the whole study as one Slurm job (sbatch; one allocation of max(k) tasks in
which the study runs with --launcher srun; the script is WORK/scaling.sbatch, the output
WORK/slurm-<id>.out); --wait waits for it to end.

examples:
  twinhpc bench scaling jobs/digits.toml --ranks 1,2 --mode weak --steps 20
  twinhpc bench scaling jobs/digits.toml --ranks 1,2,4 --mode strong --batch 64
  twinhpc bench scaling jobs/digits.toml --ranks 1,2 --predict 8,64,512 --link-gbps 100 --latency-us 2 \\
      --ranks-per-node 4
  twinhpc bench scaling jobs/digits.toml --ranks 1,2 --submit --wait
  twinhpc bench scaling --anchor horovod
"""


def add_scaling(sub) -> argparse.ArgumentParser:
    from .main import add_overrides

    p = sub.add_parser(
        "scaling",
        help="weak/strong scaling of a job over rank counts, and the all-reduce cost model",
        description=SCALING_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", nargs="?", metavar="JOB.toml", help="job file (preprocessed); not needed with --anchor")
    p.add_argument("--ranks", metavar="K,K,...", help="rank counts to measure, e.g. 1,2,4")
    p.add_argument("--mode", choices=("weak", "strong"), default="weak", help="weak (default) or strong scaling")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="optimizer steps measured per rank count (20)")
    p.add_argument("--warmup", type=int, default=3, metavar="W", help="steps run first and not measured (3)")
    p.add_argument(
        "--batch", type=int, metavar="B", help="weak: per-rank batch; strong: global batch (default data.batch_size)"
    )
    p.add_argument(
        "--launcher",
        choices=("mpirun", "srun"),
        help="how each rank count starts (default srun inside a Slurm allocation, else mpirun)",
    )
    p.add_argument("--submit", action="store_true", help="send the whole study to Slurm as one job (sbatch)")
    p.add_argument("--wait", action="store_true", help="with --submit: wait for the job to end (sbatch --wait)")
    p.add_argument(
        "--results", default="bench-results", metavar="FOLDER", help="folder of the records (default ./bench-results)"
    )
    p.add_argument("--work", metavar="DIR", help="run directories and logs (default runs/scaling-<job>-<UTC time>)")
    p.add_argument(
        "--allreduce-results",
        metavar="FOLDER",
        help="folder of the bench allreduce records the model is fitted to (default: --results)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="seconds per rank count (3600)")
    m = p.add_argument_group("cost model")
    m.add_argument("--predict", metavar="P,P,...", help="predict weak-scaling efficiency at these rank counts")
    m.add_argument("--link-gbps", type=float, default=100.0, metavar="G", help="inter-node link, Gbit/s (100)")
    m.add_argument("--latency-us", type=float, default=2.0, metavar="US", help="inter-node latency, µs (2)")
    m.add_argument("--ranks-per-node", type=int, default=1, metavar="R", help="ranks per node (1)")
    m.add_argument("--intra-gbps", type=float, metavar="G", help="intra-node link, Gbit/s (default: this node's fit)")
    m.add_argument(
        "--intra-latency-us", type=float, metavar="US", help="intra-node latency, µs (with --intra-gbps; 0.5)"
    )
    m.add_argument(
        "--overlap",
        type=float,
        default=0.0,
        metavar="F",
        help="share of forward/backward that hides the all-reduce, 0..1 (0: none, as DataParallel on a node "
        "without a spare core per rank)",
    )
    m.add_argument("--from", dest="from_record", metavar="RECORD", help="--predict from this scaling record")
    m.add_argument("--anchor", choices=("horovod",), help="the model at a published setting (see docs/scaling.md)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    add_overrides(p, "train.bucket_cap_mb=4")
    return p


def _scaling_prediction(args):
    from ..bench.scaling import Prediction, ScalingError, parse_ints

    if not args.predict:
        return None
    if args.ranks_per_node < 1:
        raise ScalingError(f"--ranks-per-node {args.ranks_per_node}: need 1 or more")
    return Prediction(
        tuple(parse_ints(args.predict, "--predict")),
        args.link_gbps,
        args.latency_us,
        args.ranks_per_node,
        args.intra_gbps,
        args.intra_latency_us,
    )


def _anchor(args) -> int:
    from ..bench import format_table
    from ..bench.costmodel import ANCHORS, anchor_prediction

    a = ANCHORS[args.anchor]
    rows = anchor_prediction(a)
    if args.json:
        print(json.dumps(rows, indent=1), flush=True)
        return 0
    print(
        f"anchor {a.name}: {a.source}\n"
        f"setting: {a.ranks} ranks, {a.ranks_per_node} per node; gradients {a.gradient_bytes / 1e6:.0f} MB; "
        f"single-GPU step {a.step_s} s (forward/backward {a.forward_backward_s} s); inter-node "
        f"{a.inter.gbps:g} Gbit/s, {a.inter.latency_us:g} µs; intra-node {a.intra.gbps:g} Gbit/s, "
        f"{a.intra.latency_us:g} µs; buckets of {a.bucket_bytes / 2**20:g} MiB\n"
        + format_table(
            rows,
            {
                "overlap": ".2f",
                "algorithm": "",
                "allreduce_s": ".4f",
                "step_s": ".4f",
                "efficiency": ".3f",
                "published": ".2f",
            },
        )
        + f"\nthe model gives the published {a.published_efficiency:.0%} at overlap "
        f"{rows[0]['overlap_for_published']:.3f}",
        flush=True,
    )
    return 0


def _submit_scaling(args, ranks) -> int:
    import os
    import shlex
    import subprocess
    import sys
    import time
    from pathlib import Path

    from ..bench.scaling import ScalingError, batch_script
    from ..config import load_job

    job = load_job(args.job, args.overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    work = Path(args.work or Path("runs") / f"scaling-{Path(args.job).stem}-{stamp}")
    inner = [sys.executable, "-m", "twinhpc", "bench", "scaling", args.job, "--ranks", args.ranks]
    inner += ["--mode", args.mode, "--steps", str(args.steps), "--warmup", str(args.warmup), "--launcher", "srun"]
    inner += ["--results", args.results, "--work", str(work), "--timeout", str(args.timeout)]
    inner += ["--overlap", str(args.overlap)]
    for flag, value in (("--batch", args.batch), ("--allreduce-results", args.allreduce_results)):
        if value is not None:
            inner += [flag, str(value)]
    if args.predict:
        inner += ["--predict", args.predict, "--link-gbps", str(args.link_gbps), "--latency-us", str(args.latency_us)]
        inner += ["--ranks-per-node", str(args.ranks_per_node)]
        if args.intra_gbps is not None:
            inner += ["--intra-gbps", str(args.intra_gbps)]
        if args.intra_latency_us is not None:
            inner += ["--intra-latency-us", str(args.intra_latency_us)]
    for item in args.overrides:
        inner += ["--set", item]
    text = batch_script(inner, max(ranks), job.slurm.cpus_per_task, job, Path(args.job).stem, work, os.getcwd())
    work.mkdir(parents=True, exist_ok=True)
    script = work / "scaling.sbatch"
    tmp = script.with_name(f".{script.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, script)
    finally:
        tmp.unlink(missing_ok=True)
    from ..env import launch_environ

    cmd = ["sbatch", "--parsable"] + (["--wait"] if args.wait else []) + [str(script)]
    print(f"scaling: submitting {script} ({shlex.join(cmd)})", flush=True)
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=None if args.wait else 120, env=launch_environ()
        )
    except FileNotFoundError:
        raise ScalingError(f"--submit: sbatch not found (not a Slurm login node?); the script is {script}") from None
    job_id = r.stdout.strip().split(";")[0]
    out = work / f"slurm-{job_id}.out"
    if r.returncode != 0 and not job_id:
        raise ScalingError(f"--submit: sbatch failed (exit status {r.returncode}): {r.stderr.strip()}")
    if not args.wait:
        print(f"{job_id} (output {out}; the record goes to {args.results}/scaling/)", flush=True)
        return 0
    if r.returncode != 0:
        raise ScalingError(f"--submit: Slurm job {job_id} failed (sbatch --wait exit status {r.returncode}); see {out}")
    print(f"{job_id} completed; output {out}", flush=True)
    try:
        print(out.read_text(), end="", flush=True)
    except OSError:
        pass
    return 0


def run_scaling(args) -> int:
    import os

    from ..bench.scaling import (
        ScalingError,
        model_part,
        newest_study,
        parse_ints,
        report,
        run_study,
        study_rows,
    )

    if args.anchor:
        return _anchor(args)
    if not args.job:
        raise ScalingError("JOB.toml: give a job file (or --anchor horovod)")
    if not args.ranks and not args.predict:
        raise ScalingError("give --ranks K,K,... (a study), --predict P,P,... (a prediction) or --anchor")
    if args.overlap < 0 or args.overlap > 1:
        raise ScalingError(f"--overlap {args.overlap}: a share between 0 and 1")
    prediction = _scaling_prediction(args)
    if args.ranks:
        ranks = parse_ints(args.ranks, "--ranks")
        if args.submit:
            return _submit_scaling(args, ranks)
        launcher = args.launcher or ("srun" if os.environ.get("SLURM_JOB_ID") else "mpirun")
        figures = run_study(
            args.job,
            ranks,
            args.mode,
            steps=args.steps,
            warmup=args.warmup,
            launcher=launcher,
            overrides=args.overrides,
            batch=args.batch,
            results=args.results,
            work=args.work,
            allreduce_results=args.allreduce_results,
            overlap=args.overlap,
            prediction=prediction,
            timeout=args.timeout,
            say=lambda line: print(line, flush=True),
        )
    else:
        from ..config import load_job
        from ..io.bench_results import read_record

        record = read_record(args.from_record, "scaling") if args.from_record else newest_study(args.results, args.job)
        rows = study_rows(record)
        job = load_job(args.job, args.overrides)
        figures = dict(
            rows=rows,
            mode=record.attrs.get("mode"),
            job=f"{args.job} (recorded in {record.path})",
            cores=record.attrs.get("cores"),
            threads_per_rank=record.attrs.get("threads_per_rank"),
            overlap=args.overlap,
            **model_part(rows, job, args.allreduce_results or args.results, args.overlap, prediction),
        )
    if args.json:
        shown = {k: v for k, v in figures.items() if k not in ("fits", "cluster")}
        shown["fits"] = [dict(f.__dict__, link=f.link.__dict__) for f in figures.get("fits", [])]
        print(json.dumps(shown, indent=1, default=str), flush=True)
    else:
        print(report(figures), flush=True)
    return 0


#: benchmark name -> (add its sub-parser, run it)
BENCHMARKS = {
    "loader": (add_loader, run_loader),
    "allreduce": (add_allreduce, run_allreduce),
    "scaling": (add_scaling, run_scaling),
    "report": (add_report, run_report),
}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="benchmarks (loader, allreduce, scaling) and their page (report)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add, _ in BENCHMARKS.values():
        add_common(add(benches))
    return p


def run(args) -> int:
    return BENCHMARKS[args.benchmark][1](args)
