"""A per-rank trace of the data-parallel phases, for chrome://tracing and ui.perfetto.dev.

:class:`~twinhpc.comm.ddp.DataParallel` with ``timeline=DIR`` records, for every bucket of every
step, when its gradients became ready during backward, how long it queued behind earlier
buckets, and the engine's pack, all-reduce and unpack times (from
:meth:`~twinhpc.comm.engine.Handle.timings`); and how long :meth:`DataParallel.synchronize`
waited before the optimizer step. :meth:`Timeline.write` writes ``DIR/trace.rank<r>.json``.

Note:
    The file is the Chrome trace-event format (JSON object form): ``{"traceEvents": [...]}``
    with one *complete* event (``"ph": "X"``, start ``ts`` and duration ``dur`` in µs) per phase,
    ``pid`` = the rank and ``tid`` = the phase's lane (:data:`LANES`), plus metadata events that
    name the process ("rank r") and the lanes. Times are CLOCK_MONOTONIC microseconds, the clock
    of both :func:`time.monotonic_ns` and the engine's ``std::chrono::steady_clock``, so traces
    of ranks on one node line up when loaded together. Events are kept in memory and the file
    is rewritten whole, atomically (temporary name, then ``os.replace``), by each
    :meth:`Timeline.write`; a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the phases, one lane (trace ``tid``) each, in display order
LANES = ("bucket ready", "queued", "pack", "allreduce", "unpack", "optimizer wait")
_BUCKET_LANES = LANES[:5]  # a bucket's phases, in time order


def now_us() -> int:
    """The timeline's clock: CLOCK_MONOTONIC in integer microseconds."""
    return time.monotonic_ns() // 1000


class Timeline:
    """The trace of one rank, written to ``directory/trace.rank<rank>.json``.

    Parameters
    ----------
    directory : the folder for the trace files (created on the first write).
    rank : this process's rank; the trace's ``pid``.
    """

    def __init__(self, directory: str | os.PathLike[str], rank: int):
        self.path = Path(directory) / f"trace.rank{rank}.json"
        self.rank = rank
        self.events: list[dict[str, Any]] = [
            {"ph": "M", "pid": rank, "name": "process_name", "args": {"name": f"rank {rank}"}},
            {"ph": "M", "pid": rank, "name": "process_sort_index", "args": {"sort_index": rank}},
        ]
        for tid, lane in enumerate(LANES):
            self.events.append({"ph": "M", "pid": rank, "tid": tid, "name": "thread_name", "args": {"name": lane}})
            self.events.append(
                {"ph": "M", "pid": rank, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}}
            )

    def span(self, lane: str, name: str, start_us: float, end_us: float, **args: Any) -> None:
        """Record one phase from ``start_us`` to ``end_us`` (clock of :func:`now_us`) on ``lane``."""
        self.events.append(
            {
                "ph": "X",
                "pid": self.rank,
                "tid": LANES.index(lane),
                "name": name,
                "ts": start_us,
                "dur": max(0, end_us - start_us),
                "args": args,
            }
        )

    def bucket(self, step: int, index: int, nbytes: int, first_ready_us: int, timings: Mapping[str, int]) -> None:
        """Record one bucket's phases: ready (first gradient to launch), then the engine's
        ``timings`` (``enqueue``, ``start``, ``pack_done``, ``reduce_done``, ``unpack_done``; a
        phase the engine skipped has time 0 and is recorded with zero duration)."""
        name, args = f"bucket {index}", {"step": step, "bucket": index, "bytes": nbytes}
        stamps = [first_ready_us]
        for key in ("enqueue", "start", "pack_done", "reduce_done", "unpack_done"):
            stamps.append(timings[key] or stamps[-1])
        for lane, start, end in zip(_BUCKET_LANES, stamps, stamps[1:]):
            self.span(lane, name, start, end, **args)

    def write(self) -> Path:
        """Write the trace so far atomically; returns its path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w") as f:
                json.dump({"traceEvents": self.events, "displayTimeUnit": "ms"}, f)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.path
