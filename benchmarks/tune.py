"""ASHA against random search at full budget: ``python benchmarks/tune.py [options]`` (``--help``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from twinhpc.bench import format_table
from twinhpc.config import load_job, override
from twinhpc.errors import TwinError
from twinhpc.io.atomic import writing
from twinhpc.io.bench_results import write_results
from twinhpc.io.sweep import SWEEP_FILE, SweepFile, read_sweep
from twinhpc.tune import Sweep
from twinhpc.tune import executors as _executors
from twinhpc.tune.asha import rungs as asha_rungs
from twinhpc.tune.driver import Driver

ROOT = Path(__file__).resolve().parents[1]

TARGET_POINTS = 0.01  # ASHA's best at most this far below random search's best (1 point of accuracy)
TARGET_EPOCHS = 1 / 3  # ASHA's epochs at most this share of random search's
TARGET_UTILISATION = 0.9  # each sweep, on the local executor with 2 concurrent 1-rank trials
JOBS = ("digits", "synthetic")
SCHEDULERS = ("asha", "none")  # "none": random search, every trial at the full budget
NAMES = {"asha": "ASHA", "none": "random"}

# the CIFAR-sized synthetic set: 10 classes, each a smooth colour pattern of 32x32x3 on a
# background shared by all classes, shifted at random by up to SHIFT pixels, under noise; the
# class pattern's amplitude is SIGNAL times the noise's (the seed CNN reaches about 0.95 after
# 9 epochs with the digits job's settings: learnable, not trivial, and the settings matter)
SYNTH_SIGNAL, SYNTH_NOISE, SYNTH_SHIFT, SYNTH_SEED = 0.15, 1.0, 4, 0

SYNTH_JOB = """\
# CIFAR-sized synthetic images (32x32x3, 10 classes) written by benchmarks/tune.py
[data]
dataset = "{dataset}"
batch_size = 64

[preprocess.image]
normalize = true
crop_padding = 0
flip = false

[model]
name = "cnn"

[model.structure]
in_channels = 3
input_size = 32
channels = 32
hidden = 64
classes = 10

[optim]
name = "adamw"
lr = 3e-3
weight_decay = 1e-4
schedule = "cosine"

[train]
epochs = 9
metric = "accuracy"
log_every = 10

[slurm]
ntasks_per_node = 1
time = "00:10:00"

[sweep]
strategy = "random"
trials = 12
concurrent = 2
metric = "val_accuracy"
seed = 0
scheduler = "asha"
min_epochs = 1
reduction_factor = 3
max_epochs = 9

[sweep.space."optim.lr"]
loguniform = [3e-4, 3e-2]

[sweep.space."optim.weight_decay"]
loguniform = [1e-6, 1e-2]

[sweep.space."train.dropout"]
uniform = [0.0, 0.5]

[sweep.space."model.structure.channels"]
choice = [8, 16, 32]
"""

DESCRIPTION = f"""\
ASHA against random search at full budget, side by side in one run, on two jobs:

  digits     jobs/digits_sweep.toml: scikit-learn's 1,797 8x8 digits (jobs/digits_to_npz.py),
             the seed CNN, a random search over optim.lr, optim.weight_decay, train.dropout and
             model.structure.channels
  synthetic  CIFAR-sized synthetic images made here: 32x32x3, 10 classes (a smooth colour
             pattern per class on a shared background, shifted by up to {SYNTH_SHIFT} pixels, Gaussian
             noise; the class pattern's amplitude is {SYNTH_SIGNAL} of the noise's), --samples of them
             (a fifth held out for validation), the same CNN (3 input channels) and search space

Each job's data are ingested (`twinhpc ingest npz`) and preprocessed (`twinhpc preprocess`) by
twinhpc itself in WORK/data. For each job two sweeps run one after the other, each driven to its
end by twinhpc's own driver (twinhpc.tune.driver.Driver, as `twinhpc tune` does) on the same
executor: `scheduler = "asha"` (rungs min_epochs * eta^k up to max_epochs) and `scheduler =
"none"` (random search: every trial trains max_epochs). Both use strategy `random` with the same
seed, trials and concurrency, so trial i has the same values in both. Which of the two runs first
alternates from repeat to repeat (column `order`).

