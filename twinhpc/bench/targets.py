"""The benchmarks' targets, in one table (:data:`TARGETS`): per target the benchmark whose records
it reads, its key figure, the direction and value it must reach, and the default configuration —
the records, and the row of each, whose key figure counts.

A target is judged by :func:`verdict`: **met** when the median key figure of at least
:data:`MIN_RUNS` separate runs (records) of the default configuration meets it, **not met** when
that median misses it, **not established (k runs)** with fewer runs; a GPU target without a GPU
record is **not run**. ``twinhpc bench report`` (:mod:`twinhpc.bench.report`) renders the table.

The benchmarks print a verdict of one run against the same values (``TARGET`` and friends
below, which the benchmark code imports).
"""

from __future__ import annotations

import json
import math
import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..io.bench_results import Record

#: the runs a verdict needs
MIN_RUNS = 5

# the targets' values, as the benchmarks use them
LOADER_RATIO = 0.8
INGEST_SECONDS, INGEST_RANKS = 60.0, 2
ALLREDUCE_VS_MPI4PY, ALLREDUCE_VS_BEST_MPI, ALLREDUCE_MIN_BYTES = 1.0, 0.9, 1 << 20
DP_OVERHEAD_RATIO = 1.10
TRAIN_RATIO, TRAIN_DATA_WAIT, TRAIN_GPU_RATIO = 0.95, 0.05, 1.0
KERNELS_AUGMENT, KERNELS_TFIDF = 5.0, 2.0
TWIN_NRMSE_1, TWIN_NRMSE_50, TWIN_BEATS, TWIN_SPEEDUP = 1e-2, 5e-2, 1.0, 100.0

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}

Select = Callable[[Record], float | None]


@dataclass(frozen=True)
class Beside:
    """A figure shown beside a target's (not judged): its label and how to read it from a
    record (``None``: not from this record)."""

    label: str
    select: Select
    fmt: str = ".3f"


@dataclass(frozen=True)
class Target:
    """One row of the benchmark page.

    ``select(record)`` is the key figure of a record of the default configuration and ``None``
    for any other record; ``value`` ``None`` is a figure without a target; ``gpu`` rows read GPU
    records only and show *not run* until one exists.
    """

    key: str
    benchmark: str
    title: str
    figure: str
    direction: str
    value: float | None
    default: str
    select: Select
    fmt: str = ".3f"
    gpu: bool = False
    beside: Sequence[Beside] = field(default_factory=tuple)

    def meets(self, figure: float) -> bool:
        return self.value is not None and _COMPARE[self.direction](figure, self.value)

    def target_text(self) -> str:
        return "none" if self.value is None else f"{self.direction} {format(self.value, self.fmt)}"


@dataclass(frozen=True)
class Judged:
    """A target against its runs: the key figures (oldest first), their records, the verdict."""

    target: Target
    figures: list[float]
    records: list[Record]
    verdict: str

    @property
    def median(self) -> float:
        return statistics.median(self.figures) if self.figures else math.nan


def verdict(target: Target, figures: Sequence[float]) -> str:
    """``met`` / ``not met`` (median of >= MIN_RUNS), ``not established (k runs)``, ``not run``
    (no run of a GPU target), ``no runs``; ``no target`` for a figure without one."""
    k = len(figures)
    if k == 0:
        return "not run" if target.gpu else "no runs"
    if target.value is None:
        return "no target"
    if k < MIN_RUNS:
        return f"not established ({k} run{'s' if k != 1 else ''})"
    return "met" if target.meets(statistics.median(figures)) else "not met"


def judge(target: Target, records: Sequence[Record]) -> Judged:
    """The target's figures from ``records`` (those of its benchmark), and its verdict."""
    picked = [(r, target.select(r)) for r in records if device_matches(target, r)]
    kept = [(r, f) for r, f in picked if f is not None and not math.isnan(f)]
    figures = [f for _, f in kept]
    return Judged(target, figures, [r for r, _ in kept], verdict(target, figures))


