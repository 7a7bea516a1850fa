"""Atomic dataset directories: build in a temporary sibling, rename into place when complete.

Used by every command that writes a dataset directory (``ingest``, ``preprocess``). Rank 0
creates ``.<name>.tmp-XXXX`` beside the final path and broadcasts it; every rank writes its
shards there; rank 0 renames it into place at the end (:func:`install`). If any rank fails,
:func:`staging` removes the temporary directory, so a directory under the final name is always
complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..comm.world import World
from ..errors import TwinError


def check_replaceable(out: Path, option: str, marker: str | None) -> None:
    """With ``marker`` (a file name such as ``manifest.json``), refuse to replace an ``out`` that
    is not a directory holding it: ``--overwrite`` replaces a dataset, never an unrelated directory."""
    if marker is not None and out.exists() and not (out.is_dir() and (out / marker).is_file()):
        what = "a directory" if out.is_dir() else "a file"
        raise TwinError(
            f"{option} {out}: is {what} without {marker}, so not a dataset; --overwrite replaces only a "
            "dataset: remove it yourself or choose another path"
        )


def make_staging_dir(out: Path, option: str, overwrite: bool, marker: str | None = None) -> str:
    """Create the temporary sibling of ``out`` (rank 0 only); errors name ``option`` and the path."""
    if out.exists() and not overwrite:
        raise TwinError(f"{option} {out}: already exists (use --overwrite to replace it)")
    check_replaceable(out, option, marker)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TwinError(f"{option} {out}: cannot create parent directory {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TwinError(f"{option} {out}: directory {parent} is not writable")
    try:
        tmp = tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent)
    except OSError as e:
        raise TwinError(f"{option} {out}: cannot create a temporary directory in {parent} ({e.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the dataset gets the usual mode
    return tmp


def install(tmp: Path, out: Path, option: str, overwrite: bool, marker: str | None = None) -> None:
    """Rename the finished ``tmp`` to ``out`` (rank 0); an existing ``out`` is removed only after,
    and only if it holds ``marker`` when one is given (see :func:`check_replaceable`)."""
    old = None
    if out.exists():
        if not overwrite:
            raise TwinError(f"{option} {out}: appeared while writing; not replaced")
        check_replaceable(out, option, marker)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staging(world: World, out: Path, option: str, overwrite: bool, marker: str | None = None) -> Iterator[Path]:
    """Collective: yield the temporary directory for ``out`` on every rank; remove it on failure.

    A :class:`TwinError` is raised on every rank together (``World.run``), so the ranks clean up
    and leave together; any other exception (a local interruption) cleans up without waiting.
    The caller installs the finished directory with :func:`install` on rank 0. With ``marker``,
    an existing ``out`` is replaced only if it holds that file (:func:`check_replaceable`).
    """
    tmp = Path(
        world.bcast(world.run(lambda: make_staging_dir(out, option, overwrite, marker) if world.is_root else None))
    )
    try:
        yield tmp
    except TwinError:
        _discard(world, tmp)
        world.barrier()
        raise
    except BaseException:
        _discard(world, tmp)
        raise


def _discard(world: World, tmp: Path) -> None:
    if world.is_root and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
