"""The α–β cost model of the gradient all-reduce, and the step time and scaling it predicts.

Pure Python and numpy: no MPI, no torch. ``twinhpc bench scaling`` fits it to the records of
``twinhpc bench allreduce`` and uses it to validate its measurements and to predict larger
clusters (docs/scaling.md has the equations and the limits).

::

    from twinhpc.bench.costmodel import Link, Cluster, allreduce_time, predict_step

    net = Link.from_gbps(100, latency_us=2)                  # the inter-node link
    node = Link.from_gbps(400, latency_us=0.5)               # inside a node
    c = Cluster(inter=net, intra=node, ranks_per_node=4)
    name, seconds = c.pick(178e6, 512)                       # the cheapest algorithm, its time
    t = predict_step(compute_s=0.55, forward_backward_s=0.5, allreduce_s=seconds, overlap=0.0)

Model:
    A message of ``n`` bytes crossing a link costs ``α + n β`` (latency α in seconds, β seconds
    per byte = 1 / bandwidth). An all-reduce over ``p`` ranks costs ``a α + b β``, where ``a``
    (messages on its critical path) and ``b`` (bytes on it) depend on the algorithm:

    ======================  =====================================  ===============================
    algorithm               a                                      b
    ======================  =====================================  ===============================
    ring                    2(p − 1)                               2(p − 1)/p · n
    halving_doubling        2 log2 p                               2(p − 1)/p · n
    recursive_doubling      log2 p                                 log2 p · n
    direct (one node)       2                                      2(p − 1)/p · n
    ======================  =====================================  ===============================

    ``halving_doubling`` is Rabenseifner's reduce-scatter by recursive halving then all-gather
    by recursive doubling; for ``p`` not a power of two, ``q = 2^⌊log2 p⌋`` ranks run it and the
    ``p − q`` others hand their data to a partner first and get the result back last: two more
    messages of ``n`` bytes (Thakur, Rabenseifner & Gropp 2005). ``recursive_doubling`` the same
    way. ``direct`` is a reduce-scatter and all-gather through a node's shared memory (the
    engine's ``shm``, where DataParallel's CPU buckets live): two synchronisations.

    *Several nodes* (``ranks_per_node`` r > 1, N = p / r nodes, ranks placed node by node): a
    step between two nodes costs the inter-node link's α and β, a step inside a node the
    intra-node link's, and the r ranks of a node that send across at once share the node's
    link. So a ring (one flow per node boundary) costs ``2(p − 1)(α + nβ/p)``; halving/doubling
    ``2[log2 N · α + r n β (1 − 1/N) + log2 r · α_i + n β_i (1/N − 1/p)]`` (its log2 N
    inter-node steps carry r flows each); recursive doubling ``log2 N (α + r n β) + log2 r
    (α_i + n β_i)``; and **hierarchical** a ring reduce-scatter inside each node, an all-reduce
    of each rank's n/r shard across the N nodes (the cheaper of ring and halving/doubling; the r
    shards together are n bytes through each node's link), and a ring all-gather inside the
    node: ``2(r − 1) α_i + 2(r − 1)/r · n β_i + min(2(N − 1), 2 log2 N) α + 2(N − 1)/N · n β``.

    *The engine's pick* is the cheapest algorithm for each message: what ``algorithm="auto"``
    measures and caches per size class (twinhpc/comm/tuning.py). ``direct`` only on one node;
    ``hierarchical`` only across nodes with r > 1.

    *A step's all-reduce* is one all-reduce per gradient bucket (``train.bucket_cap_mb``: full
    buckets and the rest) plus the step's small all-reduce of its loss and flags
    (:data:`STEP_SCALARS_BYTES`).

    *The predicted step* at p ranks is the measured single-rank step (its compute: data wait,
    forward/backward, optimizer) plus the all-reduce time not hidden by computation:
    ``t(p) = t_compute + max(0, T_allreduce(p) − overlap · t_forward_backward)``, where
    ``overlap`` ∈ [0, 1] is the share of the forward/backward time during which gradients can
    be reduced (0: none, the all-reduce adds to the step; 1: all of it). Weak-scaling
    efficiency is ``t(1) / t(p)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: the algorithms the model costs
ALGORITHMS = ("ring", "halving_doubling", "recursive_doubling", "direct", "hierarchical")
#: the algorithms of one link (the formulas of the table in the module's note)
FLAT = ("ring", "halving_doubling", "recursive_doubling", "direct")
#: the rows of ``twinhpc bench allreduce`` whose algorithm the model knows: impl -> algorithm
#: (``twinhpc:shared`` is the engine on its shared memory: DataParallel's CPU buckets on one node)
IMPL_ALGORITHM = {
    "twinhpc:shared": "direct",
    "twinhpc:ring": "ring",
    "twinhpc:mpi_ring": "ring",
    "twinhpc:mpi_segmented_ring": "ring",
    "twinhpc:mpi_rabenseifner": "halving_doubling",
    "twinhpc:mpi_recursive_doubling": "recursive_doubling",
}
#: bytes of the small all-reduce every training step makes (loss, flags, metric statistics)
STEP_SCALARS_BYTES = 64


@dataclass(frozen=True)
class Link:
    """One kind of link: latency ``alpha`` (seconds per message) and ``beta`` (seconds per byte)."""

    alpha: float
    beta: float

    @classmethod
    def from_gbps(cls, gbps: float, latency_us: float) -> Link:
        """A link of ``gbps`` Gbit/s (10⁹ bits per second) and ``latency_us`` microseconds."""
        if gbps <= 0 or latency_us < 0:
            raise ValueError(f"a link needs a bandwidth > 0 Gbit/s and a latency >= 0 µs, got {gbps}, {latency_us}")
        return cls(latency_us * 1e-6, 8.0 / (gbps * 1e9))

    @property
    def gbps(self) -> float:
        """Bandwidth in Gbit/s (infinite when ``beta`` is 0)."""
        return 8.0 / self.beta / 1e9 if self.beta > 0 else math.inf

    @property
    def latency_us(self) -> float:
        return self.alpha * 1e6


def _log2(p: int) -> tuple[int, bool]:
    """``(log2 q, q < p)`` for ``q`` the largest power of two ≤ ``p``."""
    k = p.bit_length() - 1
    return k, (1 << k) < p


def coefficients(algorithm: str, p: int, n: float) -> tuple[float, float]:
    """``(a, b)`` of an all-reduce of ``n`` bytes over ``p`` ranks on one kind of link: it costs
    ``a α + b β`` (the table of the module's note). One rank: ``(0, 0)``.

    Raises
    ------
    ValueError
        For an algorithm that is not one of :data:`FLAT`, or ``p`` < 1.
    """
    if p < 1:
        raise ValueError(f"ranks must be >= 1, got {p}")
    if algorithm not in FLAT:
        raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(FLAT)} (one link)")
    if p == 1:
        return 0.0, 0.0
    if algorithm == "ring":
        return 2.0 * (p - 1), 2.0 * (p - 1) / p * n
    if algorithm == "direct":
        return 2.0, 2.0 * (p - 1) / p * n
    k, extra = _log2(p)
    q = 1 << k
    if algorithm == "halving_doubling":
        return 2.0 * k + 2 * extra, 2.0 * (q - 1) / q * n + 2 * extra * n
    return float(k + 2 * extra), k * n + 2 * extra * n  # recursive_doubling


@dataclass(frozen=True)
class Cluster:
    """Where the ranks run: the inter-node link, the intra-node link (default: the inter-node
    one) and the ranks per node (placed node by node)."""

    inter: Link
    intra: Link | None = None
    ranks_per_node: int = 1

    def __post_init__(self) -> None:
        if self.ranks_per_node < 1:
            raise ValueError(f"ranks per node must be >= 1, got {self.ranks_per_node}")

    @property
    def node(self) -> Link:
        return self.intra or self.inter

    def layout(self, p: int) -> tuple[int, int]:
        """``(r, N)``: ranks per node and nodes for ``p`` ranks (the last node may be partly full)."""
        r = min(self.ranks_per_node, p)
        return r, math.ceil(p / r)

    def time(self, algorithm: str, n: float, p: int) -> float:
        """Seconds of one all-reduce of ``n`` bytes over ``p`` ranks with ``algorithm``;
        ``inf`` where it cannot run (``direct`` across nodes, ``hierarchical`` on one node or
        with one rank per node)."""
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if p <= 1:
            return 0.0
        r, nodes = self.layout(p)
        if nodes == 1:  # every rank on one node: the intra-node link
            if algorithm == "hierarchical":
                return math.inf
            a, b = coefficients(algorithm, p, n)
            return a * self.node.alpha + b * self.node.beta
        if algorithm == "direct":
            return math.inf
        x, y = self.inter, self.node
        if r == 1:  # one rank per node: the inter-node link alone
            if algorithm == "hierarchical":
                return math.inf
            a, b = coefficients(algorithm, p, n)
            return a * x.alpha + b * x.beta
        if algorithm == "ring":  # the slowest link of each step: the one between nodes
            return 2.0 * (p - 1) * (x.alpha + n * x.beta / p)
        if algorithm == "halving_doubling":
            ln, lr = math.log2(nodes), math.log2(r)
            return 2.0 * (
                ln * x.alpha + r * n * x.beta * (1 - 1 / nodes) + lr * y.alpha + n * y.beta * (1 / nodes - 1 / p)
            )
        if algorithm == "recursive_doubling":
            return math.log2(nodes) * (x.alpha + r * n * x.beta) + math.log2(r) * (y.alpha + n * y.beta)
        inside = 2.0 * (r - 1) * y.alpha + 2.0 * (r - 1) / r * n * y.beta
        across = min(2.0 * (nodes - 1), 2.0 * math.log2(nodes)) * x.alpha + 2.0 * (nodes - 1) / nodes * n * x.beta
        return inside + across

    def pick(self, n: float, p: int, algorithms: Iterable[str] = ALGORITHMS) -> tuple[str, float]:
        """The cheapest of ``algorithms`` for ``n`` bytes over ``p`` ranks, and its seconds (the
        first of equals, in the order of :data:`ALGORITHMS`)."""
        costs = [(self.time(a, n, p), i, a) for i, a in enumerate(algorithms)]
        t, _, name = min(costs)
        return name, t


def bucket_sizes(total_bytes: float, cap_bytes: float) -> list[float]:
    """The gradient buckets of ``total_bytes`` at a cap of ``cap_bytes``: full buckets, then the rest."""
    if total_bytes <= 0:
        return []
    full, rest = divmod(float(total_bytes), float(cap_bytes))
    return [float(cap_bytes)] * int(full) + ([rest] if rest > 0 else [])


def step_allreduce(
    gradient_bytes: float, p: int, cap_bytes: float, cost: Callable[[float, int], tuple[str, float]]
) -> tuple[float, list[str]]:
    """Seconds of a training step's all-reduces over ``p`` ranks (each bucket, then the step's
    scalars) with ``cost(n, p) -> (algorithm, seconds)``; and the algorithms used, in order."""
    if p <= 1:
        return 0.0, []
    total, used = 0.0, []
    for n in [*bucket_sizes(gradient_bytes, cap_bytes), float(STEP_SCALARS_BYTES)]:
        name, t = cost(n, p)
        total += t
        used.append(name)
    return total, used


def predict_step(compute_s: float, forward_backward_s: float, allreduce_s: float, overlap: float = 0.0) -> float:
    """The step time: ``compute_s`` plus the all-reduce not hidden behind ``overlap`` × the
    forward/backward time (see the module's note)."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    return compute_s + max(0.0, allreduce_s - overlap * forward_backward_s)


@dataclass(frozen=True)
class Fit:
    """A link fitted to measured all-reduces of one implementation."""

    impl: str
    algorithm: str
    link: Link
    ranks: tuple[int, ...]
    points: int
    rms_relative_error: float


def fit_link(points: Sequence[tuple[float, float, float]]) -> tuple[Link, float]:
    """Least squares of ``a α + b β ≈ t`` over ``points`` = ``[(a, b, t), ...]``, in relative
    terms (each point weighted by 1/t, so that a 4 KiB message counts as much as a 64 MiB one),
    with α, β ≥ 0. Returns the link and the root mean square relative error.

    Raises
    ------
    ValueError
        With fewer than two points, or none with a positive time.
    """
    rows = [(a, b, t) for a, b, t in points if t > 0]
    if len(rows) < 2:
        raise ValueError(f"fitting α and β needs at least 2 measurements, got {len(rows)}")
    A = np.array([[a / t, b / t] for a, b, t in rows])
    y = np.ones(len(rows))
    solution = np.linalg.lstsq(A, y, rcond=None)[0]
    alpha, beta = float(solution[0]), float(solution[1])
    if alpha < 0 or beta < 0:  # the best fit on the boundary: one of them 0, the other alone
        options = []
        for col in (0, 1):
            x = A[:, col]
            v = float(x @ y / (x @ x)) if x @ x > 0 else 0.0
            options.append((float(np.sum((x * max(v, 0.0) - y) ** 2)), col, max(v, 0.0)))
        _, col, v = min(options)
        alpha, beta = (v, 0.0) if col == 0 else (0.0, v)
    residual = A @ np.array([alpha, beta]) - y
    return Link(alpha, beta), float(np.sqrt(np.mean(residual**2)))


def fit_rows(rows: Iterable[Mapping]) -> list[Fit]:
    """One :class:`Fit` per implementation of :data:`IMPL_ALGORITHM` found in ``rows`` (rows of
    ``twinhpc bench allreduce`` records: ``impl``, ``ranks``, ``bytes``, ``time_s``) with at
    least two measurements at more than one rank, each point costed on one node."""
    by_impl: dict[str, list[tuple[float, float, float]]] = {}
    ranks: dict[str, set[int]] = {}
    for row in rows:
        impl = str(row["impl"])
        p = int(row["ranks"])
        if impl not in IMPL_ALGORITHM or p < 2:
            continue
        a, b = coefficients(IMPL_ALGORITHM[impl], p, float(row["bytes"]))
        by_impl.setdefault(impl, []).append((a, b, float(row["time_s"])))
        ranks.setdefault(impl, set()).add(p)
    fits = []
    for impl, points in by_impl.items():
        if len(points) < 2:
            continue
        link, rms = fit_link(points)
        fits.append(Fit(impl, IMPL_ALGORITHM[impl], link, tuple(sorted(ranks[impl])), len(points), rms))
    return fits


# -- the published anchor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """A published scaling figure and the setting that reproduces it in the model."""

    name: str
    source: str
    published_efficiency: float
    ranks: int
    ranks_per_node: int
    gradient_bytes: float
    step_s: float
    forward_backward_s: float
    inter: Link
    intra: Link
    bucket_bytes: float


#: Horovod (Sergeev & Del Balso 2018, arXiv:1802.05799; Horovod's docs/benchmarks): ResNet-101,
#: 128 servers × 4 Pascal GPUs, RoCE 25 Gbit/s, ~90 % weak-scaling efficiency at 512 GPUs.
HOROVOD = Anchor(
    name="horovod",
    source="Sergeev & Del Balso 2018 (arXiv:1802.05799), Horovod docs/benchmarks: ResNet-101, batch 64 per GPU, "
    "128 servers x 4 Pascal GPUs, RoCE 25 Gbit/s: about 90 % scaling efficiency at 512 GPUs",
    published_efficiency=0.90,
    ranks=512,
    ranks_per_node=4,
    gradient_bytes=4 * 44.5e6,  # 44.5 M float32 parameters
    step_s=0.55,  # 64 images at ~116 images/s on one P100 (7.6 GFLOP forward per image, ~3x for training)
    forward_backward_s=0.55,
    inter=Link.from_gbps(25, latency_us=10),  # RoCE: a few µs on the wire, NCCL's per-step overhead on top
    intra=Link.from_gbps(96, latency_us=5),  # PCIe 3.0 x16, ~12 GB/s between the GPUs of a server
    bucket_bytes=64 << 20,  # Horovod's tensor-fusion buffer (HOROVOD_FUSION_THRESHOLD, 64 MiB)
)

ANCHORS = {"horovod": HOROVOD}


def overlap_for(efficiency: float, step_s: float, forward_backward_s: float, allreduce_s: float) -> float:
    """The overlap at which :func:`predict_step` gives weak-scaling ``efficiency`` (``nan`` if
    no overlap in [0, 1] does)."""
    exposed = step_s / efficiency - step_s
    overlap = (allreduce_s - exposed) / forward_backward_s if forward_backward_s > 0 else math.nan
    return overlap if 0.0 <= overlap <= 1.0 else math.nan


def anchor_prediction(anchor: Anchor, overlaps: Sequence[float] = (0.0, 0.1, 0.2, 0.5)) -> list[dict]:
    """The model at the anchor's setting: per overlap, the step's all-reduce (the algorithm of
    its first bucket), the predicted step and weak-scaling efficiency next to the published one,
    and the overlap at which the model gives the published figure."""
    cluster = Cluster(anchor.inter, anchor.intra, anchor.ranks_per_node)
    seconds, used = step_allreduce(anchor.gradient_bytes, anchor.ranks, anchor.bucket_bytes, cluster.pick)
    rows = []
    for overlap in overlaps:
        step = predict_step(anchor.step_s, anchor.forward_backward_s, seconds, overlap)
        rows.append(
            dict(
                anchor=anchor.name,
                ranks=anchor.ranks,
                overlap=overlap,
                allreduce_s=seconds,
                algorithm=used[0] if used else "",
                step_s=step,
                efficiency=anchor.step_s / step,
                published=anchor.published_efficiency,
                overlap_for_published=overlap_for(
                    anchor.published_efficiency, anchor.step_s, anchor.forward_backward_s, seconds
                ),
            )
        )
    return rows