Figures, each computed from the sweep's own SWEEP/sweep.h5 (docs/tune.md):
  best              the sweep's best validation metric at its last rung (Sweep.best())
  epochs            epochs trained, summed over the trials (/trials epochs)
  wall_s            seconds from the first trial's start to the sweep's last event
                    (updated_at - first_start: the span utilisation divides by)
  time_to_target_s  seconds from the first trial's start until the sweep first reported (a report
                    at any rung, /reports at) a metric at least as good as random search's final
                    best on the same job and seed; NaN ("never") when it did not: then
  gap               how far its best report stayed from that target (0 when it reached it)
  utilisation       busy time / (workers x wall_s), as Sweep.utilisation (the trials' running
                    time counts from the moment each segment is handed out: process start-up
                    included, the driver's polling gaps and idle workers not)
  driver_s          seconds Driver.run took (executor start-up and shut-down included)
  trials, failed, reports: trials in the budget, those failed, reports made (one per finished
                    segment)
Per job and seed: best_diff = random's best - ASHA's best (in the metric's direction: positive
when random search did better), epochs_ratio = ASHA's epochs / random's, wall_ratio likewise.

Targets (pass/fail printed beside each): best_diff <= {TARGET_POINTS} (one point of accuracy) with
epochs_ratio <= 1/3; utilisation >= {TARGET_UTILISATION} for each sweep, judged where it applies: the
local executor with 2 concurrent 1-rank trials (the defaults). With --repeat K the comparison
runs K times with seeds SEED, SEED+1, ...; the summary gives the median and range of each figure
and judges the targets on the median. The default K = 1 is for speed: a target counts as met
when the median of at least 5 runs meets it (benchmarks/results/README.md), so run --repeat 5 on
an otherwise idle machine for a recorded result; the load average before and after each sweep
is kept (columns load_start, load_end) to show how quiet it was.

--slurm adds a small Slurm sweep (random search on digits, --slurm-trials trials of one epoch,
the same concurrency, executor slurm: job arrays) to measure queue_wait: the seconds from each
segment's submission to its start (sacct's Submit and Start, SlurmTrials.queue_wait), per trial.
With --executor slurm the comparison's own segments are measured too.

Trials run with OMP_NUM_THREADS set to --threads (default 1) unless the environment sets it
(one core per 1-rank trial: two such trials fill a 2-core machine).

Output: a table per sweep, the comparison with its targets, the summary; a new record
FOLDER/tune/<UTC time>-<commit>.h5 (--out; never over an earlier one, docs/benchmark-records.md):
/sweeps (one row per sweep per repeat: job, scheduler, executor, seed, order,
best, epochs, wall_s, time_to_target_s, target, gap, utilisation, busy_s, driver_s, trials,
failed, reports, workers, load_start, load_end, pass_utilisation), /comparisons (one row per
job per repeat: job, seed, asha_best, random_best, best_diff, epochs_ratio, wall_ratio,
asha_time_to_target_s, random_time_to_target_s, pass_best, pass_epochs, pass_target), /summary
(job, scheduler, figure, runs, median, min, max; time_to_target_s over the runs that reached it,
with `runs` counting those), /queue_wait (with --slurm or --executor slurm: job, scheduler, seed,
trial, rung, job_id, wait_s) and the settings as attributes; and the printed text in
FOLDER/tune.txt. The sweeps stay in WORK/sweeps/<UTC time>/<job>-<asha|random>-s<seed> when
--work is given (the Slurm sweep in .../digits-slurm-s<seed>; a default work folder is removed
at the end).

--quick, a smoke test, not for the targets:
  {{quick}}.

examples:
  python benchmarks/tune.py --quick --out /tmp/tune-bench
  python benchmarks/tune.py --jobs digits
  python benchmarks/tune.py --repeat 5 --slurm --out benchmarks/results   # the recorded run
  python benchmarks/tune.py --quick --jobs digits --slurm             # with the Slurm queue wait
