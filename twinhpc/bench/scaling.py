"""``twinhpc bench scaling``: a job's training at several rank counts, weak or strong, and the
cost model's validation and predictions (docs/scaling.md).

The study runs in one process that starts no MPI itself: each rank count ``k`` is its own MPI
job, ``mpirun -n k`` (or ``srun -n k`` inside a Slurm allocation) of ``python -m twinhpc train
JOB --out WORK/k<k>`` for ``warmup + steps`` optimizer steps, with one per-step record per step
(``train.log_every = 1``). Its ``RUN/results.h5`` gives the step times and phases of the steps
after the warm-up (:func:`summarize`); the rows, the fits of the all-reduce model, its
validation and predictions become one benchmark record ``FOLDER/scaling/<time>-<commit>.h5``
with two PNGs beside it (:func:`plot_study`).

::

    from twinhpc.bench.scaling import run_study
    study = run_study("jobs/digits.toml", [1, 2], "weak", steps=20, results="bench-results")
    study["rows"][1]["efficiency"]
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Job, load_job
from ..env import launch_environ
from ..errors import TwinError
from ..io.bench_results import Record, read_record, read_records, write_results
from ..io.results import read_results
from . import format_table
from .costmodel import ALGORITHMS, Cluster, Fit, Link, coefficients, fit_rows, predict_step, step_allreduce

MODES = ("weak", "strong")
LAUNCHERS = ("mpirun", "srun")
#: optimizer steps measured per rank count, and steps run before them (not measured)
DEFAULT_STEPS, DEFAULT_WARMUP = 20, 3
#: the phases of a step as results.h5 records them (``/steps/<phase>_s``), in plotting order
PHASES = ("data_wait", "forward_backward", "communication", "optimizer")
#: seconds one rank count may run (``--timeout``)
DEFAULT_TIMEOUT = 3600.0


class ScalingError(TwinError):
    """A study that cannot run or stopped: names the rank count, the option or the file."""


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, without repeats); an error names ``what``."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ScalingError(f"{what} {text!r}: not a comma-separated list of integers (e.g. 1,2,4)") from None
    if not values or values[0] < 1:
        raise ScalingError(f"{what} {text!r}: need one or more rank counts >= 1")
    return values


@dataclass(frozen=True)
class Point:
    """One rank count of a study and its batch."""

    ranks: int
    per_rank_batch: int
    global_batch: int
    threads: int  # torch threads per rank
    cores: int  # the machine's cores (of this process)

    @property
    def oversubscribed(self) -> bool:
        return self.ranks * self.threads > self.cores

    @property
    def note(self) -> str:
        return f"oversubscribed ({self.ranks} ranks on {self.cores} cores)" if self.oversubscribed else ""


def plan(job: Job, ranks: Sequence[int], mode: str, cores: int, batch: int | None = None) -> list[Point]:
    """The rank counts' batches. Weak: a per-rank batch of ``batch`` (default the job's
    ``data.batch_size``), global = per-rank × k. Strong: a global batch of ``batch`` (default
    ``data.batch_size``), per-rank = global / k; a k that does not divide it is refused.

    Raises
    ------
    ScalingError
        An unknown mode, or (strong) the rank counts that do not divide the global batch.
    """
    if mode not in MODES:
        raise ScalingError(f"--mode {mode!r}: one of {', '.join(MODES)}")
    size = batch or job.data.batch_size
    threads = job.slurm.cpus_per_task
    if mode == "weak":
        return [Point(k, size, size * k, threads, cores) for k in ranks]
    bad = [k for k in ranks if size % k]
    if bad:
        raise ScalingError(
            f"--mode strong: the global batch {size} (data.batch_size) cannot be split evenly over "
            + ", ".join(f"k={k}" for k in bad)
            + " ranks; choose rank counts that divide it, or another --batch"
        )
    return [Point(k, size // k, size, threads, cores) for k in ranks]


def train_overrides(point: Point, steps: int, warmup: int) -> list[str]:
    """The ``--set`` items of one rank count's training: its global batch, ``warmup + steps``
    optimizer steps with a record per step, one checkpoint at the end, no early stopping."""
    total = warmup + steps
    return [
        f"data.batch_size={point.global_batch}",
        f"train.max_steps={total}",
        f"train.epochs={total}",  # an epoch has at least one step: the run ends at max_steps
        "train.log_every=1",
        f"train.checkpoint_every={total}",
        "train.keep_checkpoints=1",
        "train.keep_best=false",
        "train.early_stopping.patience=0",
    ]


def _open_mpi() -> bool:
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in out or "OpenRTE" in out


def launch_command(launcher: str, point: Point, train_args: Sequence[str], open_mpi: bool = True) -> list[str]:
    """The command that starts ``point.ranks`` ranks of ``python -m twinhpc train ...``."""
    program = [sys.executable, "-m", "twinhpc", "train", *train_args]
    if launcher == "mpirun":
        extra = (["-x", "OMP_NUM_THREADS"] + (["--oversubscribe"] if point.oversubscribed else [])) if open_mpi else []
        return ["mpirun", "-n", str(point.ranks), *extra, *program]
    if launcher == "srun":
        extra = ["--overcommit"] if point.oversubscribed else []
        return ["srun", "-n", str(point.ranks), f"--cpus-per-task={point.threads}", *extra, *program]
    raise ScalingError(f"--launcher {launcher!r}: one of {', '.join(LAUNCHERS)}")


def summarize(results: dict, point: Point, warmup: int, accumulate: int) -> dict[str, Any]:
    """One row of the study from a run's ``read_results`` dict: the steps after ``warmup``."""
    steps = results["steps"]
    keep = np.asarray(steps["step"]) > warmup
    if not keep.any():
        raise ScalingError(f"k={point.ranks}: no step after the {warmup} warm-up steps in its results.h5")

    def med(name: str) -> float:
        values = np.asarray(steps.get(name, np.full(len(keep), np.nan)), dtype=float)[keep]
        return float(np.median(values)) if np.isfinite(values).any() else math.nan

    times = np.asarray(steps["step_time_s"], dtype=float)[keep]
    samples_per_step = point.global_batch * accumulate
    step = float(np.median(times))
    return dict(
        ranks=point.ranks,
        per_rank_batch=point.per_rank_batch,
        global_batch=point.global_batch,
        steps=int(keep.sum()),
        step_s=step,
        step_p10_s=float(np.percentile(times, 10)),
        step_p90_s=float(np.percentile(times, 90)),
        samples_per_s=samples_per_step / step,
        **{f"{phase}_s": med(f"{phase}_s") for phase in PHASES},
        allreduce_bytes=med("allreduce_bytes"),
        gradient_bytes=med("gradient_bytes"),
        oversubscribed=point.oversubscribed,
        note=point.note,
    )


