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


def ensure_logging(rank: int) -> bool:
    """Set up :func:`setup_logging`'s console logging (rank 0 at INFO) when the program has
    configured none, neither on the ``twinhpc`` logger nor on the root logger, so that a program
    calling the Python API (``twinhpc.train.train``) sees the lines the command line prints.
    A program that configured logging keeps its own: the records reach its handlers. Returns
    whether it set anything up."""
    if logging.getLogger(LOGGER).handlers or logging.getLogger().handlers:
        return False
    setup_logging(rank)
    return True


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h03m``: a number of seconds for a person."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of long work on rank 0: a bar on a terminal; otherwise lines, one every
    ``interval`` seconds (with ``interval=None``: one per ~10%).

    Parameters
    ----------
    total : units of work (steps, shards).
    what : the label (``"epoch 3/10"``).
    enabled : draw or print anything at all (rank 0 only, typically).
    stream : where the bar goes (default ``sys.stderr``); a stream that is not a terminal gets lines.
    interval : seconds between two lines off a terminal (``train.progress_seconds``).
    done : units done before this bar started (an epoch resumed part way).
    per_unit : items per unit, e.g. samples per step: the lines then show ``<items>/s``.
    unit : the items' name (``"samples"``).
    after : units still to do once this bar is complete (the later epochs' steps): the lines
        then show the ETA of the whole work as well.
    log : write the lines as INFO records of this logger (console and rank log file alike)
        instead of to ``stream``.
    clock : the time in seconds (``time.perf_counter``; tests pass a fake one).

    A line reads ``epoch 3/10: step 120/440 (27%) - 2776 samples/s - ETA 1m05s, run 9m40s``;
    the rate is that since the bar started, the ETAs assume it holds.
    """

    def __init__(
        self,
        total: int,
        what: str,
        enabled: bool = True,
        stream=None,
        *,
        interval: float | None = None,
        done: int = 0,
        per_unit: int = 0,
        unit: str = "samples",
        after: int = 0,
        log: logging.Logger | None = None,
        clock=time.perf_counter,
    ):
        self.total, self.what, self.done = max(1, total), what, done
        self.enabled, self.interval, self.per_unit, self.unit, self.after = enabled, interval, per_unit, unit, after
        self.stream = stream or sys.stderr
        self.log, self.clock = log, clock
        self.tty = self.enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self._last_line = clock()
        self._start = done
        self._last_decile = int(min(1.0, done / self.total) * 10) if done else -1

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        now = self.clock()
        elapsed = now - self.t0
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.what} [{bar:<30}] {self.done}/{self.total} {elapsed:6.1f}s")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
            return
        if self.interval is not None:
            if now - self._last_line >= self.interval:
                self._last_line = now
                self._line(self.line(now))
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self._line(f"{self.what}: {self.done}/{self.total} ({frac:.0%}) {elapsed:.1f}s")

    def line(self, now: float | None = None) -> str:
        """The progress line as of ``now`` (default: the clock's time)."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self._start) / elapsed  # units per second since the bar started
        parts = [f"{self.what}: step {self.done}/{self.total} ({min(1.0, self.done / self.total):.0%})"]
        if self.per_unit:
            parts.append(f"{rate * self.per_unit:.0f} {self.unit}/s")
        if rate > 0:
            eta = f"ETA {duration(max(0, self.total - self.done) / rate)}"
            if self.after:
                eta += f", run {duration((max(0, self.total - self.done) + self.after) / rate)}"
            parts.append(eta)
        return " - ".join(parts)

    def _line(self, text: str) -> None:
        if self.log is not None:
            self.log.info("%s", text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()
