"""Atomic replacement of a finished file: after a crash the target is the old file or the new
one, complete, never a mixture (``tmp`` written in full first, then renamed over the target).

Every change a run makes to its directory's entries goes through :func:`replace_durably` or
:func:`remove_durably` (tests inject crashes there)."""

from __future__ import annotations

import os
from pathlib import Path


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