def add_efficiency(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """``speedup`` and ``efficiency`` of every row against the first (the smallest rank count
    k0): weak — speedup = throughput(k) / throughput(k0), efficiency = speedup / (k / k0);
    strong — speedup = step time(k0) / step time(k), efficiency = speedup / (k / k0). With
    k0 = 1 these are throughput(k) ÷ (k × throughput(1)) and T(1)/T(k), (T(1)/T(k))/k."""
    if not rows:
        return rows
    base = rows[0]
    for row in rows:
        factor = row["ranks"] / base["ranks"]
        if mode == "weak":
            speedup = row["samples_per_s"] / base["samples_per_s"]
        else:
            speedup = base["step_s"] / row["step_s"]
        row["speedup"], row["efficiency"] = speedup, speedup / factor
    return rows


def run_point(
    job_path: str,
    point: Point,
    work: Path,
    steps: int,
    warmup: int,
    launcher: str,
    overrides: Sequence[str],
    timeout: float,
    open_mpi: bool,
) -> Path:
    """Train one rank count into ``work/k<k>``; its run directory. Its launcher's output goes to
    ``work/k<k>.log``.

    Raises
    ------
    ScalingError
        Naming k, the exit status and the log when the launcher fails or runs past ``timeout``.
    """
    run_dir, log = work / f"k{point.ranks}", work / f"k{point.ranks}.log"
    args = [job_path, "--out", str(run_dir)]
    for item in [*overrides, *train_overrides(point, steps, warmup)]:
        args += ["--set", item]
    cmd = launch_command(launcher, point, args, open_mpi)
    env = launch_environ(OMP_NUM_THREADS=str(point.threads))
    work.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        try:
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except FileNotFoundError:
            raise ScalingError(f"k={point.ranks}: {cmd[0]} not found (--launcher {launcher}); log {log}") from None
        except subprocess.TimeoutExpired:
            raise ScalingError(f"k={point.ranks}: {launcher} ran past --timeout {timeout:g} s; log {log}") from None
    if r.returncode != 0:
        tail = _tail(log)
        raise ScalingError(
            f"k={point.ranks}: {launcher} -n {point.ranks} exited with status {r.returncode}; log {log}"
            + (f"\n{tail}" if tail else "")
        )
    return run_dir


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [t for t in text if "error" in t.lower()]
    return "\n".join((errors or text)[-lines:])


# -- the cost model on the study ---------------------------------------------------------------------


def allreduce_fits(folder: str | os.PathLike[str]) -> tuple[list[Fit], list[str]]:
    """The model's links fitted to the newest ``twinhpc bench allreduce`` record of each rank
    count in ``folder`` (``FOLDER/allreduce/*.h5``); and those records' paths."""
    folder = Path(folder)
    if not (folder / "allreduce").is_dir():
        return [], []
    records = read_records(folder).get("allreduce", [])
    newest: dict[int, Record] = {}
    for r in records:  # oldest first: the newest of each rank count wins
        for ranks in {int(row["ranks"]) for row in r.rows("rows")}:
            newest[ranks] = r
    used = list({str(r.path): r for r in newest.values()}.values())
    rows = [row for ranks, r in sorted(newest.items()) for row in r.rows("rows") if int(row["ranks"]) == ranks]
    return fit_rows(rows), [str(r.path) for r in used]


def training_path(fits: Sequence[Fit], wire_dtype: str) -> list[Fit]:
    """The fits of what the training's all-reduce uses on one node: the engine on its shared
    memory (DataParallel's CPU buckets) without a wire dtype, else any fitted algorithm (the
    engine's table picks the fastest)."""
    shared = [f for f in fits if f.impl == "twinhpc:shared"]
    return shared if wire_dtype == "none" and shared else list(fits)


def fitted_cost(fits: Sequence[Fit]) -> Callable[[float, int], tuple[str, float]]:
    """``cost(n, p) -> (impl, seconds)``: the cheapest of ``fits`` on one node."""

    def cost(n: float, p: int) -> tuple[str, float]:
        best = min(fits, key=lambda f: _fit_time(f, n, p))
        return best.impl, _fit_time(best, n, p)

    return cost


def _fit_time(fit: Fit, n: float, p: int) -> float:
    a, b = coefficients(fit.algorithm, p, n)
    return a * fit.link.alpha + b * fit.link.beta


def validate(rows: Sequence[dict], fits: Sequence[Fit], cap_bytes: float, overlap: float) -> list[dict]:
    """Predict every measured row above one rank from the 1-rank row and the fitted all-reduce:
    compute time scaled by the per-rank batch, plus the all-reduce not hidden (overlap)."""
    one = next((r for r in rows if r["ranks"] == 1), None)
    if one is None or not fits:
        return []
    cost = fitted_cost(fits)
    out = []
    for row in rows:
        if row["ranks"] == 1:
            continue
        ratio = row["per_rank_batch"] / one["per_rank_batch"]
        grad = row["gradient_bytes"] if math.isfinite(row["gradient_bytes"]) else one["gradient_bytes"]
        allreduce, used = step_allreduce(grad, row["ranks"], cap_bytes, cost)
        predicted = predict_step(one["step_s"] * ratio, one["forward_backward_s"] * ratio, allreduce, overlap)
        out.append(
            dict(
                ranks=row["ranks"],
                measured_step_s=row["step_s"],
                predicted_step_s=predicted,
                predicted_allreduce_s=allreduce,
                measured_communication_s=row["communication_s"],
                error=predicted / row["step_s"] - 1.0,
                impl=used[0] if used else "",
                oversubscribed=row["oversubscribed"],
                note=row["note"],
            )
        )
    return out


def predict(
    one: dict,
    sizes: Sequence[int],
    cluster: Cluster,
    cap_bytes: float,
    overlap: float,
    accumulate: int = 1,
) -> list[dict]:
    """Weak scaling at ``sizes`` ranks from the 1-rank row ``one``: the step's all-reduce on
    ``cluster`` (the cheapest algorithm per bucket), the step time, samples/s and efficiency."""
    out = []
    for p in sizes:
        allreduce, used = step_allreduce(one["gradient_bytes"], p, cap_bytes, cluster.pick)
        step = predict_step(one["step_s"], one["forward_backward_s"], allreduce, overlap)
        r, nodes = cluster.layout(p)
        out.append(
            dict(
                ranks=p,
                nodes=nodes,
                ranks_per_node=r,
                algorithm=used[0] if used else "",
                allreduce_s=allreduce,
                step_s=step,
                samples_per_s=p * one["per_rank_batch"] * accumulate / step,
                efficiency=one["step_s"] / step,
            )
        )
    return out


# -- the study ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """What ``--predict`` asks: the rank counts and the cluster's links."""

    sizes: tuple[int, ...]
    link_gbps: float
    latency_us: float
    ranks_per_node: int
    intra_gbps: float | None = None
    intra_latency_us: float | None = None

    def cluster(self, node: Link | None) -> Cluster:
        """The cluster; its intra-node link from the options, else ``node`` (this machine's fit)."""
        intra = node
        if self.intra_gbps is not None:
            intra = Link.from_gbps(self.intra_gbps, self.intra_latency_us if self.intra_latency_us is not None else 0.5)
        return Cluster(Link.from_gbps(self.link_gbps, self.latency_us), intra, self.ranks_per_node)


def model_part(
    rows: list[dict],
    job: Job,
    allreduce_folder: str | os.PathLike[str],
    overlap: float,
    prediction: Prediction | None,
) -> dict[str, Any]:
    """The fits, the validation of ``rows`` and the predictions (those need a 1-rank row)."""
    fits, used = allreduce_fits(allreduce_folder)
    cap = job.train.bucket_cap_mb * (1 << 20)
    path = training_path(fits, job.train.wire_dtype)
    out: dict[str, Any] = dict(fits=fits, allreduce_records=used, validation=validate(rows, path, cap, overlap))
    out["prediction"] = []
    if prediction is not None:
        one = next((r for r in rows if r["ranks"] == 1), None)
        if one is None:
            raise ScalingError("--predict needs a 1-rank measurement: add 1 to --ranks")
        node = path[0].link if path else None
        cluster = prediction.cluster(node)
        out["prediction"] = predict(one, prediction.sizes, cluster, cap, overlap, job.optim.accumulate)
        out["cluster"] = cluster
    return out


def run_study(
    job_path: str,
    ranks: Sequence[int],
    mode: str,
    *,
    steps: int = DEFAULT_STEPS,
    warmup: int = DEFAULT_WARMUP,
    launcher: str = "mpirun",
    overrides: Sequence[str] = (),
    batch: int | None = None,
    results: str | os.PathLike[str] | None = "bench-results",
    work: str | os.PathLike[str] | None = None,
    allreduce_results: str | os.PathLike[str] | None = None,
    overlap: float = 0.0,
    prediction: Prediction | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cores: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the study; returns its figures (``rows``, ``validation``, ``prediction``, ``fits``,
    ``record``, ``plots``). Writes the record and its PNGs into ``results`` (``None``: nothing).

    Raises
    ------
    ScalingError
        A bad option, a rank count that cannot run (naming k and its log: the study stops
        there and writes no record), or a run without per-step records.
    """
    if steps < 1 or warmup < 0:
        raise ScalingError(f"--steps {steps} / --warmup {warmup}: need steps >= 1 and warmup >= 0")
    job = load_job(job_path, overrides)
    cores = cores or len(os.sched_getaffinity(0))
    points = plan(job, ranks, mode, cores, batch)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    work = Path(work) if work else Path("runs") / f"scaling-{Path(job_path).stem}-{stamp}"
    open_mpi = launcher == "mpirun" and _open_mpi()
    rows = []
    for i, point in enumerate(points, 1):
        what = f"{point.per_rank_batch} per rank, global {point.global_batch}"
        over = f"; {point.note}" if point.note else ""
        say(f"scaling [{i}/{len(points)}] k={point.ranks}: {launcher} -n {point.ranks}, batch {what}{over}")
        t0 = time.perf_counter()
        run_dir = run_point(job_path, point, work, steps, warmup, launcher, overrides, timeout, open_mpi)
        try:
            recorded = read_results(run_dir / "results.h5")
        except (OSError, TwinError) as e:
            raise ScalingError(f"k={point.ranks}: cannot read {run_dir / 'results.h5'} ({e})") from None
        row = summarize(recorded, point, warmup, job.optim.accumulate)
        rows.append(row)
        add_efficiency(rows, mode)
        say(
            f"scaling [{i}/{len(points)}] k={point.ranks}: {row['samples_per_s']:.1f} samples/s, step "
            f"{row['step_s'] * 1e3:.1f} ms (p10-p90 {row['step_p10_s'] * 1e3:.1f}-{row['step_p90_s'] * 1e3:.1f}), "
            f"efficiency {row['efficiency']:.3f} ({time.perf_counter() - t0:.0f} s){over}"
        )
    model = model_part(rows, job, allreduce_results or results or "bench-results", overlap, prediction)
    figures: dict[str, Any] = dict(
        rows=rows,
        mode=mode,
        job=job_path,
        steps=steps,
        warmup=warmup,
        launcher=launcher,
        cores=cores,
        threads_per_rank=job.slurm.cpus_per_task,
        overlap=overlap,
        work=str(work),
        **model,
    )
    if results is not None:
        record = write_study(Path(results), figures, job, prediction)
        figures["record"] = str(record)
        figures["plots"] = [str(p) for p in plot_study(figures, record)]
    return figures


def write_study(results: Path, figures: dict, job: Job, prediction: Prediction | None) -> Path:
    """A new record ``results/scaling/<time>-<commit>.h5``: tables ``rows`` (one per rank
    count), ``fits``, ``validation`` and ``prediction`` (the last three when there are any) and
    the study's settings as attributes."""
    tables: dict[str, list[dict]] = {"rows": figures["rows"]}
    if figures["fits"]:
        tables["fits"] = [
            dict(
                impl=f.impl,
                algorithm=f.algorithm,
                ranks=",".join(map(str, f.ranks)),
                points=f.points,
                latency_us=f.link.latency_us,
                gbps=f.link.gbps,
                rms_relative_error=f.rms_relative_error,
            )
            for f in figures["fits"]
        ]
    for name in ("validation", "prediction"):
        if figures[name]:
            tables[name] = figures[name]
    attrs: dict[str, Any] = {
        key: figures[key] for key in ("mode", "job", "steps", "warmup", "launcher", "cores", "threads_per_rank")
    }
    attrs.update(
        job_name=Path(figures["job"]).stem,
        model=job.model.name,
        accumulate=job.optim.accumulate,
        bucket_cap_mb=job.train.bucket_cap_mb,
        wire_dtype=job.train.wire_dtype,
        overlap=figures["overlap"],
        reference_ranks=figures["rows"][0]["ranks"],
        work=figures["work"],
        allreduce_records=json.dumps(figures["allreduce_records"]),
    )
    if prediction is not None:
        attrs.update(
            link_gbps=prediction.link_gbps,
            latency_us=prediction.latency_us,
            ranks_per_node=prediction.ranks_per_node,
            intra_gbps=figures["cluster"].node.gbps,
            intra_latency_us=figures["cluster"].node.latency_us,
        )
    return write_results(results / "scaling.h5", tables, attrs)


def plot_study(figures: dict, record: Path) -> list[Path]:
    """Two PNGs beside ``record``: ``<record>-efficiency.png`` (efficiency and speed-up against
    ranks, the ideal lines, oversubscribed rank counts marked) and ``<record>-phases.png`` (the
    median step's phases stacked per rank count). Written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = figures["rows"]
    ks = [r["ranks"] for r in rows]
    over = [r["oversubscribed"] for r in rows]
    k0 = ks[0]
    mode = figures["mode"]
    paths = []

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, key, ideal, label in (
        (ax1, "efficiency", [1.0 for _ in ks], "efficiency"),
        (ax2, "speedup", [k / k0 for k in ks], "speed-up"),
    ):
        ax.plot(ks, ideal, "--", color="grey", label="ideal")
        ax.plot(ks, [r[key] for r in rows], "o-", color="#1f77b4", label=f"measured ({mode})")
        bad = [(k, r[key]) for k, r, o in zip(ks, rows, over) if o]
        if bad:
            ax.plot(*zip(*bad), "x", color="#d62728", markersize=11, mew=2, label="oversubscribed: not scaling")
        ax.set_xlabel("ranks")
        ax.set_ylabel(label)
        ax.set_xticks(ks)
        ax.legend(fontsize=7)
    fig.suptitle(f"{Path(figures['job']).stem}: {mode} scaling ({figures['cores']} cores)", fontsize=9)
    paths.append(_save(fig, record.with_name(record.stem + "-efficiency.png"), plt))

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bottom = np.zeros(len(rows))
    labels = [f"{k}{' (oversubscribed)' if o else ''}" for k, o in zip(ks, over)]
    for phase in PHASES:
        values = np.array([r[f"{phase}_s"] * 1e3 for r in rows])
        values = np.nan_to_num(values)
        ax.bar(labels, values, bottom=bottom, label=phase.replace("_", " "))
        bottom += values
    rest = np.maximum(np.array([r["step_s"] * 1e3 for r in rows]) - bottom, 0)
    ax.bar(labels, rest, bottom=bottom, label="other", color="lightgrey")
    for i, o in enumerate(over):
        if o:
            ax.bar(labels[i], bottom[i] + rest[i], fill=False, hatch="//", edgecolor="#d62728")
    ax.set_xlabel("ranks")
    ax.set_ylabel("median step (ms)")
    ax.legend(fontsize=7)
    ax.set_title(f"{Path(figures['job']).stem}: phases of the step ({mode})", fontsize=9)
    paths.append(_save(fig, record.with_name(record.stem + "-phases.png"), plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=90, metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


# -- reading a study back, and text ------------------------------------------------------------------


def newest_study(results: str | os.PathLike[str], job_path: str) -> Record:
    """The newest scaling record in ``results`` of ``job_path`` (same job file name) with a
    1-rank row.

    Raises
    ------
    ScalingError
        Naming the folder when there is none.
    """
    folder = Path(results) / "scaling"
    found = []
    if folder.is_dir():
        for p in sorted(folder.glob("*.h5")):
            r = read_record(p, "scaling")
            if r.attrs.get("job_name") == Path(job_path).stem and any(row["ranks"] == 1 for row in r.rows("rows")):
                found.append(r)
    if not found:
        raise ScalingError(
            f"{folder}: no scaling record of {Path(job_path).name} with a 1-rank row; run a study first "
            f"(twinhpc bench scaling {job_path} --ranks 1,2 --mode weak) or name one with --from RECORD"
        )
    return max(found, key=lambda r: (r.created, r.path.name))


def study_rows(record: Record) -> list[dict]:
    """The ``rows`` of a scaling record, as :func:`summarize` made them."""
    return [dict(r) for r in record.rows("rows")]


def report(figures: dict) -> str:
    """The study as text: the rows (oversubscribed ones say so), the fits, the validation and the
    predictions."""
    parts = []
    if figures.get("rows"):
        rows = [dict(r, note=r["note"] or "") for r in figures["rows"]]
        parts.append(
            f"{figures.get('mode', '')} scaling of {figures.get('job', '')} "
            f"({figures.get('cores', '?')} cores, {figures.get('threads_per_rank', '?')} thread(s) per rank):\n"
            + format_table(
                rows,
                {
                    "ranks": "d",
                    "per_rank_batch": "d",
                    "global_batch": "d",
                    "samples_per_s": ".1f",
                    "step_s": ".4f",
                    "step_p10_s": ".4f",
                    "step_p90_s": ".4f",
                    "data_wait_s": ".4f",
                    "forward_backward_s": ".4f",
                    "communication_s": ".4f",
                    "optimizer_s": ".4f",
                    "allreduce_bytes": ".0f",
                    "speedup": ".3f",
                    "efficiency": ".3f",
                    "note": "",
                },
            )
        )
    fits = figures.get("fits") or []
    if fits:
        parts.append(
            "all-reduce model fitted to the bench allreduce records ("
            + ", ".join(figures.get("allreduce_records", []))
            + "):\n"
            + format_table(
                [
                    dict(
                        impl=f.impl,
                        algorithm=f.algorithm,
                        ranks=",".join(map(str, f.ranks)),
                        latency_us=f.link.latency_us,
                        gbps=f.link.gbps,
                        rms_error=f.rms_relative_error,
                    )
                    for f in fits
                ],
                {"impl": "", "algorithm": "", "ranks": "", "latency_us": ".2f", "gbps": ".2f", "rms_error": ".3f"},
            )
        )
    elif "fits" in figures:
        parts.append(
            "no bench allreduce records to fit the all-reduce model: run `mpirun -n 2 twinhpc bench allreduce "
            "--results FOLDER` (and -n 3) with the study's --results, or name them with --allreduce-results"
        )
    if figures.get("validation"):
        rows = [dict(r, error_pct=100 * r["error"], note=r["note"] or "") for r in figures["validation"]]
        parts.append(
            f"validation: each rank count predicted from the 1-rank step and the fitted all-reduce "
            f"(overlap {figures.get('overlap', 0):g}):\n"
            + format_table(
                rows,
                {
                    "ranks": "d",
                    "measured_step_s": ".4f",
                    "predicted_step_s": ".4f",
                    "predicted_allreduce_s": ".4f",
                    "measured_communication_s": ".4f",
                    "error_pct": "+.1f",
                    "impl": "",
                    "note": "",
                },
            )
        )
    if figures.get("prediction"):
        c = figures.get("cluster")
        where = (
            f"inter-node {c.inter.gbps:g} Gbit/s, {c.inter.latency_us:g} µs; intra-node {c.node.gbps:.3g} Gbit/s, "
            f"{c.node.latency_us:.3g} µs; {c.ranks_per_node} ranks per node"
            if c is not None
            else ""
        )
        parts.append(
            f"predicted weak scaling ({where}; overlap {figures.get('overlap', 0):g}):\n"
            + format_table(
                figures["prediction"],
                {
                    "ranks": "d",
                    "nodes": "d",
                    "ranks_per_node": "d",
                    "algorithm": "",
                    "allreduce_s": ".4f",
                    "step_s": ".4f",
                    "samples_per_s": ".1f",
                    "efficiency": ".3f",
                },
            )
        )
    if figures.get("record"):
        parts.append(f"record {figures['record']}; plots {', '.join(figures.get('plots', []))}")
    return "\n\n".join(parts)


__all__ = ["ALGORITHMS", "MODES", "LAUNCHERS", "ScalingError", "plan", "run_study", "report", "add_efficiency"]


def batch_script(
    command: Sequence[str], ntasks: int, threads: int, job: Job, job_name: str, work: Path, cwd: str | os.PathLike[str]
) -> str:
    """The Slurm batch script of a whole study: one allocation of ``ntasks`` tasks of
    ``threads`` CPUs (the largest rank count), in which ``command`` (a ``twinhpc bench scaling``
    with ``--launcher srun``) starts each rank count with ``srun -n k``. Partition, account, QOS
    and time come from the job's ``[slurm]`` table; the output goes to ``work/slurm-<job id>.out``."""
    s = job.slurm
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=scaling-{job_name}",
        f"#SBATCH --ntasks={ntasks}",
        f"#SBATCH --cpus-per-task={threads}",
        f"#SBATCH --chdir={Path(cwd).absolute()}",
        f"#SBATCH --output={work.absolute()}/slurm-%j.out",
    ]
    for option, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos)):
        if value:
            lines.append(f"#SBATCH --{option}={value}")
    lines.append(f"#SBATCH --time={s.minutes}")
    lines += [
        "# the whole scaling study in one allocation: each rank count is an `srun -n k` of `twinhpc train`",
        "set -eu",
        shlex.join(list(command)),
        "",
    ]
    return "\n".join(lines)
