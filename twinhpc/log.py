"""Logging: rank 0 talks to the console, every rank writes its own log file.

Call :func:`setup_logging` once per process after the rank is known. Messages go to the
``twinhpc`` logger; console output comes from rank 0 only (warnings and errors from any rank),
and with a log directory every rank also writes ``<dir>/<name>.rank<r>.log`` at DEBUG level.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

LOGGER = "twinhpc"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(
    rank: int, log_dir: str | os.PathLike | None = None, name: str = "twinhpc", verbose: bool = False
) -> Path | None:
    """Configure the ``twinhpc`` logger; returns this rank's log file (or ``None``)."""
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.addFilter(_RankFilter(rank))
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else "[rank %(rank)d] %(message)s"))
    logger.addHandler(console)
    if log_dir is None:
        return None
    path = Path(log_dir) / f"{name}.rank{rank}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path)
    except OSError as e:
        logger.warning("cannot write log file %s (%s); logging to the console only", path, e)
        return None
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s %(message)s"))
    logger.addHandler(fh)
    return path


class Progress:
    """Progress of long work on rank 0: a bar on a terminal, a line per ~10% otherwise."""

    def __init__(self, total: int, what: str, enabled: bool = True, stream=None):
        self.total, self.what, self.done = max(1, total), what, 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last_decile = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        elapsed = time.perf_counter() - self.t0
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.what} [{bar:<30}] {self.done}/{self.total} {elapsed:6.1f}s")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(f"{self.what}: {self.done}/{self.total} ({frac:.0%}) {elapsed:.1f}s\n")
            self.stream.flush()
