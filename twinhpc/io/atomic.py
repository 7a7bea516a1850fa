"""Atomic replacement of a finished file: after a crash the target is the old file or the new
one, complete, never a mixture (``tmp`` written in full first, then renamed over the target)."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename the finished file ``tmp`` over ``final`` so that after a crash ``final`` is either
    the old or the new file, complete: fsync ``tmp``, rename, fsync the directory."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
