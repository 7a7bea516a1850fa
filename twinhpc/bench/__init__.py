"""Benchmarks: ``twinhpc bench NAME`` and ``benchmarks/NAME.py`` call ``twinhpc.bench.NAME``.

Each benchmark is a collective Python function that measures, gathers the figures on rank 0 and
writes them to ``FOLDER/NAME.h5``. The helpers here are what every benchmark shares: medians over
repeated rounds (these machines are noisy) and the atomic write of a results file.
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import TwinError


def median(values) -> float:
    return float(statistics.median(values))


def table_array(rows: list[dict[str, Any]]) -> np.ndarray:
    """Rows of numbers (same keys in the same order) as a numpy structured array."""
    dtype = [(k, np.int64 if isinstance(v, (int, np.integer)) else np.float64) for k, v in rows[0].items()]
    return np.array([tuple(r.values()) for r in rows], dtype=dtype)


def write_results(path: str | os.PathLike, tables: dict[str, list[dict[str, Any]]], attrs: dict[str, Any]) -> Path:
    """Write ``path`` atomically (temporary name, then ``os.replace``): one compound dataset per
    table (one row per dict) and the attributes ``attrs``, plus the twinhpc version and time.

    Call on one rank only. A folder that cannot be created or written raises
    :class:`TwinError` naming it.
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            for name, rows in tables.items():
                f.create_dataset(name, data=table_array(rows))
            for key, value in {**attrs, "twinhpc_version": __version__,
                               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}.items():
                f.attrs[key] = value
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TwinError(f"--results {path.parent}: cannot write {path.name} ({e.strerror or e})") from None
    return path


def format_table(rows: list[dict[str, Any]], formats: dict[str, str]) -> str:
    """A plain text table: one column per key of ``formats`` (its value: the format spec)."""
    cells = [[k for k in formats]] + [[format(r[k], f) if not isinstance(r[k], str) else r[k]
                                       for k, f in formats.items()] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(formats))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)