"""

QUICK = {"trials": 4, "max_epochs": 3, "samples": 600, "slurm_trials": 2}


def parse_args(argv):
    quick = (
        f"{QUICK['trials']} trials, rungs 1 and {QUICK['max_epochs']} epochs, {QUICK['samples']} synthetic "
        f"samples, {QUICK['slurm_trials']} Slurm trials"
    )
    p = argparse.ArgumentParser(
        prog="tune.py",
        description=DESCRIPTION.replace("{quick}", quick),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated jobs among {', '.join(JOBS)} (default all)")
    p.add_argument(
        "--executor",
        default="local",
        choices=sorted(_executors.EXECUTORS),
        help="where the comparison's trials run (default local: submitit's local executor)",
    )
    p.add_argument("--concurrent", type=int, default=2, help="trials running at once in every sweep (default 2)")
    p.add_argument("--trials", type=int, help="trials per sweep (default 12, the digits sweep's; --quick 4)")
    p.add_argument("--min-epochs", type=int, default=1, help="ASHA's first rung (default 1)")
    p.add_argument("--eta", type=int, default=3, help="ASHA's reduction factor (default 3)")
    p.add_argument(
        "--max-epochs",
        type=int,
        help="the full budget: ASHA's last rung, random search's epochs (default 9; --quick 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="the sweeps' seed in the first repeat (default 0)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run the whole comparison K times, seeds SEED..SEED+K-1; medians and ranges reported "
        "(default 1, for speed; a target counts as met on the median of >= 5 runs)",
    )
    p.add_argument("--samples", type=int, help="synthetic images in all (default 3000; --quick 600)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trials when unset (default 1)")
    p.add_argument("--poll", type=float, help="the driver's seconds between state queries (default: the executor's)")
    p.add_argument("--slurm", action="store_true", help="add a small Slurm sweep to measure the queue wait per trial")
    p.add_argument("--slurm-trials", type=int, help="trials of the Slurm sweep (default 4; --quick 2)")
    p.add_argument("--quick", action="store_true", help="a smoke test: " + quick)
    p.add_argument(
        "--out",
        default="bench-results",
        metavar="FOLDER",
        help="folder of the records (FOLDER/tune/*.h5) and tune.txt (default ./bench-results)",
    )
    p.add_argument(
        "--work",
        metavar="FOLDER",
        help="folder for the data and the sweeps, kept (default: a temporary folder under build/, removed at the end)",
    )
    p.add_argument("--verbose", action="store_true", help="print the drivers' event lines (always in SWEEP/driver.log)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in args.jobs if j not in JOBS]
    if unknown or not args.jobs:
        p.error(f"--jobs: unknown {', '.join(unknown) or '(none given)'} (choose among {', '.join(JOBS)})")
    args.trials = args.trials or (QUICK["trials"] if args.quick else 12)
    args.max_epochs = args.max_epochs or (QUICK["max_epochs"] if args.quick else 9)
    args.samples = args.samples or (QUICK["samples"] if args.quick else 3000)
    args.slurm_trials = args.slurm_trials or (QUICK["slurm_trials"] if args.quick else 4)
    for name in ("concurrent", "trials", "min_epochs", "max_epochs", "repeat", "samples", "threads", "slurm_trials"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    if args.eta < 2:
        p.error("--eta: must be at least 2")
    if args.min_epochs > args.max_epochs:
        p.error(f"--min-epochs {args.min_epochs} is above --max-epochs {args.max_epochs}")
    args.rungs = list(asha_rungs(args.min_epochs, args.eta, args.max_epochs))
    return args


# -- data -----------------------------------------------------------------------------------------
def twinhpc(*argv: str | Path) -> None:
    """Run ``python -m twinhpc ARGV`` (ingest, preprocess); an error names the command."""
    cmd = [sys.executable, "-m", "twinhpc", *map(str, argv)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise TwinError(f"`{' '.join(cmd[2:])}` ended with status {r.returncode}:\n{(r.stderr or r.stdout)[-2000:]}")


def synthetic_images(n: int, seed: int = SYNTH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` CIFAR-sized images (uint8, n x 32 x 32 x 3) of 10 classes and their labels (see
    SYNTH_SIGNAL): the same ``n`` and ``seed`` give the same set."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, (10, 4, 4, 3)).repeat(8, axis=1).repeat(8, axis=2)  # 10 x 32 x 32 x 3
    k = 5  # a box blur (wrapping around) smooths the 8x8 blocks
    padded = np.pad(coarse, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="wrap")
    patterns = sum(padded[:, i : i + 32, j : j + 32] for i in range(k) for j in range(k)) / k**2
    patterns /= patterns.std()
    patterns = rng.normal(0.0, 1.0, (32, 32, 3)) + SYNTH_SIGNAL * patterns  # a shared background
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-SYNTH_SHIFT, SYNTH_SHIFT + 1, (n, 2))
    x = np.stack([np.roll(patterns[c], (int(dy), int(dx)), axis=(0, 1)) for c, (dy, dx) in zip(labels, shifts)])
    x += rng.normal(0.0, SYNTH_NOISE, x.shape)
    return np.clip(np.rint(128 + 40 * x), 0, 255).astype(np.uint8), labels.astype(np.int64)


def prepare(job: str, data: Path, samples: int) -> Path:
    """Ingest and preprocess ``job``'s data under ``data``; return its job file (with [sweep])."""
    data.mkdir(parents=True, exist_ok=True)
    src, dataset = data / f"{job}.npz", data / job
    if job == "digits":
        r = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / "digits_to_npz.py"), "--out", str(src)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if r.returncode != 0:
            raise TwinError(f"jobs/digits_to_npz.py ended with status {r.returncode}:\n{r.stderr[-2000:]}")
        job_file = ROOT / "jobs" / "digits_sweep.toml"
    else:
        image, label = synthetic_images(samples)
        np.savez(src, image=image, label=label)
        job_file = data / f"{job}.toml"
        job_file.write_text(SYNTH_JOB.format(dataset=dataset.resolve()))
    twinhpc(
        "ingest",
        "npz",
        src,
        "--out",
        dataset,
        "--label",
        "label",
        "--val-fraction",
        "0.2",
        "--test-fraction",
        "0",
        "--overwrite",
    )
    twinhpc("preprocess", job_file, "--set", f"data.dataset={json.dumps(str(dataset.resolve()))}")
    return job_file


