"""The twin against its simulator on the same held-out scenarios: ``python benchmarks/twin.py``.

Run it after training the default twin (jobs/plate.toml simulated into data/plate,
jobs/plate_twin.toml trained into runs/plate_twin); one process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DESCRIPTION = """\
The twin (a field job's surrogate) against the simulator it replaces, on the same held-out
scenarios (the dataset's test split, else val; --split), in one process on the CPU:

Speed. The simulator's time per trajectory is a fresh timed run of the Numba solver
(twinhpc.sim.plate.Plate.run, serial kernel, after one warm-up run that compiles it) on each
held-out scenario's parameters: the kernel's seconds (the key figure: both sides get their
inputs ready) and Plate.run's wall time (sources and forcing built too). The stored sim_seconds
are not used for this (they include the JIT warm-up of each rank's first scenario). The twin's
time per trajectory is the wall time of Surrogate.rollout (u0, forcing, params in; the T-step
trajectory out, physical units) over the scenarios in batches of each --batches size (the
scenarios repeated to fill a batch), divided by the trajectories; the median over --rounds
rounds after a warm-up. Speed-up = simulator ÷ twin, at batch 1 and at the best batch. torch
runs --threads threads (default 1: one core against the serial solver's one core).

Break-even. How many solves pay back building the twin: (data generation + training) ÷
(simulator − twin at the best batch) per solve, in core-seconds: data generation = the sum of
the dataset's sim_seconds (every split; the solver's time on each rank), training = the wall
time of each attempt in the run's results.h5 × its ranks. Infinite when the twin is not faster.

Accuracy. The twin's validation (twinhpc.train.twin_validation, as `twinhpc validate`): nRMSE
of the temperature rise above T-inf and PDEBench's absolute nRMSE, one step ahead from every
true u[t] and rolled out from u[0] to the horizons 1, 10, 50 (clipped to T), against
persistence and the linear baseline fitted on the training split.

Targets (the default job: jobs/plate_twin.toml on jobs/plate.toml's 256 scenarios, 32×32, 50
steps; --threads 1):
  one-step nRMSE of the rise <= 1e-2;  50-step nRMSE of the rise <= 5e-2 (the absolute figures
  beside them); the twin better than both baselines at every horizon (worst ratio twin ÷ the
  better baseline < 1); speed-up at the best batch >= 100.
Prints a table and PASS/FAIL per target; with --results FOLDER writes a new record
FOLDER/twin/<UTC time>-<commit>.h5 (tables `batches`: batch, seconds per trajectory, speed-up;
`accuracy`: model, metric, horizon (0: one step from every true state, -1: the full rollout),
value; the figures and settings as attributes; docs/benchmark-records.md). Exit status 1 if a
target fails (not with --quick).

  python benchmarks/twin.py --results benchmarks/results
  python benchmarks/twin.py --job JOB.toml --run RUN --quick       # a smoke test
"""


def parse_args(argv):
    from twinhpc.bench.targets import TWIN_BEATS, TWIN_NRMSE_1, TWIN_NRMSE_50, TWIN_SPEEDUP

    p = argparse.ArgumentParser(
        prog="benchmarks/twin.py",
        description=DESCRIPTION.replace("<= 1e-2", f"<= {TWIN_NRMSE_1:g}")
        .replace("<= 5e-2", f"<= {TWIN_NRMSE_50:g}")
        .replace("< 1);", f"< {TWIN_BEATS:g});")
        .replace(">= 100.", f">= {TWIN_SPEEDUP:g}."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--job", default="jobs/plate_twin.toml", help="the field job (default jobs/plate_twin.toml)")
    p.add_argument("--run", help="its run directory (default: the job's train.out)")
    p.add_argument("--checkpoint", default="last", help="last (default), best or a checkpoint file")
    p.add_argument("--split", help="held-out split (default: the job's test split if present, else val)")
    p.add_argument("--batches", default="1,4,16,64", help="twin batch sizes timed (default 1,4,16,64)")
    p.add_argument("--rounds", type=int, help="timing rounds (default 3; --quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--scenarios", type=int, help="at most this many held-out scenarios (default: all)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 1 round, batches 1 and 4; no verdict")
    p.add_argument("--results", metavar="FOLDER", help="write a new record into FOLDER/twin/")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.quick and args.batches == "1,4,16,64":
        args.batches = "1,4"
    args.batches = sorted({int(b) for b in args.batches.split(",")})
    return args


def simulator_times(cfg, params: np.ndarray, rounds: int) -> tuple[float, float]:
    """Median kernel seconds and Plate.run wall seconds per trajectory over the scenarios and
    rounds, after one warm-up run."""
    from twinhpc.sim.plate import Plate

    plate = Plate(cfg)
    plate.run(params[0].astype(np.float64))  # compiles the kernel (or loads it from the cache)
    kernel, wall = [], []
    for _ in range(rounds):
        for p in params:
            t0 = time.perf_counter()
            r = plate.run(p.astype(np.float64))
            wall.append(time.perf_counter() - t0)
            kernel.append(r.seconds)
    return statistics.median(kernel), statistics.median(wall)


def twin_times(twin, u0, f, p, batches: list[int], rounds: int, steps: int) -> dict[int, float]:
    """Median seconds per trajectory of the twin's rollout at each batch size."""
    out = {}
    for b in batches:
        reps = max(1, -(-b // len(u0)))
        uu, ff, pp = (None if a is None else np.concatenate([a] * reps) for a in (u0, f, p))
        count = len(uu)
        twin.rollout(uu[:b], None if ff is None else ff[:b], None if pp is None else pp[:b], steps=steps, batch_size=b)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            twin.rollout(uu, ff, pp, steps=steps, batch_size=b)
            times.append((time.perf_counter() - t0) / count)
        out[b] = statistics.median(times)
    return out


def build_cost(job, run: Path, dataset: str) -> dict[str, float]:
    """Core-seconds of data generation (Σ sim_seconds) and training (Σ attempt wall × ranks)."""
    from twinhpc.data.format import Manifest
    from twinhpc.io.results import read_results
    from twinhpc.train.twin_validation import read_split

    manifest = Manifest.load(dataset)
    sim = 0.0
    if "sim_seconds" in {f.name for f in manifest.fields}:
        for split in manifest.split_names:
            sim += float(read_split(dataset, split, ["sim_seconds"])["sim_seconds"].sum())
    results = read_results(run)
    attempts = [a for a in results["attempts"] if np.isfinite(a["end"])]
    if attempts:
        wall = sum(a["end"] - a["start"] for a in attempts)
        core = sum((a["end"] - a["start"]) * a["ranks"] for a in attempts)
    else:
        ranks = int(results["environment"].get("ranks", 1) or 1)
        wall = float(np.nansum(results["metrics"].get("epoch_time_s", [0.0])))
        core = wall * ranks
    return {"data_core_s": sim, "train_wall_s": float(wall), "train_core_s": float(core)}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from twinhpc.bench import format_table
    from twinhpc.bench.targets import TWIN_BEATS, TWIN_NRMSE_1, TWIN_NRMSE_50, TWIN_SPEEDUP
    from twinhpc.config import SimulateConfig, load_job
    from twinhpc.data.format import Manifest
    from twinhpc.io.bench_results import write_results
    from twinhpc.train.rollout import load_surrogate
    from twinhpc.train.twin_metrics import LinearBaseline, PlatePhysics
    from twinhpc.train.twin_validation import (
        FIT_SCENARIOS,
        LINEAR_RANK,
        STABILITY_STEPS,
        Roles,
        default_split,
        evaluate_scenarios,
        horizons_of,
        read_split,
        summary_of,
    )

    torch.set_num_threads(args.threads)
    job = load_job(args.job)
    run = Path(args.run or job.train.out)
    dataset = job.data.dataset
    manifest = Manifest.load(dataset)
    prov = manifest.provenance.get("simulate")
    if not prov:
        print(f"{dataset}: not a `twinhpc simulate` dataset (no provenance.simulate); nothing to time", file=sys.stderr)
        return 2
    cfg = SimulateConfig.from_dict(prov["table"])
    twin = load_surrogate(run, args.checkpoint)
    fields = twin.norm.fields
    names = {role: fields[role][0] for role in ("state", "forcing", "params") if role in fields}
    split = args.split or default_split(manifest, job)
    data = read_split(dataset, split, list(names.values()), limit=args.scenarios)
    u, f, p = data[names["state"]], data.get(names.get("forcing", "")), data.get(names.get("params", ""))
    n, steps = len(u), u.shape[1] - 1
    phys = PlatePhysics.from_provenance(prov, twin.task.params) if p is not None and f is not None else None
    roles = Roles(names["state"], names.get("forcing"), names.get("params"), phys)

    # accuracy
    t0 = time.perf_counter()
    train = read_split(dataset, job.data.train_split, roles.names, limit=FIT_SCENARIOS)
    linear = LinearBaseline.fit(
        train[roles.state], train.get(roles.forcing or ""), train.get(roles.params or ""), rank=LINEAR_RANK
    )
    rows, _ = evaluate_scenarios(twin, linear, u, f, p, roles, stability_steps=STABILITY_STEPS)
    hs = horizons_of(steps)
    figures, full, _, one_step = summary_of(rows, int(np.prod(u.shape[2:])), hs)
    accuracy_s = time.perf_counter() - t0
    judged = "nrmse_rise" if phys is not None else "nrmse"

    # speed
    sim_kernel, sim_wall = simulator_times(cfg, p, args.rounds)
    twin_s = twin_times(twin, u[:, 0], f, p, args.batches, args.rounds, steps)
    best = min(twin_s, key=twin_s.get)
    cost = build_cost(job, run, dataset)
    saving = sim_kernel - twin_s[best]
    break_even = (cost["data_core_s"] + cost["train_core_s"]) / saving if saving > 0 else math.inf

    def ratio_to_baselines(metric: str) -> float:
        twin_v = [one_step["twin"][metric], *figures["twin"][metric], full["twin"][metric]]
        base = [
            min(a, b)
            for a, b in zip(
                [one_step["persistence"][metric], *figures["persistence"][metric], full["persistence"][metric]],
                [one_step["linear"][metric], *figures["linear"][metric], full["linear"][metric]],
                strict=True,
            )
        ]
        return max(t / b for t, b in zip(twin_v, base, strict=True))

    h50 = hs.index(min(50, steps))
    fig = {
        "one_step_nrmse_rise": one_step["twin"].get("nrmse_rise", math.nan),
        "one_step_nrmse": one_step["twin"]["nrmse"],
        "h50_nrmse_rise": float(figures["twin"]["nrmse_rise"][h50]) if phys is not None else math.nan,
        "h50_nrmse": float(figures["twin"]["nrmse"][h50]),
        "worst_ratio_to_baselines": ratio_to_baselines(judged),
        "sim_seconds": sim_kernel,
        "sim_wall_seconds": sim_wall,
        "twin_seconds_batch1": twin_s[min(args.batches)],
        "twin_seconds_best": twin_s[best],
        "best_batch": best,
        "speedup_batch1": sim_kernel / twin_s[min(args.batches)],
        "speedup_best": sim_kernel / twin_s[best],
        "speedup_best_wall": sim_wall / twin_s[best],
        "break_even_solves": break_even,
        # validate's stability check (not a target): excursion beyond the physical span, in its widths
        "stability_steps": STABILITY_STEPS,
        "stability_excursion_max": float(np.max(rows["stability_excursion"])),
        "stability_excursion_median": float(np.median(rows["stability_excursion"])),
        "stability_diverged": int((rows["stability_diverged_at"] >= 0).sum()),
        **cost,
    }
    checks = {
        "one_step": (fig["one_step_nrmse_rise"] <= TWIN_NRMSE_1, f"one-step nRMSE of the rise <= {TWIN_NRMSE_1:g}"),
        "h50": (fig["h50_nrmse_rise"] <= TWIN_NRMSE_50, f"{hs[h50]}-step nRMSE of the rise <= {TWIN_NRMSE_50:g}"),
        "baselines": (
            fig["worst_ratio_to_baselines"] < TWIN_BEATS,
            f"twin ÷ better baseline < {TWIN_BEATS:g} at every horizon",
        ),
        "speedup": (fig["speedup_best"] >= TWIN_SPEEDUP, f"speed-up at the best batch >= {TWIN_SPEEDUP:g}"),
    }

    batch_rows = [
        {"batch": b, "seconds_per_trajectory": s, "speedup": sim_kernel / s} for b, s in sorted(twin_s.items())
    ]
    acc_rows = []
    for model in ("twin", "persistence", "linear"):
        for metric in ("nrmse_rise", "nrmse", "rmse", "max_abs", "energy_residual"):
            if metric not in full[model]:
                continue
            if metric in one_step[model]:
                acc_rows.append({"model": model, "metric": metric, "horizon": 0, "value": one_step[model][metric]})
            for h, v in zip(hs, figures[model][metric], strict=True):
                acc_rows.append({"model": model, "metric": metric, "horizon": h, "value": float(v)})
            acc_rows.append({"model": model, "metric": metric, "horizon": -1, "value": full[model][metric]})
    print(
        f"twin vs simulator: {n} {split} scenarios of {steps} steps on a {'x'.join(map(str, u.shape[2:]))} grid, "
        f"{args.rounds} round(s), torch threads {args.threads}; checkpoint {twin.checkpoint}"
    )
    print(format_table(batch_rows, {"batch": "d", "seconds_per_trajectory": ".3e", "speedup": ".2f"}))
    print(
        f"simulator: {sim_kernel:.3e} s per trajectory (kernel), {sim_wall:.3e} s (Plate.run); "
        f"speed-up {fig['speedup_batch1']:.2f}x at batch 1, {fig['speedup_best']:.2f}x at batch {best}"
    )
    print(
        f"break-even: ({cost['data_core_s']:.1f} core-s of data + {cost['train_core_s']:.1f} core-s of training) "
        f"÷ {saving:.3e} s saved per solve = {break_even:.4g} solves"
    )
    print(
        f"accuracy ({accuracy_s:.1f} s): one-step nRMSE of the rise {fig['one_step_nrmse_rise']:.3g} "
        f"(absolute {fig['one_step_nrmse']:.3g}), {hs[h50]}-step {fig['h50_nrmse_rise']:.3g} (absolute "
        f"{fig['h50_nrmse']:.3g}); twin ÷ the better baseline, worst over the horizons: "
        f"{fig['worst_ratio_to_baselines']:.3g}"
    )
    print(
        f"stability ({STABILITY_STEPS} steps from u[T], sources off; not a target): excursion beyond the span "
        f"largest {fig['stability_excursion_max']:.3g}, median {fig['stability_excursion_median']:.3g} widths; "
        f"non-finite in {fig['stability_diverged']} of {n} scenarios"
    )
    for ok, text in checks.values():
        print(f"  {'PASS' if ok else 'FAIL'}  {text}" + ("  (--quick: not judged)" if args.quick else ""))
    attrs = {
        "job": Path(args.job).name,
        "prior": job.train.prior,
        "forcing_window": job.train.forcing_window,
        "run": str(run),
        "dataset": str(dataset),
        "dataset_scenarios": int(sum(s.count for s in manifest.splits)),
        "checkpoint": str(twin.checkpoint),
        "split": split,
        "scenarios": n,
        "steps": steps,
        "grid": "x".join(map(str, u.shape[2:])),
        "threads": args.threads,
        "rounds": args.rounds,
        "quick": int(args.quick),
        "batches": json.dumps(args.batches),
        "horizons": json.dumps(hs),
        "judged_on": judged,
        "linear_rank": linear.rank,
        **{k: (float(v) if not isinstance(v, int) else v) for k, v in fig.items()},
        **{f"pass_{k}": int(ok) for k, (ok, _) in checks.items()},
        "target_one_step": TWIN_NRMSE_1,
        "target_h50": TWIN_NRMSE_50,
        "target_baselines": TWIN_BEATS,
        "target_speedup": TWIN_SPEEDUP,
    }
    if args.json:
        print(json.dumps({**attrs, "batches": batch_rows, "accuracy": acc_rows}))
    if args.results:
        path = write_results(f"{args.results}/twin.h5", {"batches": batch_rows, "accuracy": acc_rows}, attrs)
        print(f"record: {path}")
    return 0 if args.quick or all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
