"""``twinhpc bench loader``: the loader's throughput against a raw sequential read of the same files.

Both measurements run in the same job, alternating, ``rounds`` times (median reported):

- *loader*: every rank iterates a :class:`~twinhpc.data.loader.ShardedLoader` (``epochs`` epochs,
  or for ``seconds``) and counts the samples and bytes it yields;
- *raw*: every rank reads its contiguous share (``1/N`` of the split's samples, in shard order)
  sequentially with the HDF5 dataset's ``read_direct``, in slices of about 8 MiB of the largest
  field, into reused buffers (``epochs`` passes, or for ``seconds``).

A warm-up pass of each comes first, so that both read from the page cache alike. Bytes are the
in-memory bytes of the numeric fields (text fields are read but counted in samples/s only);
totals are all ranks' bytes over the slowest rank's time. The ratio is total loader MB/s over
total raw MB/s, the median of the rounds' ratios; the loader passes when it is at least
``target``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..comm.world import World, get_world
from ..data.format import Manifest
from ..data.loader import ShardedLoader
from ..data.shards import open_shard
from ..io.bench_results import write_results
from . import format_table, median
from .targets import LOADER_RATIO as TARGET

RAW_SLICE_BYTES = 8 << 20


class RawReader:
    """This rank's contiguous share of a split, read sequentially in large slices.

    This is the plain HDF5 way: shard files opened with the library's defaults
    (:func:`~twinhpc.data.shards.open_shard`; kept open between passes, as the loader's are),
    ``Dataset.read_direct`` of large slices into reused buffers.
    """

    def __init__(self, directory: Path, split: str, fields, rank: int, size: int):
        info = Manifest.load(directory).split(split)
        self.fields = tuple(fields)
        a, b = info.count * rank // size, info.count * (rank + 1) // size
        self.samples = b - a
        self.ranges = []  # (path, lo, hi): the rows of each shard inside [a, b)
        start = 0
        for sh in info.shards:
            lo, hi = max(a, start) - start, min(b, start + sh.count) - start
            if lo < hi:
                self.ranges.append((directory / sh.file, lo, hi))
            start += sh.count
        self.rows = max(1, RAW_SLICE_BYTES // max(f.sample_bytes for f in self.fields))
        self.buffers = {f.name: np.empty((self.rows, *f.shape), f.numpy_dtype()) for f in self.fields}
        self.files: dict[Path, Any] = {}  # open shard files

    def _open(self, path: Path) -> Any:
        """The open shard file ``path``; :class:`~twinhpc.errors.DatasetError` naming it when
        it is missing or unreadable."""
        if path not in self.files:
            self.files[path] = open_shard(path)
        return self.files[path]

    def read(self) -> int:
        """One pass over the share; returns the samples read."""
        for path, lo, hi in self.ranges:
            f = self._open(path)
            for spec in self.fields:
                ds, buf = f[spec.name], self.buffers[spec.name]
                for a in range(lo, hi, self.rows):
                    b = min(hi, a + self.rows)
                    if spec.is_text:
                        buf[: b - a] = ds.asstr()[a:b]
                    else:
                        ds.read_direct(buf, np.s_[a:b], np.s_[0 : b - a])
        return self.samples

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def _passes(one_pass, epochs: int, seconds: float | None) -> tuple[int, float]:
    """Run ``one_pass()`` (returns samples) ``epochs`` times, or whole passes until ``seconds``
    have passed; return the samples and the seconds taken."""
    samples, done, t0 = 0, 0, time.perf_counter()
    while done < epochs if seconds is None else (done == 0 or time.perf_counter() - t0 < seconds):
        samples += one_pass()
        done += 1
    return samples, time.perf_counter() - t0


def bench_loader(
    dataset,
    split: str = "train",
    batch_size: int = 256,
    epochs: int = 1,
    seconds: float | None = None,
    prefetch: int = 2,
    rounds: int = 3,
    results: str | Path | None = "bench-results",
    target: float = TARGET,
    world: World | None = None,
) -> dict:
    """Measure the loader against a raw sequential read of ``dataset``; collective.

    Parameters
    ----------
    dataset : the dataset directory.
    split : the split to read.
    batch_size, prefetch : the loader's settings (per rank).
    epochs : loader epochs (and raw passes) per round; ignored when ``seconds`` is given.
    seconds : run each measurement for this long instead.
    rounds : alternating loader/raw rounds; medians are reported.
    results : folder of the records (a new ``loader/<time>-<commit>.h5``, written by rank 0);
        ``None`` writes nothing.
    target : the loader/raw ratio that counts as a pass.

    Returns the figures (the same dict on every rank): ``ranks`` (per rank), ``total``,
    ``ratio``, ``target``, ``pass`` and the settings.
    """
    world = world or get_world()
    directory = Path(dataset).absolute()
    loader = world.run(lambda: ShardedLoader(directory, split, batch_size, prefetch=prefetch, world=world))
    raw = world.run(lambda: RawReader(directory, split, loader.fields, world.rank, world.size))
    numeric = sum(f.sample_bytes for f in loader.fields if not f.is_text)
    epoch = itertools.count()

    def loader_pass() -> int:
        return sum(len(next(iter(batch.values()))) for batch in loader.epoch(next(epoch)))

    def measured(one_pass) -> tuple[int, float]:
        world.barrier()
        return world.run(lambda: _passes(one_pass, epochs, seconds))

    try:
        world.run(lambda: (raw.read(), loader_pass()))  # warm-up: page cache, open files
        per_round = []
        for _ in range(rounds):
            raw_samples, raw_s = measured(raw.read)
            samples, loader_s = measured(loader_pass)
            per_round.append(world.allgather((samples, loader_s, raw_samples, raw_s)))
    finally:
        loader.close()
        raw.close()
    figures = _figures(per_round, numeric)
    figures.update(
        dataset=str(directory),
        split=split,
        world_size=world.size,
        batch_size=batch_size,
        prefetch=prefetch,
        rounds=rounds,
        epochs=None if seconds else epochs,
        seconds=seconds,
        samples_per_rank=loader.samples_per_rank,
        bytes_per_sample=numeric,
        target=target,
    )
    figures["pass"] = figures["ratio"] >= target
    if results is not None:
        path = Path(results) / "loader.h5"
        written = world.run(lambda: _write(path, figures) if world.is_root else None)
        figures["results_file"] = str(world.bcast(written).absolute())
    return figures


def _figures(per_round: list[list[tuple[int, float, int, float]]], numeric: int) -> dict:
    """Per-rank and total rates, each the median over rounds; the ratio's median."""
    size = len(per_round[0])

    def rates(rnd, ranks):
        samples = sum(rnd[r][0] for r in ranks)
        loader_s = max(rnd[r][1] for r in ranks)
        raw_mb = sum(rnd[r][2] for r in ranks) * numeric / 1e6 / max(rnd[r][3] for r in ranks)
        loader_mb = samples * numeric / 1e6 / loader_s
        return {
            "loader_samples_per_s": samples / loader_s,
            "loader_MB_per_s": loader_mb,
            "raw_MB_per_s": raw_mb,
            "ratio": loader_mb / raw_mb if raw_mb else float("nan"),
        }

    def medians(ranks) -> dict:
        each = [rates(rnd, ranks) for rnd in per_round]
        return {k: median(e[k] for e in each) for k in each[0]}

    total_rounds = [rates(rnd, range(size)) for rnd in per_round]
    return {
        "ranks": [{"rank": r, **medians([r])} for r in range(size)],
        "total": medians(range(size)),
        "rounds_total": total_rounds,
        "ratio": median(t["ratio"] for t in total_rounds),
    }


def _write(path: Path, figures: dict) -> Path:
    attrs = {
        k: figures[k]
        for k in (
            "dataset",
            "split",
            "world_size",
            "batch_size",
            "prefetch",
            "rounds",
            "samples_per_rank",
            "bytes_per_sample",
            "ratio",
            "target",
            "pass",
        )
    }
    if figures["seconds"] is None:
        attrs["epochs"] = figures["epochs"]
    else:
        attrs["seconds"] = figures["seconds"]
    return write_results(
        path,
        {
            "ranks": figures["ranks"],
            "total": [{"rank": -1, **figures["total"]}],
            "rounds": [{"round": i, **t} for i, t in enumerate(figures["rounds_total"])],
        },
        attrs,
    )


def report(figures: dict) -> str:
    """The table that ``twinhpc bench loader`` prints."""
    what = f"{figures['epochs']} epoch(s)" if figures["epochs"] else f"{figures['seconds']} s"
    rows = figures["ranks"] + [{"rank": "total", **figures["total"]}]
    formats = {
        "rank": "d",
        "loader_samples_per_s": ",.0f",
        "loader_MB_per_s": ",.0f",
        "raw_MB_per_s": ",.0f",
        "ratio": ".2f",
    }
    lines = [
        f"bench loader: {figures['dataset']} split {figures['split']}, {figures['world_size']} rank(s), "
        f"batch {figures['batch_size']}, prefetch {figures['prefetch']}, {what} per measurement, "
        f"median of {figures['rounds']} rounds",
        format_table(rows, formats),
        f"loader/raw = {figures['ratio']:.2f} (target >= {figures['target']:.2f}): "
        f"{'PASS' if figures['pass'] else 'FAIL'}",
    ]
    if "results_file" in figures:
        lines.append(f"results: {figures['results_file']}")
    return "\n".join(lines)