# -- one sweep ------------------------------------------------------------------------------------
def sweep_job(job_file: Path, dataset: Path, args, scheduler: str, seed: int, trials: int, max_epochs: int):
    """The job file's sweep with the benchmark's settings (strategy random, ``scheduler``, ``seed``)."""
    return override(
        load_job(job_file),
        {
            "data.dataset": str(dataset.resolve()),
            "sweep.strategy": "random",
            "sweep.scheduler": scheduler,
            "sweep.seed": seed,
            "sweep.trials": trials,
            "sweep.concurrent": args.concurrent,
            "sweep.min_epochs": min(args.min_epochs, max_epochs),
            "sweep.reduction_factor": args.eta,
            "sweep.max_epochs": max_epochs,
        },
        where="benchmarks/tune.py",
    )


def run_sweep(job, folder: Path, executor: str, poll: float | None, verbose: bool) -> dict:
    """Drive a new sweep of ``job`` in ``folder`` to its end on ``executor``; returns what the
    driver cannot leave in sweep.h5: its own duration, every launched segment's (trial, rung,
    job id), and on Slurm each segment's queue wait."""
    sweep = Sweep.create(job, folder, executor=executor)
    ex = _executors.make(executor, folder, job, sweep.settings.concurrent)
    segments: list[tuple[int, int, str]] = []
    launch = ex.launch

    def recording_launch(works):
        launched = launch(works)
        segments.extend((w.trial, w.rung, got.job_id) for w, got in zip(works, launched))
        return launched

    ex.launch = recording_launch  # type: ignore[method-assign]
    load_start = os.getloadavg()[0]
    t0 = time.monotonic()
    status = Driver(sweep, ex, poll=ex.default_poll if poll is None else poll, echo=verbose).run()
    driver_s = time.monotonic() - t0
    if status != 0:
        raise TwinError(f"{folder}: the sweep's driver ended with status {status} ({folder / 'driver.log'})")
    waits = {}
    if hasattr(ex, "queue_wait"):
        waits = ex.queue_wait([j for _, _, j in segments])
    return {
        "driver_s": driver_s,
        "segments": segments,
        "waits": waits,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }


def better(a: float, b: float, direction: str) -> bool:
    """Whether ``a`` is at least as good as ``b``."""
    return a >= b if direction == "max" else a <= b


def figures(f: SweepFile) -> dict:
    """The sweep's figures, from its sweep.h5 alone (see the module's --help)."""
    best = Sweep.from_file(f).best()
    wall = f.updated_at - f.first_start
    return {
        "best": best[1] if best is not None else math.nan,
        "epochs": int(sum(t.epochs for t in f.trials)),
        "wall_s": wall,
        "utilisation": f.utilisation,
        "busy_s": f.busy_s,
        "trials": len(f.trials),
        "failed": sum(1 for t in f.trials if t.status == "failed"),
        "reports": len(f.reports),
        "workers": f.workers,
    }