def device_matches(target: Target, record: Record) -> bool:
    """Whether ``record`` ran where ``target`` is judged: a GPU for GPU targets, else the CPU."""
    device = str(record.attrs.get("device", "cpu"))
    return (device != "cpu") if target.gpu else device in ("cpu", "unknown")


# --- helpers that read records ----------------------------------------------------------------


def _attrs(record: Record, **want: Any) -> bool:
    return all(record.attrs.get(k) == v for k, v in want.items())


def _row(record: Record, table: str, **want: Any) -> dict[str, Any] | None:
    """The one row of ``table`` whose columns equal ``want``; None when there is none."""
    rows = [r for r in record.rows(table) if all(r.get(k) == v for k, v in want.items())]
    return rows[0] if len(rows) == 1 else None


def _named_row(record: Record, table: str, name: str) -> dict[str, Any] | None:
    """The row of ``table`` named ``name`` by the attribute ``names`` (kernels, wire_casts)."""
    names = list(record.attrs.get("names", []))
    rows = record.rows(table)
    return rows[names.index(name)] if name in names and len(rows) == len(names) else None


def _column(row: dict[str, Any] | None, column: str) -> float | None:
    return None if row is None or column not in row else float(row[column])


# loader: 2 ranks, batch 256, prefetch 2, CIFAR-sized samples
def _loader(r: Record) -> float | None:
    ok = _attrs(r, world_size=2, batch_size=256, prefetch=2, bytes_per_sample=3088)
    return float(r.attrs["ratio"]) if ok and "ratio" in r.attrs else None


# ingest_cifar: the full-size set, 4 shards; the seconds of the 2-rank row
def _ingest(r: Record) -> float | None:
    if not _attrs(r, samples=60000, shards=4):
        return None
    return _column(_row(r, "rows", ranks=INGEST_RANKS), "seconds")


def _allreduce(column: str) -> Select:
    """The smallest ``column`` of the ``ratios`` rows from 1 MiB, on 2 ranks, when the record
    covers every size from 1 to 64 MiB."""

    def select(r: Record) -> float | None:
        if not _attrs(r, world_size=2):
            return None
        rows = [x for x in r.rows("ratios") if x["bytes"] >= ALLREDUCE_MIN_BYTES]
        if not {1 << 20, 4 << 20, 16 << 20, 64 << 20} <= {x["bytes"] for x in rows}:
            return None
        return min(float(x[column]) for x in rows)

    return select


def _allreduce_gpu(impl: str) -> Select:
    def select(r: Record) -> float | None:
        return _column(_row(r, "rows", impl=impl, bytes=64 << 20), "busbw_gbps") if _attrs(r, world_size=2) else None

    return select


# dp_overhead: the float32 row at the default cap and overlap "auto", 2 ranks
def _dp_overhead(model: str, batch: int, allocator_default: bool) -> Select:
    def select(r: Record) -> float | None:
        if not _attrs(r, model=model, batch_per_rank=batch, threads_per_rank=1):
            return None
        if (r.attrs.get("allocator") == "default") != allocator_default:
            return None
        cap = r.attrs.get("default_bucket_cap_mb")
        return _column(_row(r, "float32", ranks=2, bucket_cap_mb=cap, overlap_setting="auto"), "ratio")

    return select


# train_throughput: the model's table, one row, at the given ranks, batch, 1 thread, float32
def _train(model: str, ranks: int, batch: int, column: str, device: str = "cpu", bf16: bool = False) -> Select:
    def select(r: Record) -> float | None:
        if not _attrs(r, bf16=bf16) or (r.attrs.get("device", "cpu") == "cpu") != (device == "cpu"):
            return None
        threads = {} if device != "cpu" else {"threads": 1}
        return _column(_row(r, model, ranks=ranks, batch=batch, **threads), column)

    return select


