"""``twinhpc ingest KIND SRC --out DIR``: convert a source into a sharded HDF5 dataset.

Every rank opens the source, computes the same split and shard plan (a pure function of the
sample count and the seed), writes its own share of the shards into a temporary directory next
to ``DIR``, and rank 0 writes the manifest and renames the directory into place. Any failure on
any rank ends every rank with the same error and removes the temporary directory, so a
half-written dataset never carries the final name.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..comm.world import World, get_world
from ..errors import IngestError, TwinError
from ..log import Progress
from .format import MANIFEST, Manifest, SplitInfo
from .readers import reader_class
from .shards import COMPRESSIONS, write_shard
from .source import MAX_PLACES, SourceInfo
from .split import assign_splits, plan_shards, shards_of_rank
from .staging import install, staging

log = logging.getLogger("twinhpc")


def _place(where: str) -> tuple[str, int]:
    """``"file:line"`` -> ``(file, line)``, so places sort by line number."""
    path, _, line = where.rpartition(":")
    return path, int(line) if line.isdigit() else 0


def _tally(counts: dict[str, dict[str, Any]], got: dict[str, np.ndarray], info: SourceInfo) -> None:
    """Add one piece's NaN/inf counts (float fields) and labels outside the classes to ``counts``."""
    for spec in info.fields:
        a = got[spec.name]
        if spec.is_text:
            continue
        c = counts.setdefault(spec.name, {})
        if a.dtype.kind == "f":
            c["nan"] = c.get("nan", 0) + int(np.isnan(a).sum())
            c["inf"] = c.get("inf", 0) + int(np.isinf(a).sum())
        if spec.name == info.label_field and info.classes and a.dtype.kind in "iu":
            outside = c.setdefault("outside_classes", {})
            values, n = np.unique(a[(a < 0) | (a >= len(info.classes))], return_counts=True)
            for v, k in zip(values.tolist(), n.tolist()):
                outside[str(v)] = outside.get(str(v), 0) + k


