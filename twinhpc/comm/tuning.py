"""Choosing the all-reduce algorithm per message size: measured once, cached, overridable.

With ``Engine(algorithm="auto")`` the engine sums each message with the algorithm that was
fastest for its size class on this kind of machine and communicator shape. The first engine of
a kind measures every available algorithm at :data:`SIZE_CLASSES` (a fraction of a second);
rank 0 writes the outcome to ``$TWINHPC_CACHE/allreduce-tuning.json`` (default
``~/.cache/twinhpc``) under a key naming the MPI library, CPU model, number of ranks and nodes
and the segment size, and later engines of that kind read it. ``$TWINHPC_ALLREDUCE_ALGO`` (or
``Engine(algorithm=NAME)``) forces one algorithm for every size; deleting the file re-measures.

Note:
    Every rank must use the same table (an operation whose algorithm differs across ranks fails
    with ValueError), so rank 0 alone reads the cache and broadcasts what it found, and a new
    measurement decides on times agreed by all ranks (the maximum over ranks of each
    algorithm's time), which gives every rank the same table without a further exchange.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger("twinhpc")

#: larger than any message: the table entry that covers every size
ALL_SIZES = (1 << 63) - 1
#: message sizes measured (bytes); each stands for the sizes up to the geometric mean with the next
SIZE_CLASSES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)
#: environment variable naming the cache folder
CACHE_ENV = "TWINHPC_CACHE"
#: the cache file inside it
CACHE_FILE = "allreduce-tuning.json"
#: version of the cache's layout (part of every key)
FORMAT = 5
#: timed turns per algorithm and size (after one warm-up); the median counts
REPS = 7


class TunedEngine(Protocol):
    """What tuning needs of an engine (:class:`~twinhpc.comm.engine.Engine` has it)."""

    @property
    def world(self) -> World: ...
    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def segment_bytes(self) -> int: ...
    def available_algorithms(self) -> list[str]: ...
    def barrier(self, name: str = ...) -> None: ...
    def allreduce_(
        self,
        t: torch.Tensor,
        op: str = ...,
        wire_dtype: torch.dtype | None = ...,
        name: str = ...,
        algorithm: str | None = ...,
    ) -> torch.Tensor: ...


def cache_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$TWINHPC_CACHE/allreduce-tuning.json``, default ``~/.cache/twinhpc/allreduce-tuning.json``."""
    folder = environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "twinhpc")
    return Path(folder) / CACHE_FILE


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tuning_key(mpi_library: str, cpu: str, ranks: int, nodes: int, segment_bytes: int) -> str:
    """The cache key of one machine kind and communicator shape."""
    return f"v{FORMAT}|{mpi_library}|{cpu}|ranks={ranks}|nodes={nodes}|segment={segment_bytes}"


def load(path: Path) -> dict[str, Any]:
    """The cache's entries (key -> entry); ``{}`` if the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring the all-reduce tuning cache %s (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def store(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` under ``key``, atomically (temporary file, then rename); warns on failure."""
    data = load(path)
    data[key] = entry
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning("cannot write the all-reduce tuning cache %s (%s)", path, e)


def table_from_times(times: Mapping[int, Mapping[str, float]]) -> list[tuple[int, str]]:
    """The algorithm table (``[(max_bytes, name), ...]``) from measured seconds per size and algorithm.

    Each size class uses its fastest algorithm up to the geometric mean of its size and the
    next class's; the last class covers every larger size. Neighbouring classes with the same
    winner are merged.
    """
    sizes = sorted(times)
    table: list[tuple[int, str]] = []
    for i, size in enumerate(sizes):
        best = min(times[size], key=times[size].__getitem__)
        bound = int((size * sizes[i + 1]) ** 0.5) if i + 1 < len(sizes) else ALL_SIZES
        if table and table[-1][1] == best:
            table[-1] = (bound, best)
        else:
            table.append((bound, best))
    return table


def autotune(engine: TunedEngine, sizes: Sequence[int] = SIZE_CLASSES, reps: int = REPS) -> dict[int, dict[str, float]]:
    """Seconds of one all-reduce per size and available algorithm (float32 messages). Collective.

    After a warm-up call of each, the algorithms take turns, ``reps`` times, so that a drift of
    the machine's speed affects them alike; a turn times a few back-to-back calls (about 8 MiB
    of messages, 2 to 50 calls) after a barrier, as a training step issues them, so the skew of
    the ranks' arrival at the barrier does not decide; each figure is the median of its turns'
    per-call times, and the maximum over ranks, so every rank gets the same numbers.
    """
    algorithms = engine.available_algorithms()
    times: dict[int, dict[str, float]] = {}
    for size in sizes:
        t = torch.ones(max(1, size // 4))
        calls = max(2, min(50, (8 << 20) // max(size, 1)))
        seconds: dict[str, list[float]] = {a: [] for a in algorithms}
        for a in algorithms:
            engine.allreduce_(t, algorithm=a, name="tuning")
        for _ in range(reps):
            for a in algorithms:
                engine.barrier(name="tuning")
                t0 = time.perf_counter()
                for _ in range(calls):
                    engine.allreduce_(t, algorithm=a, name="tuning")
                seconds[a].append((time.perf_counter() - t0) / calls)
        times[size] = {
            a: engine.world.allreduce(sorted(s)[len(s) // 2], "max", name="tuning") for a, s in seconds.items()
        }
    return times


def algorithm_table(engine: TunedEngine, environ: Mapping[str, str] = os.environ) -> list[tuple[int, str]]:
    """The table for ``engine``: from the cache, else measured and cached. Collective.

    One rank needs no table (nothing is exchanged): ``mpi`` for every size.
    """
    from mpi4py import MPI

    if engine.size == 1:
        return [(ALL_SIZES, "mpi")]
    world = engine.world
    nodes = world.node_count(name="tuning: nodes")
    library = MPI.Get_library_version().replace("\0", "").splitlines()[0].strip()
    key = tuning_key(library, _cpu_model(), engine.size, nodes, engine.segment_bytes)
    path = cache_path(environ)
    entry = world.bcast(load(path).get(key) if engine.rank == 0 else None, name="tuning: cache")
    if entry is not None:
        return [(int(b), a) for b, a in entry["table"]]
    times = autotune(engine)
    table = table_from_times(times)
    if engine.rank == 0:
        store(
            path,
            key,
            {
                "table": table,
                "seconds": {str(s): t for s, t in times.items()},
                "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        log.info("all-reduce tuning for %s: %s (cached in %s)", key, table, path)
    return table
