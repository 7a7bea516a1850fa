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
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..comm.world import World, get_world
from ..errors import IngestError, TwinError
from ..log import Progress
from .format import Manifest, SplitInfo
from .readers import reader_class
from .shards import COMPRESSIONS, write_shard
from .split import assign_splits, plan_shards, shards_of_rank

log = logging.getLogger("twinhpc")


def _make_tmpdir(out: Path, overwrite: bool) -> str:
    if out.exists() and not overwrite:
        raise IngestError(f"--out {out}: already exists (use --overwrite to replace it)")
    parent = out.parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IngestError(f"--out {out}: cannot create parent directory {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise IngestError(f"--out {out}: directory {parent} is not writable")
    try:
        tmp = tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the dataset gets the usual mode
        return tmp
    except OSError as e:
        raise IngestError(f"--out {out}: cannot create a temporary directory in {parent} ({e.strerror})") from None


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is replaced only after."""
    old = None
    if out.exists():
        if not overwrite:
            raise IngestError(f"--out {out}: appeared while ingesting; not replaced")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ingest(kind: str, src: str | os.PathLike, out: str | os.PathLike, *, shards: int = 1,
           val_fraction: float = 0.1, test_fraction: float | None = None, seed: int = 0,
           compression: str = "none", overwrite: bool = False,
           options: dict[str, Any] | None = None, world: World | None = None,
           command: str | None = None) -> Manifest:
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
    overwrite : replace an existing ``out`` (only after the new dataset is complete).
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
    if test_fraction is None:
        test_fraction = 0.0 if info.given_split is not None else 0.1

    def plan():
        splits = assign_splits(info.count, val_fraction, test_fraction, seed, info.given_split)
        return splits, plan_shards(splits, shards)

    splits, plans = world.run(plan)
    mine = shards_of_rank(plans, world.rank, world.size)
    log.info("ingest %s %s: %d samples -> %s (%s) in %d shards on %d rank(s)", kind, src, info.count,
             ", ".join(f"{s} {len(v)}" for s, v in splits.items()), out, len(plans), world.size)
    log.debug("rank %d writes %s", world.rank, [p.file for p in mine])

    tmp = world.run(lambda: _make_tmpdir(out, overwrite) if world.is_root else None)
    tmp = Path(world.bcast(tmp))
    try:
        progress = Progress(len(mine), "ingest (rank 0 shards)", enabled=world.is_root)

        def write_mine():
            written = []
            for p in mine:
                written.append((p.split, p.index, write_shard(tmp / p.file, info.fields, p.indices, source.read, compression)))
                log.debug("wrote %s (%d samples)", p.file, len(p.indices))
                progress.update()
            return written

        written = world.run(write_mine, IngestError)
        everything = [w for part in world.allgather(written) for w in part]
        split_infos = []
        for split in splits:
            shard_infos = tuple(sh for _, _, sh in sorted((w for w in everything if w[0] == split), key=lambda w: w[1]))
            split_infos.append(SplitInfo(split, sum(s.count for s in shard_infos), shard_infos))
        manifest = Manifest(
            fields=info.fields, splits=tuple(split_infos), label_field=info.label_field,
            classes=info.classes, categorical=info.categorical,
            provenance={
                "source": str(Path(src).absolute()), "kind": kind,
                "command": command or " ".join(sys.argv),
                "twinhpc_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                "compression": compression, "options": dict(options or {}), "ranks": world.size,
                **({"details": info.details} if info.details else {}),
            })

        def finish():
            if world.is_root:
                manifest.save(tmp)
                _install(tmp, out, overwrite)

        world.run(finish, IngestError)
    except TwinError:  # raised on every rank together (World.run): clean up, then leave together
        world_failed_cleanup(world, tmp)
        world.barrier()
        raise
    except BaseException:  # a local interruption: clean up what this rank can, never wait
        world_failed_cleanup(world, tmp)
        raise
    log.info("ingest done: %s (%d samples, %.1f s)", out, info.count, time.perf_counter() - t0)
    return manifest


def world_failed_cleanup(world: World, tmp: Path) -> None:
    """Remove the temporary directory after a failure (rank 0; every rank is failing too)."""
    if world.is_root and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