def _merge_tallies(parts: list[dict], info: SourceInfo) -> dict[str, dict[str, dict[str, Any]]]:
    """The ranks' tallies summed: split -> field -> counts (float fields and the label field only)."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for part in parts:
        for split, fields in part.items():
            for name, counts in fields.items():
                m = merged.setdefault(split, {}).setdefault(name, {})
                for key, value in counts.items():
                    if isinstance(value, dict):
                        d = m.setdefault(key, {})
                        for v, k in value.items():
                            d[v] = d.get(v, 0) + k
                    else:
                        m[key] = m.get(key, 0) + value
    for fields in merged.values():
        for counts in fields.values():
            if "outside_classes" in counts:
                counts["outside_classes"] = dict(sorted(counts["outside_classes"].items(), key=lambda vk: int(vk[0])))
    order = [f.name for f in info.fields]
    return {
        split: {n: fields[n] for n in sorted(fields, key=order.index) if fields[n]}
        for split, fields in sorted(merged.items())
    }


def _warn_bad_values(statistics: dict, src) -> None:
    """Log a warning per field with NaN/inf values, and per labelled split with labels outside the classes."""
    for split, fields in statistics.items():
        for name, c in fields.items():
            if c.get("nan") or c.get("inf"):
                log.warning(
                    "%s: split %s, field %r holds %d NaN and %d inf value(s)", src, split, name, c["nan"], c["inf"]
                )
            if c.get("outside_classes") and split != "unlabeled":
                log.warning(
                    "%s: split %s, label field %r holds values outside the classes: %s",
                    src,
                    split,
                    name,
                    ", ".join(f"{v} ({k} samples)" for v, k in c["outside_classes"].items()),
                )


def ingest(
    kind: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shards: int = 1,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    seed: int = 0,
    compression: str = "none",
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
    world: World | None = None,
    command: str | None = None,
) -> Manifest:
    """Convert ``src`` (a source of ``kind``) into the dataset directory ``out``; collective.

    Parameters
    ----------
    kind : a reader name (see :data:`twinhpc.data.readers.READERS`).
    src : the source file or directory.
    out : the dataset directory to create.
    shards : shards per split (a split smaller than this gets one shard per sample).
    val_fraction, test_fraction : fractions of the (training) pool cut off as val and test;
        ``test_fraction=None`` means 0.1, or 0 for sources with their own test split.
    seed : seed of the split permutation; the dataset depends on it, not on the rank count.
    compression : ``none``, ``gzip`` or ``lzf`` for every field.
    overwrite : replace an existing ``out`` (only after the new dataset is complete); an ``out``
        that is not a dataset (no ``manifest.json``) is never replaced, an error naming it.
    options : reader options (``label``, ``fields``, ...).

    Returns the manifest (on every rank). Raises :class:`TwinError` on every rank if any rank
    fails; nothing is left under ``out`` then.
    """
    world = world or get_world()
    out = Path(out).absolute()
    t0 = time.perf_counter()
    if compression not in COMPRESSIONS:
        raise TwinError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    source = reader_class(kind)(src, options)

    def open_source():
        source.check_options()
        return source.open()

    info = world.run(open_source, IngestError)
    counts = world.allgather(info.count)
    if len(set(counts)) != 1:  # ranks must agree, or the plan differs between them
        raise IngestError(f"{src}: ranks see different sample counts {counts}; is the source changing?")
    schemas = world.allgather((info.fields, info.label_field, info.classes, sorted(info.categorical.items())))
    differ = [r for r, s in enumerate(schemas) if s != schemas[0]]
    if differ:  # every rank must store labels and codes under the mapping the manifest records
        raise IngestError(
            f"{src}: rank(s) {differ} derived another schema, class list or categorical levels than rank 0; "
            "is the source changing?"
        )
    if test_fraction is None:
        test_fraction = 0.0 if info.given_split is not None else 0.1

    def plan():
        splits = assign_splits(info.count, val_fraction, test_fraction, seed, info.given_split)
        return splits, plan_shards(splits, shards)

    splits, plans = world.run(plan)
    mine = shards_of_rank(plans, world.rank, world.size)
    log.info(
        "ingest %s %s: %d samples -> %s (%s) in %d shards on %d rank(s)",
        kind,
        src,
        info.count,
        ", ".join(f"{s} {len(v)}" for s, v in splits.items()),
        out,
        len(plans),
        world.size,
    )
    log.debug("rank %d writes %s", world.rank, [p.file for p in mine])

    with staging(world, out, "--out", overwrite, MANIFEST) as tmp:
        progress = Progress(len(mine), "ingest (rank 0 shards)", enabled=world.is_root)

        tallies: dict[str, dict[str, dict[str, Any]]] = {}

        def write_mine():
            written = []
            for p in mine:

                def read(indices, split=p.split):
                    got = source.read(indices)
                    _tally(tallies.setdefault(split, {}), got, info)
                    return got

                written.append((p.split, p.index, write_shard(tmp / p.file, info.fields, p.indices, read, compression)))
                log.debug("wrote %s (%d samples)", p.file, len(p.indices))
                progress.update()
            return written

        written = world.run(write_mine, IngestError)
        everything = [w for part in world.allgather(written) for w in part]
        details = dict(info.details)
        replaced = world.allgather((source.replaced, source.replaced_at))
        if sum(n for n, _ in replaced):
            places = sorted((p for _, at in replaced for p in at), key=_place)[:MAX_PLACES]
            details["replaced_characters"] = {"count": sum(n for n, _ in replaced), "first": places}
            if world.is_root:
                log.warning(
                    "%s: replaced %d NUL or lone-surrogate character(s), which HDF5 text cannot hold, by U+FFFD "
                    "(first at %s)",
                    src,
                    details["replaced_characters"]["count"],
                    ", ".join(places),
                )
        statistics = _merge_tallies(world.allgather(tallies), info)
        if world.is_root:
            _warn_bad_values(statistics, src)
        split_infos = []
        for split in splits:
            shard_infos = tuple(sh for _, _, sh in sorted((w for w in everything if w[0] == split), key=lambda w: w[1]))
            split_infos.append(SplitInfo(split, sum(s.count for s in shard_infos), shard_infos))
        manifest = Manifest(
            fields=info.fields,
            splits=tuple(split_infos),
            label_field=info.label_field,
            classes=info.classes,
            categorical=info.categorical,
            provenance={
                "source": str(Path(src).absolute()),
                "kind": kind,
                "command": command or " ".join(sys.argv),
                "twinhpc_version": __version__,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "seed": seed,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "compression": compression,
                "options": dict(options or {}),
                "ranks": world.size,
                **({"details": details} if details else {}),
            },
            statistics=statistics,
        )

        def finish():
            if world.is_root:
                manifest.save(tmp)
                install(tmp, out, "--out", overwrite, MANIFEST)

        world.run(finish, IngestError)
    log.info("ingest done: %s (%d samples, %.1f s)", out, info.count, time.perf_counter() - t0)
    return manifest
