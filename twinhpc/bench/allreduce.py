"""``twinhpc bench allreduce``: the all-reduce engine against MPI, mpi4py and torch.distributed.

For each message size (powers of 4 from ``min_bytes`` to ``max_bytes``, float32) the same job
measures, interleaved round by round so that every implementation sees the same machine state:

- ``twinhpc:<algorithm>`` for each algorithm of :class:`~twinhpc.comm.engine.Engine` and
  ``twinhpc:auto`` (the engine's measured, cached choice per size), all on ordinary tensors;
- ``twinhpc:shared`` — the engine on a tensor in its shared memory (``Engine.shared_buffer``,
  where DataParallel keeps its gradient buckets): summed in place, nothing copied;
- ``twinhpc:cuda`` — the engine on a CUDA tensor (``auto``; staged through pinned host memory
  unless the MPI is CUDA-aware), when every rank sees a GPU and the extension has CUDA (ranks
  may share a GPU);
- ``mpi4py`` — ``Comm.Allreduce`` in place on a numpy buffer with MPI's default settings;
- ``mpi4py:<name>`` — the same with each of Open MPI's all-reduce algorithms forced on its own
  communicator (see the note; only when the job started with dynamic rules enabled);
- ``gloo`` — ``torch.distributed.all_reduce`` (and ``nccl`` when every rank has a GPU of its
  own: NCCL refuses two ranks on one GPU);
- ``memcpy`` — every rank copying a buffer of the same size at once: the physical reference.

Each figure is the median over ``rounds`` of the slowest rank's mean time per call; algbw is
bytes / time and busbw = algbw * 2(n-1)/n (the bytes each rank must move; ``memcpy`` reports
algbw in both). Ratios compare ``twinhpc:auto`` with ``mpi4py`` and with the best MPI row (the
targets), and ``twinhpc:shared`` with ``mpi4py``.

Note:
    Open MPI picks its algorithm per communicator when the communicator is created, from MCA
    variables. ``coll_tuned_use_dynamic_rules`` is read-only after MPI_Init, so
    ``import twinhpc`` sets it in the environment before MPI starts (without a forced
    algorithm, the dynamic rules fall back to the default decision, so ``mpi4py`` still
    measures the defaults); ``coll_tuned_allreduce_algorithm`` stays writable through MPI_T,
    so the benchmark writes it and duplicates COMM_WORLD once per algorithm. Every variant is
    thus measured in one job, interleaved, which matters on machines whose memory bandwidth
    drifts by 2-3x over minutes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import DYNAMIC_RULES_ENV
from ..comm.world import World, get_world
from ..errors import TwinError
from ..io.bench_results import write_results
from . import format_table, median
from .targets import ALLREDUCE_MIN_BYTES, ALLREDUCE_VS_BEST_MPI, ALLREDUCE_VS_MPI4PY

DEFAULT_MIN_BYTES = 4 << 10
DEFAULT_MAX_BYTES = 64 << 20
#: seconds each timed batch of calls should last (fewer calls for big messages)
BATCH_SECONDS = 0.05
#: the benchmark's targets (twinhpc.bench.targets): core/mpi4py for messages >= TARGET_MIN_BYTES,
#: and core/best MPI
TARGET_VS_MPI4PY, TARGET_VS_BEST_MPI, TARGET_MIN_BYTES = ALLREDUCE_VS_MPI4PY, ALLREDUCE_VS_BEST_MPI, ALLREDUCE_MIN_BYTES


def algorithms_can_be_forced() -> bool:
    """Whether this job started with Open MPI's dynamic rules enabled."""
    return os.environ.get(DYNAMIC_RULES_ENV, "").lower() in ("1", "true", "yes")


def sizes_between(min_bytes: int, max_bytes: int) -> list[int]:
    """Powers of 4 times ``min_bytes`` up to ``max_bytes``."""
    sizes, b = [], min_bytes
    while b <= max_bytes:
        sizes.append(b)
        b *= 4
    return sizes


class _Impl:
    """One measured implementation: ``setup(nbytes)`` returns the call to time."""

    def __init__(self, name: str, setup: Callable[[int], Callable[[], None]], close=lambda: None):
        self.name, self.setup, self.close = name, setup, close