def time_to_target(f: SweepFile, target: float) -> tuple[float, float]:
    """Seconds from the first trial's start to the first report at least as good as ``target``
    (NaN: none), and the gap between ``target`` and the sweep's best report (0 when reached)."""
    metrics = [r.metric for r in f.reports if not math.isnan(r.metric)]
    for r in f.reports:
        if not math.isnan(r.metric) and better(r.metric, target, f.direction):
            return r.at - f.first_start, 0.0
    if not metrics or math.isnan(target):
        return math.nan, math.nan
    closest = max(metrics) if f.direction == "max" else min(metrics)
    return math.nan, abs(target - closest)


# -- the comparison -------------------------------------------------------------------------------
def utilisation_applies(args, ranks: int) -> bool:
    return args.executor == "local" and args.concurrent == 2 and ranks == 1


def compare(job: str, seed: int, rows: dict[str, dict], direction: str) -> dict:
    """ASHA's figures against random search's on one job and seed."""
    a, r = rows["asha"], rows["none"]
    sign = 1.0 if direction == "max" else -1.0
    diff = sign * (r["best"] - a["best"])
    ratio = a["epochs"] / r["epochs"] if r["epochs"] else math.nan
    return {
        "job": job,
        "seed": seed,
        "asha_best": a["best"],
        "random_best": r["best"],
        "best_diff": diff,
        "epochs_ratio": ratio,
        "wall_ratio": a["wall_s"] / r["wall_s"] if r["wall_s"] > 0 else math.nan,
        "asha_time_to_target_s": a["time_to_target_s"],
        "random_time_to_target_s": r["time_to_target_s"],
        "pass_best": bool(diff <= TARGET_POINTS),
        "pass_epochs": bool(ratio <= TARGET_EPOCHS),
        "pass_target": bool(diff <= TARGET_POINTS and ratio <= TARGET_EPOCHS),
    }


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min and max (NaN for none)."""
    if not values:
        return math.nan, math.nan, math.nan
    return float(statistics.median(values)), float(min(values)), float(max(values))


SWEEP_FIGURES = ("best", "epochs", "wall_s", "time_to_target_s", "utilisation")
COMPARE_FIGURES = ("best_diff", "epochs_ratio", "wall_ratio")


def summarise(sweeps: list[dict], comparisons: list[dict], jobs: list[str]) -> list[dict]:
    """Median and range of every figure over the repeats (time_to_target_s: over the runs that
    reached the target; ``runs`` counts them)."""
    out = []
    for job in jobs:
        for sched in SCHEDULERS:
            rows = [
                s for s in sweeps if s["job"] == job and s["scheduler"] == sched and s["executor_role"] == "compare"
            ]
            for fig in SWEEP_FIGURES:
                values = [float(s[fig]) for s in rows if not math.isnan(s[fig])]
                med, lo, hi = spread(values)
                out.append(
                    {
                        "job": job,
                        "scheduler": NAMES[sched],
                        "figure": fig,
                        "runs": len(values),
                        "median": med,
                        "min": lo,
                        "max": hi,
                    }
                )
        rows = [c for c in comparisons if c["job"] == job]
        for fig in COMPARE_FIGURES:
            values = [float(c[fig]) for c in rows if not math.isnan(c[fig])]
            med, lo, hi = spread(values)
            out.append(
                {
                    "job": job,
                    "scheduler": "ASHA/random",
                    "figure": fig,
                    "runs": len(values),
                    "median": med,
                    "min": lo,
                    "max": hi,
                }
            )
    return out


def fmt_time(t: float) -> str:
    return "never" if math.isnan(t) else f"{t:.1f}"


def passed(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def report(
    args, sweeps: list[dict], comparisons: list[dict], summary: list[dict], waits: list[dict], ranks: int
) -> str:
    applies = utilisation_applies(args, ranks)
    lines = [
        f"# python benchmarks/tune.py {' '.join(args.argv)}".rstrip(),
        f"# {args.trials} trials per sweep, {args.concurrent} at once, {ranks} rank(s) each, executor {args.executor}; "
        f"ASHA rungs {args.rungs} epochs (eta {args.eta}), random search {args.max_epochs} epochs per trial; "
        f"seeds {args.seed}..{args.seed + args.repeat - 1} ({args.repeat} run(s)){'; --quick' if args.quick else ''}",
    ]
    table = []
    for s in sweeps:
        util = f"{s['utilisation']:.3f}"
        if s["executor_role"] == "compare" and applies:
            util += f" {passed(s['pass_utilisation'])}"
        ttt = fmt_time(s["time_to_target_s"])
        if math.isnan(s["time_to_target_s"]) and not math.isnan(s["gap"]):
            ttt += f" (gap {s['gap']:.4f})"
        if s["executor_role"] != "compare":
            ttt = "-"  # the Slurm sweep of --slurm has no target
        table.append(
            {
                "job": s["job"],
                "sweep": NAMES[s["scheduler"]] + ("" if s["executor_role"] == "compare" else f" ({s['executor']})"),
                "seed": str(s["seed"]),
                "best": f"{s['best']:.4f}",
                "epochs": str(s["epochs"]),
                "wall_s": f"{s['wall_s']:.1f}",
                "to_target_s": ttt,
                "utilisation": util,
                "trials": f"{s['trials']}" + (f" ({s['failed']} failed)" if s["failed"] else ""),
                "load": f"{s['load_start']:.1f}/{s['load_end']:.1f}",
            }
        )
    lines += ["", format_table(table, {k: "" for k in table[0]})]
    lines.append(
        "to_target_s: until the sweep first reported random search's final best (same job and seed); "
        "load: the 1-minute load average before/after the sweep"
    )
    if comparisons:
        lines += ["", "ASHA against random search (per job and seed):"]
        for c in comparisons:
            lines.append(
                f"  {c['job']} seed {c['seed']}: best {c['asha_best']:.4f} vs {c['random_best']:.4f}, "
                f"diff {c['best_diff']:+.4f} (<= {TARGET_POINTS}: {passed(c['pass_best'])}); epochs ratio "
                f"{c['epochs_ratio']:.3f} (<= 1/3: {passed(c['pass_epochs'])}); wall ratio {c['wall_ratio']:.2f}"
            )
    if waits:
        lines += ["", "Slurm queue wait, submission to start, per segment (sacct Submit/Start, 1 s resolution):"]
        for key in sorted({(w["job"], w["scheduler"], w["seed"]) for w in waits}):
            ws = [w for w in waits if (w["job"], w["scheduler"], w["seed"]) == key]
            first: dict[int, float] = {}
            for w in ws:  # in launch order: each trial's first segment
                first.setdefault(w["trial"], w["wait_s"])
            per = ", ".join(f"trial {t}: {v:.0f}" for t, v in sorted(first.items()))
            med, lo, hi = spread([w["wait_s"] for w in ws])
            lines.append(
                f"  {key[0]} {NAMES[key[1]]} seed {key[2]}: {len(ws)} segments, median {med:.0f} s "
                f"(range {lo:.0f}-{hi:.0f} s); first segment of each trial: {per}"
            )
    lines += ["", f"Summary over {args.repeat} run(s) (median [min - max]); targets judged on the median:"]
    for job in args.jobs:
        get = {(s["scheduler"], s["figure"]): s for s in summary if s["job"] == job}
        for sched in ("ASHA", "random"):
            parts = []
            for fig in SWEEP_FIGURES:
                s = get[(sched, fig)]
                if fig == "time_to_target_s":
                    reached = f"reached in {s['runs']}/{args.repeat}"
                    parts.append(
                        f"{fig} {reached}"
                        + (f", {s['median']:.1f} [{s['min']:.1f} - {s['max']:.1f}]" if s["runs"] else "")
                    )
                    continue
                f = {"best": ".4f", "epochs": ".0f", "wall_s": ".1f", "utilisation": ".3f"}[fig]
                text = f"{fig} {s['median']:{f}} [{s['min']:{f}} - {s['max']:{f}}]"
                if fig == "utilisation" and applies:
                    text += f" (>= {TARGET_UTILISATION}: {passed(s['median'] >= TARGET_UTILISATION)})"
                parts.append(text)
            lines.append(f"  {job} {sched}: " + "; ".join(parts))
        d, e, w = (get[("ASHA/random", f)] for f in COMPARE_FIGURES)
        met = d["median"] <= TARGET_POINTS and e["median"] <= TARGET_EPOCHS
        lines.append(
            f"  {job} ASHA/random: best_diff {d['median']:+.4f} [{d['min']:+.4f} - {d['max']:+.4f}] "
            f"(<= {TARGET_POINTS}: {passed(d['median'] <= TARGET_POINTS)}); epochs_ratio {e['median']:.3f} "
            f"[{e['min']:.3f} - {e['max']:.3f}] (<= 1/3: {passed(e['median'] <= TARGET_EPOCHS)}); wall_ratio "
            f"{w['median']:.2f} [{w['min']:.2f} - {w['max']:.2f}]; target (both): {passed(met)}"
        )
    if not applies:
        lines.append(
            f"  utilisation target (>= {TARGET_UTILISATION}) not judged: it holds for the local executor with 2 "
            f"concurrent 1-rank trials"
        )
    if args.repeat < 5:
        lines.append(
            f"  {args.repeat} run(s): a target counts as met on the median of at least 5 runs (--repeat 5); "
            "these figures do not establish it"
        )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.work:
        work = Path(args.work).resolve()
    else:
        (ROOT / "build").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench-tune-", dir=ROOT / "build"))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    sweeps_dir = work / "sweeps" / stamp
    try:
        return run(args, work, sweeps_dir)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, sweeps_dir: Path) -> int:
    jobs = list(args.jobs)
    if args.slurm and "digits" not in jobs:
        jobs.append("digits")  # the Slurm sweep's data
    files = {}
    for job in jobs:
        print(f"preparing {job} in {work / 'data'} ...", flush=True)
        files[job] = prepare(job, work / "data", args.samples)
    ranks = 0
    sweeps, comparisons, waits = [], [], []
    for i in range(args.repeat):
        seed = args.seed + i
        for job in args.jobs:
            rows: dict[str, dict] = {}
            files_of: dict[str, SweepFile] = {}
            order = SCHEDULERS if i % 2 == 0 else SCHEDULERS[::-1]
            for position, sched in enumerate(order):
                job_obj = sweep_job(files[job], work / "data" / job, args, sched, seed, args.trials, args.max_epochs)
                ranks = job_obj.slurm.nodes * job_obj.slurm.ntasks_per_node
                folder = sweeps_dir / f"{job}-{NAMES[sched].lower()}-s{seed}"
                print(
                    f"run {i + 1}/{args.repeat}: {job} {NAMES[sched]} seed {seed} on {args.executor} -> {folder}",
                    flush=True,
                )
                extra = run_sweep(job_obj, folder, args.executor, args.poll, args.verbose)
                f = read_sweep(folder / SWEEP_FILE)
                files_of[sched] = f
                rows[sched] = {
                    "job": job,
                    "scheduler": sched,
                    "executor": args.executor,
                    "executor_role": "compare",
                    "seed": seed,
                    "order": position,
                    **figures(f),
                    "driver_s": extra["driver_s"],
                    "load_start": extra["load_start"],
                    "load_end": extra["load_end"],
                }
                waits += wait_rows(job, sched, seed, extra)
                print(
                    f"  best {rows[sched]['best']:.4f}, {rows[sched]['epochs']} epochs, {rows[sched]['wall_s']:.1f} s, "
                    f"utilisation {rows[sched]['utilisation']:.3f}",
                    flush=True,
                )
            same_trials(files_of)
            target = rows["none"]["best"]
            direction = files_of["none"].direction
            for sched in SCHEDULERS:
                ttt, gap = time_to_target(files_of[sched], target)
                rows[sched].update(time_to_target_s=ttt, target=target, gap=gap)
                rows[sched]["pass_utilisation"] = bool(rows[sched]["utilisation"] >= TARGET_UTILISATION)
                sweeps.append(rows[sched])
            comparisons.append(compare(job, seed, rows, direction))
    if args.slurm:
        sweeps.append(slurm_sweep(args, files["digits"], work, sweeps_dir, waits))
    summary = summarise(sweeps, comparisons, args.jobs)
    text = report(args, sweeps, comparisons, summary, waits, ranks)
    print(text, flush=True)
    write(args, sweeps, comparisons, summary, waits, ranks, text)
    return 0


def same_trials(files_of: dict[str, SweepFile]) -> None:
    """Check the premise of the comparison: trial i has the same values in both sweeps."""
    a, r = files_of["asha"], files_of["none"]
    for x, y in zip(a.trials, r.trials, strict=True):
        if x.params != y.params:
            raise TwinError(f"trial {x.id} has other values under ASHA ({x.params}) than in random search ({y.params})")


def wait_rows(job: str, sched: str, seed: int, extra: dict) -> list[dict]:
    return [
        {"job": job, "scheduler": sched, "seed": seed, "trial": t, "rung": r, "job_id": j, "wait_s": extra["waits"][j]}
        for t, r, j in extra["segments"]
        if j in extra["waits"]
    ]


def slurm_sweep(args, job_file: Path, work: Path, sweeps_dir: Path, waits: list[dict]) -> dict:
    """A random search of --slurm-trials one-epoch digits trials on Slurm: its figures, its
    segments' queue waits added to ``waits``."""
    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True, timeout=60).returncode != 0:
        raise TwinError(
            "--slurm: Slurm does not answer here (sinfo); start it (scripts/slurm-up.sh) or leave --slurm out"
        )
    job = sweep_job(job_file, work / "data" / "digits", args, "none", args.seed, args.slurm_trials, 1)
    folder = sweeps_dir / f"digits-slurm-s{args.seed}"
    print(f"Slurm: digits random search, {args.slurm_trials} trials of 1 epoch -> {folder}", flush=True)
    extra = run_sweep(job, folder, "slurm", args.poll, args.verbose)
    f = read_sweep(folder / SWEEP_FILE)
    waits += wait_rows("digits", "none", args.seed, extra)
    return {
        "job": "digits",
        "scheduler": "none",
        "executor": "slurm",
        "executor_role": "queue_wait",
        "seed": args.seed,
        "order": 0,
        **figures(f),
        "driver_s": extra["driver_s"],
        "load_start": extra["load_start"],
        "load_end": extra["load_end"],
        "time_to_target_s": math.nan,
        "target": math.nan,
        "gap": math.nan,
        "pass_utilisation": False,
    }


