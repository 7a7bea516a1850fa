"""Atomic replacement of a finished file: after a crash the target is the old file or the new
one, complete, never a mixture (``tmp`` written in full first, then renamed over the target).

Every change a run makes to its directory's entries goes through :func:`replace_durably` or
:func:`remove_durably` (tests inject crashes there)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

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