def _kernels(name: str, **options: Any) -> Select:
    """The kernel's ratio when its output was equal, at the default sizes (``options``)."""

    def select(r: Record) -> float | None:
        try:
            given = json.loads(str(r.attrs.get("options", "{}")))
        except ValueError:
            return None
        if any(given.get(k) != v for k, v in options.items()):
            return None
        row = _named_row(r, "kernels", name)
        return None if row is None or not row["equal"] else float(row["ratio"])

    return select


def _wire(name: str) -> Select:
    def select(r: Record) -> float | None:
        return _column(_named_row(r, "wire_casts", name), "speedup") if _attrs(r, mib=12.0, threads=1) else None

    return select


# twin: the default job (jobs/plate_twin.toml on jobs/plate.toml's ensemble: the hybrid twin), one torch
# thread, not --quick; records of the job before it had a prior (no `prior` attribute) are another configuration
def _twin(name: str) -> Select:
    def select(r: Record) -> float | None:
        ok = _attrs(r, job="plate_twin.toml", grid="32x32", steps=50, dataset_scenarios=256, threads=1, quick=0)
        ok = ok and _attrs(r, prior="plate", forcing_window=3)
        return float(r.attrs[name]) if ok and name in r.attrs else None

    return select


_TWIN_DEFAULT = (
    "`benchmarks/twin.py`: jobs/plate_twin.toml (the hybrid twin: the plate's spectral step + an FNO) trained on "
    "jobs/plate.toml's 256 scenarios (32×32, 50 steps), "
)
_NO_COMM = "vs the loop that communicates nothing"