def _mpi4py_impls(world: World, forced: bool) -> list[_Impl]:
    from mpi4py import MPI

    from .. import ops

    def over(comm):
        def setup(nbytes):
            buf = np.zeros(nbytes // 4, np.float32)
            return lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

        return setup

    default = world.comm.Dup()
    impls = [_Impl("mpi4py", over(default), default.Free)]
    if not forced or "Open MPI" not in MPI.Get_library_version():
        return impls
    core = ops._load()
    for code, name in core.openmpi_allreduce_algorithms():  # coll_tuned_allreduce_algorithm's values
        if core.set_control_variable("coll_tuned_allreduce_algorithm", code):
            break  # not writable here: no forced rows
        comm = world.comm.Dup()
        impls.append(_Impl(f"mpi4py:{name}", over(comm), comm.Free))
    core.set_control_variable("coll_tuned_allreduce_algorithm", 0)
    return impls


def _engine_impls(world: World) -> list[_Impl]:
    from ..comm.engine import Engine

    engine = Engine(world.comm, algorithm="auto")

    def with_algorithm(algorithm):
        def setup(nbytes):
            t = torch.zeros(nbytes // 4)
            return lambda: engine.allreduce_(t, algorithm=algorithm, name="bench")

        return setup

    def shared(nbytes):
        t = engine.shared_buffer(nbytes // 4 * 4).view(torch.float32)
        return lambda: engine.allreduce_(t, name="bench")

    impls = [_Impl(f"twinhpc:{a}", with_algorithm(a)) for a in engine.available_algorithms()]
    impls += [_Impl("twinhpc:shared", shared), _Impl("twinhpc:auto", with_algorithm(None), engine.close)]
    device = _gpu_of_every_rank(world, distinct=False)
    if device is not None:

        def on_gpu(nbytes):
            t = torch.zeros(nbytes // 4, device=device)

            def call():
                engine.allreduce_(t, name="bench")
                torch.cuda.synchronize(device)

            return call

        impls.insert(-1, _Impl("twinhpc:cuda", on_gpu))  # before auto, whose close ends the engine
    return impls


def _gpu_of_every_rank(world: World, distinct: bool) -> torch.device | None:
    """This rank's GPU (local rank modulo the GPUs it sees) when every rank has one and, with
    ``distinct``, no two ranks share one (NCCL refuses that); else None on every rank.
    For ``twinhpc:cuda`` the extension must also have been built with CUDA."""
    from .. import ops
    from ..env import process_info

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not distinct and gpus and not (ops.available() and ops.build_info()["cuda"]):
        gpus = 0
    index = process_info().local_rank % gpus if gpus else -1
    placed = world.comm.allgather((socket.gethostname(), index))
    if any(i < 0 for _, i in placed) or (distinct and len(set(placed)) < len(placed)):
        return None
    return torch.device("cuda", index)


def _torch_impls(world: World) -> list[_Impl]:
    import torch.distributed as dist

    if dist.is_initialized():
        return []
    port = None
    if world.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = world.bcast(port)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=world.rank, world_size=world.size)

    def gloo(nbytes):
        t = torch.zeros(nbytes // 4)
        return lambda: dist.all_reduce(t)

    impls = [_Impl("gloo", gloo, dist.destroy_process_group)]
    device = _gpu_of_every_rank(world, distinct=True)
    if device is not None:
        group = dist.new_group(backend="nccl")

        def nccl(nbytes):
            t = torch.zeros(nbytes // 4, device=device)

            def call():
                dist.all_reduce(t, group=group)
                torch.cuda.synchronize(device)

            return call

        impls.append(_Impl("nccl", nccl))
    return impls


def _memcpy_impl() -> _Impl:
    def setup(nbytes):
        src, dst = np.zeros(nbytes // 4, np.float32), np.empty(nbytes // 4, np.float32)
        return lambda: np.copyto(dst, src)

    return _Impl("memcpy", setup)


def _time(world: World, call: Callable[[], None], calls: int) -> float:
    """The slowest rank's mean seconds per call over ``calls`` calls."""
    world.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    return world.comm.allreduce((time.perf_counter() - t0) / calls, op=world.MPI.MAX)


def bench_allreduce(
    min_bytes: int = DEFAULT_MIN_BYTES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    rounds: int = 7,
    gloo: bool = True,
    results: str | Path | None = "bench-results",
    world: World | None = None,
) -> dict:
    """Measure every implementation at every size; collective.

    Parameters
    ----------
    min_bytes, max_bytes : the smallest and largest message (bytes, float32 elements).
    rounds : interleaved rounds per size (the order reversed every other round); the median
        is reported, and ratios are medians of per-round ratios (see :func:`ratios`).
    gloo : also measure torch.distributed (gloo, and NCCL with GPUs).
    results : folder of the records (a new ``allreduce/<time>-<commit>.h5``, written by rank 0);
        ``None`` writes nothing.

    Returns the figures (the same dict on every rank): ``rows`` (one per implementation and
    size: impl, ranks, bytes, time_s, algbw_gbps, busbw_gbps), ``ratios`` (per size),
    ``targets`` and the settings.
    """
    world = world or get_world()
    if min_bytes < 4 or max_bytes < min_bytes:
        raise TwinError(f"--min-bytes {min_bytes} / --max-bytes {max_bytes}: need 4 <= min <= max")
    forced = algorithms_can_be_forced()
    impls = (
        [_memcpy_impl()]
        + world.run(lambda: _mpi4py_impls(world, forced))
        + world.run(lambda: _engine_impls(world))
        + (world.run(lambda: _torch_impls(world)) if gloo else [])
    )
    rows, times = [], {}
    try:
        for nbytes in sizes_between(min_bytes, max_bytes):
            calls = max(1, min(1000, int(BATCH_SECONDS * 2e9 / nbytes)))
            prepared = [(impl.name, impl.setup(nbytes)) for impl in impls]
            for _, call in prepared:
                call()  # warm-up: pages touched, connections made
            per = {name: [] for name, _ in prepared}
            for k in range(rounds):
                for name, call in prepared if k % 2 == 0 else prepared[::-1]:
                    per[name].append(_time(world, call, calls))
            times[nbytes] = per
            for name, seconds in per.items():
                t = median(seconds)
                algbw = nbytes / t / 1e9
                factor = 1.0 if name == "memcpy" else 2 * (world.size - 1) / world.size
                rows.append(
                    dict(
                        impl=name, ranks=world.size, bytes=nbytes, time_s=t, algbw_gbps=algbw, busbw_gbps=algbw * factor
                    )
                )
    finally:
        for impl in reversed(impls):
            impl.close()
    figures = dict(
        rows=rows,
        ratios=ratios(times),
        world_size=world.size,
        rounds=rounds,
        mpi_algorithms_forced=forced,
        targets=dict(vs_mpi4py=TARGET_VS_MPI4PY, vs_best_mpi=TARGET_VS_BEST_MPI, min_bytes=TARGET_MIN_BYTES),
    )
    if results is not None:
        path = Path(results) / "allreduce.h5"
        written = world.run(lambda: write(path, figures) if world.is_root else None)
        figures["results_file"] = str(world.bcast(written).absolute())
    return figures


def ratios(times: dict[int, dict[str, list[float]]]) -> list[dict]:
    """Per size: busbw of twinhpc:auto over mpi4py and over the best MPI row (mpi4py*).

    ``times[bytes][impl]`` holds one time per round. Each ratio is the median over rounds of
    the ratio within a round (where the implementations ran seconds apart), not a ratio of
    medians: on a VM whose speed drifts between rounds, pairing removes the drift. The best
    MPI row of a round is the fastest mpi4py* row of that round; ``best_mpi`` names the one
    with the lowest median time.
    """
    out = []
    for nbytes in sorted(times):
        per = times[nbytes]
        mpi = {k: v for k, v in per.items() if k.startswith("mpi4py")}
        core, rounds = per["twinhpc:auto"], range(len(per["twinhpc:auto"]))
        best_each = [min(v[i] for v in mpi.values()) for i in rounds]
        shared = per.get("twinhpc:shared")
        out.append(
            dict(
                bytes=nbytes,
                core_vs_mpi4py=median([per["mpi4py"][i] / core[i] for i in rounds]),
                core_vs_best_mpi=median([best_each[i] / core[i] for i in rounds]),
                best_mpi=min(mpi, key=lambda k: median(mpi[k])),
                memcpy_gbps=nbytes / median(per["memcpy"]) / 1e9,
                shared_vs_mpi4py=median([per["mpi4py"][i] / shared[i] for i in rounds]) if shared else float("nan"),
            )
        )
    return out


def write(path: Path, figures: dict) -> Path:
    """A new record for ``path`` = ``FOLDER/allreduce.h5`` (:func:`write_results`): datasets
    ``rows`` and ``ratios`` (compound, impl names as strings) and the settings as attributes;
    its device is the GPU when a CUDA row (``twinhpc:cuda``, ``nccl``) was measured."""
    attrs = {key: figures[key] for key in ("world_size", "rounds", "mpi_algorithms_forced")}
    attrs.update({f"target_{key}": value for key, value in figures["targets"].items()})
    on_gpu = any(r["impl"] in ("twinhpc:cuda", "nccl") for r in figures["rows"])
    attrs["device"] = "cuda" if on_gpu else "cpu"
    return write_results(path, {"rows": figures["rows"], "ratios": figures["ratios"]}, attrs)


def report(figures: dict) -> str:
    """The rows as a table, then the ratios against the targets."""
    rows = format_table(
        figures["rows"],
        {"impl": "", "ranks": "d", "bytes": "d", "time_s": ".3e", "algbw_gbps": ".3f", "busbw_gbps": ".3f"},
    )
    ratio_rows = [
        dict(
            r,
            met="yes"
            if r["core_vs_best_mpi"] >= TARGET_VS_BEST_MPI
            and (r["bytes"] < TARGET_MIN_BYTES or r["core_vs_mpi4py"] >= TARGET_VS_MPI4PY)
            else "NO",
        )
        for r in figures["ratios"]
    ]
    ratio_table = format_table(
        ratio_rows,
        {
            "bytes": "d",
            "core_vs_mpi4py": ".2f",
            "core_vs_best_mpi": ".2f",
            "best_mpi": "",
            "memcpy_gbps": ".2f",
            "met": "",
            "shared_vs_mpi4py": ".2f",
        },
    )
    return (
        f"{rows}\n\ntwinhpc:auto busbw over mpi4py (target >= {TARGET_VS_MPI4PY} from "
        f"{TARGET_MIN_BYTES >> 20} MiB) and over the best MPI row (target >= {TARGET_VS_BEST_MPI}):\n{ratio_table}"
    )
