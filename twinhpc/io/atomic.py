"""Atomic replacement of a finished file: after a crash the target is the old file or the new
one, complete, never a mixture (``tmp`` written in full first, then renamed over the target).

Every change a run makes to its directory's entries goes through :func:`replace_durably` or
:func:`remove_durably` (tests inject crashes there)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import TwinError


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename the finished file ``tmp`` over ``final`` so that after a crash ``final`` is either
    the old or the new file, complete: fsync ``tmp``, rename, fsync the directory."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_directory(final.parent)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a removal) durable; a no-op where directories
    cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(path: Path) -> None:
    """Delete ``path`` (if it exists) and fsync its directory."""
    path.unlink(missing_ok=True)
    fsync_directory(path.parent)


_IMAGES = itertools.count()


@contextlib.contextmanager
def hdf5_image(tmp: Path, base: Path | None = None, **options: Any) -> Iterator[Any]:
    """Yield an ``h5py.File`` held in memory; when the block ends without error its image is
    written to ``tmp`` with Python's own file I/O.

    ``base``: an existing HDF5 file to start from (read into memory, edited there), else an
    empty one; ``options`` go to ``h5py.File`` (``track_order``, ``libver`` ...).

    Note:
        HDF5 never writes to the disk itself, so a full disk (ENOSPC) or a failing file system
        is an ``OSError`` of ``write``: HDF5 does not end up holding objects of a half-written
        file, which it fails to close at interpreter exit (a crash in ``H5_term_library``).
        The price is one copy of the file in memory: for checkpoints, records and result files,
        never for the data set's shards.
    """
    import h5py

    if base is None:
        name, mode = f"twinhpc-image-{os.getpid()}-{next(_IMAGES)}.h5", "w"
    else:
        name, mode = str(base), "r+"
    with h5py.File(name, mode, driver="core", backing_store=False, **options) as f:
        yield f
        f.flush()
        image = f.id.get_file_image()
    with open(tmp, "wb") as fh:
        fh.write(image)


@contextlib.contextmanager
def writing(path: Path, cannot_write: Callable[[OSError], str]) -> Iterator[Path]:
    """Write ``path`` atomically: yields a temporary name beside it (its folder created), which
    replaces ``path`` durably when the block ends. On any error the temporary file is removed;
    an ``OSError`` becomes a :class:`~twinhpc.errors.TwinError` with the message
    ``cannot_write(error)``, naming the file or option for the user."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        replace_durably(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise TwinError(cannot_write(e)) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    """Remove the temporary file if there is one (its folder may be missing, or not a folder)."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