#: every target of every benchmark, in the page's order
TARGETS: tuple[Target, ...] = (
    Target(
        "loader",
        "loader",
        "loader throughput (CIFAR-sized samples)",
        "loader MB/s ÷ raw sequential h5py read, all ranks",
        ">=",
        LOADER_RATIO,
        "`twinhpc bench loader` on 2 ranks, batch 256, prefetch 2, 3,088-byte samples",
        _loader,
        ".2f",
    ),
    Target(
        "ingest_cifar",
        "ingest_cifar",
        "ingest of CIFAR-10",
        "wall seconds of `mpirun -n 2 twinhpc ingest cifar10` (60,000 images, MPI start-up included)",
        "<",
        INGEST_SECONDS,
        "`benchmarks/ingest_cifar.py`: full size (60,000 × 32×32×3), 4 shards per split, the 2-rank row",
        _ingest,
        ".2f",
    ),
    Target(
        "allreduce_vs_mpi4py",
        "allreduce",
        "all-reduce engine vs mpi4py",
        "`twinhpc:auto` busbw ÷ mpi4py `Allreduce`, the smallest over 1–64 MiB",
        ">=",
        ALLREDUCE_VS_MPI4PY,
        "`twinhpc bench allreduce` on 2 ranks, float32, covering 1, 4, 16 and 64 MiB",
        _allreduce("core_vs_mpi4py"),
        ".2f",
    ),
    Target(
        "allreduce_vs_best_mpi",
        "allreduce",
        "all-reduce engine vs the best Open MPI algorithm",
        "`twinhpc:auto` busbw ÷ the fastest mpi4py row of the round, the smallest over 1–64 MiB",
        ">=",
        ALLREDUCE_VS_BEST_MPI,
        "`twinhpc bench allreduce` on 2 ranks, float32, covering 1, 4, 16 and 64 MiB",
        _allreduce("core_vs_best_mpi"),
        ".2f",
    ),
    Target(
        "allreduce_gpu",
        "allreduce",
        "all-reduce engine on CUDA tensors (GPU)",
        "`twinhpc:cuda` busbw in GB/s at 64 MiB",
        ">=",
        None,
        "`twinhpc bench allreduce` on 2 ranks sharing a GPU (scripts/gpu-check.sh)",
        _allreduce_gpu("twinhpc:cuda"),
        ".2f",
        gpu=True,
        beside=(Beside("nccl busbw (GB/s, 64 MiB)", _allreduce_gpu("nccl"), ".2f"),),
    ),
    Target(
        "dp_overhead",
        "dp_overhead",
        "data-parallel overhead, MLP (the stress case)",
        "DataParallel step ÷ the same step without communication",
        "<=",
        DP_OVERHEAD_RATIO,
        "`benchmarks/dp_overhead.py` on 2 ranks: MLP 3×1024, batch 64/rank, 1 thread/rank, float32 wire, "
        "bucket cap 25 MiB, overlap auto, the default allocator",
        _dp_overhead("MLP 3x1024", 64, True),
        beside=(Beside("allocator-neutral (glibc keeps freed memory)", _dp_overhead("MLP 3x1024", 64, False)),),
    ),
    Target(
        "dp_overhead_resnet18",
        "dp_overhead",
        "data-parallel overhead, ResNet-18",
        "DataParallel step ÷ the same step without communication",
        "<=",
        DP_OVERHEAD_RATIO,
        "`benchmarks/dp_overhead.py --model resnet18` on 2 ranks: batch 8/rank, 1 thread/rank, float32 wire, "
        "bucket cap 25 MiB, overlap auto, the default allocator",
        _dp_overhead("ResNet-18 (32x32x3)", 8, True),
        beside=(Beside("allocator-neutral (glibc keeps freed memory)", _dp_overhead("ResNet-18 (32x32x3)", 8, False)),),
    ),
    Target(
        "train_throughput_cnn",
        "train_throughput",
        "training throughput, CNN, 2 ranks",
        "twinhpc samples/s ÷ the plain PyTorch loop in torch DDP (gloo)",
        ">=",
        TRAIN_RATIO,
        "`benchmarks/train_throughput.py --models cnn` on 2 ranks: batch 64/rank, 1 thread, CPU, float32",
        _train("cnn", 2, 64, "ratio_ddp"),
        beside=(Beside(_NO_COMM, _train("cnn", 2, 64, "ratio")),),
    ),
    Target(
        "train_throughput_resnet18",
        "train_throughput",
        "training throughput, ResNet-18, 2 ranks",
        "twinhpc samples/s ÷ the plain PyTorch loop in torch DDP (gloo)",
        ">=",
        TRAIN_RATIO,
        "`benchmarks/train_throughput.py --models resnet18` on 2 ranks: batch 16/rank, 1 thread, CPU, float32",
        _train("resnet18", 2, 16, "ratio_ddp"),
        beside=(Beside(_NO_COMM, _train("resnet18", 2, 16, "ratio")),),
    ),
    Target(
        "train_data_wait",
        "train_throughput",
        "training data wait, CNN, 2 ranks",
        "share of twinhpc's step spent waiting for data (transform included)",
        "<",
        TRAIN_DATA_WAIT,
        "as training throughput, CNN, 2 ranks",
        _train("cnn", 2, 64, "data_wait"),
        ".1%",
    ),
    Target(
        "train_throughput_cnn_1rank",
        "train_throughput",
        "training throughput, CNN, 1 rank",
        "twinhpc samples/s ÷ the plain PyTorch loop",
        ">=",
        TRAIN_RATIO,
        "`benchmarks/train_throughput.py --models cnn` on 1 rank: batch 64, 1 thread, CPU, float32",
        _train("cnn", 1, 64, "ratio_ddp"),
    ),
    Target(
        "train_throughput_resnet18_1rank",
        "train_throughput",
        "training throughput, ResNet-18, 1 rank",
        "twinhpc samples/s ÷ the plain PyTorch loop",
        ">=",
        TRAIN_RATIO,
        "`benchmarks/train_throughput.py --models resnet18` on 1 rank: batch 16, 1 thread, CPU, float32",
        _train("resnet18", 1, 16, "ratio_ddp"),
    ),
    Target(
        "train_throughput_gpu",
        "train_throughput",
        "training throughput, ResNet-18 on a GPU",
        "twinhpc images/s ÷ the plain PyTorch loop on the GPU",
        ">=",
        TRAIN_GPU_RATIO,
        "`benchmarks/train_throughput.py --models resnet18 --batch 256 --device cuda --bf16` on 1 rank "
        "(scripts/gpu-check.sh)",
        _train("resnet18", 1, 256, "ratio_ddp", device="cuda", bf16=True),
        gpu=True,
    ),
    Target(
        "kernels_augment",
        "kernels",
        "Numba image augmentation",
        "`normalize_augment` ÷ its numpy reference (equal output)",
        ">=",
        KERNELS_AUGMENT,
        "`benchmarks/kernels.py`: 256×32×32×3 batch, pad 4, one thread",
        _kernels("normalize_augment", batch=256),
        ".1f",
    ),
    Target(
        "kernels_tfidf",
        "kernels",
        "TF-IDF",
        "`tfidf_fit_transform` ÷ scikit-learn's `TfidfVectorizer` (equal output)",
        ">=",
        KERNELS_TFIDF,
        "`benchmarks/kernels.py`: 25,000 documents of about 230 words, 50,000 terms",
        _kernels("tfidf_fit_transform", docs=25000, words=230, terms=50000),
        ".1f",
    ),
    Target(
        "twin_one_step",
        "twin",
        "twin accuracy, one step",
        "held-out nRMSE of the temperature rise, one step ahead from every true state",
        "<=",
        TWIN_NRMSE_1,
        _TWIN_DEFAULT + "the test split",
        _twin("one_step_nrmse_rise"),
        ".3g",
        beside=(Beside("PDEBench nRMSE (absolute K)", _twin("one_step_nrmse"), ".3g"),),
    ),
    Target(
        "twin_50_steps",
        "twin",
        "twin accuracy, 50-step rollout",
        "held-out nRMSE of the temperature rise 50 steps after u[0]",
        "<=",
        TWIN_NRMSE_50,
        _TWIN_DEFAULT + "the test split",
        _twin("h50_nrmse_rise"),
        ".3g",
        beside=(Beside("PDEBench nRMSE (absolute K)", _twin("h50_nrmse"), ".3g"),),
    ),
    Target(
        "twin_vs_baselines",
        "twin",
        "twin against persistence and the linear baseline",
        "twin ÷ the better baseline (nRMSE of the rise), the worst over one step, the horizons and the full rollout",
        "<",
        TWIN_BEATS,
        _TWIN_DEFAULT + "the test split",
        _twin("worst_ratio_to_baselines"),
        ".3g",
    ),
    Target(
        "twin_speedup",
        "twin",
        "twin speed-up over the simulator",
        "Numba solver seconds ÷ twin rollout seconds per trajectory, at the best batch",
        ">=",
        TWIN_SPEEDUP,
        _TWIN_DEFAULT + "the test split, 1 torch thread against the serial solver",
        _twin("speedup_best"),
        ".1f",
        beside=(
            Beside("at batch 1", _twin("speedup_batch1"), ".2f"),
            Beside("break-even solves", _twin("break_even_solves"), ".4g"),
        ),
    ),
    Target(
        "wire_casts",
        "wire_casts",
        "16-bit wire casts (AVX2/F16C)",
        "float16 pack: scalar time ÷ vector time",
        ">=",
        None,
        "`benchmarks/wire_casts.py`: 12 MiB bucket, 1 thread",
        _wire("pack_float16"),
        ".2f",
        beside=(
            Beside("float16 sum", _wire("sum_float16"), ".2f"),
            Beside("bfloat16 pack", _wire("pack_bfloat16"), ".2f"),
        ),
    ),
)


def target(key: str) -> Target:
    """The target ``key`` of :data:`TARGETS`."""
    for t in TARGETS:
        if t.key == key:
            return t
    raise KeyError(f"no benchmark target {key!r} (known: {', '.join(t.key for t in TARGETS)})")