def write(args, sweeps, comparisons, summary, waits, ranks: int, text: str) -> None:
    columns = (
        "job scheduler executor seed order best epochs wall_s time_to_target_s target gap utilisation busy_s "
        "driver_s trials failed reports workers load_start load_end pass_utilisation"
    ).split()
    tables = {"sweeps": [{k: s[k] for k in columns} for s in sweeps]}
    if comparisons:
        tables["comparisons"] = comparisons
    tables["summary"] = summary
    if waits:
        tables["queue_wait"] = waits
    attrs = {
        "jobs": ",".join(args.jobs),
        "executor": args.executor,
        "concurrent": args.concurrent,
        "ranks": ranks,
        "trials": args.trials,
        "strategy": "random",
        "min_epochs": args.min_epochs,
        "reduction_factor": args.eta,
        "max_epochs": args.max_epochs,
        "rungs": np.asarray(args.rungs, dtype=np.int64),
        "seed": args.seed,
        "repeat": args.repeat,
        "quick": args.quick,
        "threads": os.environ.get("OMP_NUM_THREADS", ""),
        "synthetic_samples": args.samples,
        "synthetic_signal": SYNTH_SIGNAL,
        "synthetic_noise": SYNTH_NOISE,
        "synthetic_shift": SYNTH_SHIFT,
        "slurm": args.slurm,
        "slurm_trials": args.slurm_trials if args.slurm else 0,
        "target_best_points": TARGET_POINTS,
        "target_epochs_ratio": TARGET_EPOCHS,
        "target_utilisation": TARGET_UTILISATION,
        "utilisation_target_applies": utilisation_applies(args, ranks),
        "cpus": os.cpu_count() or 0,
        "command": "python benchmarks/tune.py " + " ".join(args.argv),
    }
    path = write_results(Path(args.out) / "tune.h5", tables, attrs)
    txt = Path(args.out) / "tune.txt"
    with writing(txt, lambda e: f"--out {txt.parent}: cannot write {txt.name} ({e.strerror or e})") as tmp:
        tmp.write_text(text + "\n")
    print(f"results: {path} and {txt}", flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TwinError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
