"""A benchmark's results file ``FOLDER/NAME.h5``: one compound dataset per table, settings and
outcomes as attributes (``h5dump FOLDER/NAME.h5`` shows it).

::

    write_results("bench-results/loader.h5", {"ranks": [{"rank": 0, "samples_per_s": 5e4}, ...]},
                  {"dataset": "data/cifar", "world_size": 2})

Layout::

    /<table>   compound, one row per dict of the table, one column per key (in the first
               row's order): int64 for integers (and booleans), S40 (UTF-8) for strings,
               float64 for the rest
    /          attrs: the caller's attributes, then twinhpc_version and (unless left out)
               created (UTC, ISO 8601, seconds)

``docs/loader.md`` and ``docs/allreduce.md`` list the tables and attributes of ``twinhpc bench``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .atomic import writing

#: bytes of a string column (longer strings are cut by numpy)
STRING_BYTES = 40


def _column(value: Any) -> str | type[np.generic]:
    if isinstance(value, str):
        return f"S{STRING_BYTES}"
    return np.int64 if isinstance(value, (int, np.integer)) else np.float64


def table_array(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Rows (dicts with the same keys in the same order) as a numpy structured array; the
    column types follow the first row's values (see the module docstring)."""
    dtype = [(k, _column(v)) for k, v in rows[0].items()]
    return np.array([tuple(v.encode() if isinstance(v, str) else v for v in r.values()) for r in rows], dtype=dtype)


def write_results(
    path: str | os.PathLike[str],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    attrs: Mapping[str, Any],
    *,
    created: bool = True,
) -> Path:
    """Write the results file ``path`` atomically (a temporary name in the same folder, then
    renamed over it): one compound dataset per table (:func:`table_array`) and the attributes
    ``attrs``, then ``twinhpc_version`` and, with ``created``, the time of writing.

    Call on one rank only.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TwinError
        Naming the folder (as ``--results FOLDER``) when it cannot be created or written; no
        temporary file is left behind.
    """
    import h5py

    path = Path(path)
    stamp: dict[str, Any] = {"twinhpc_version": __version__}
    if created:
        stamp["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

    def cannot_write(e: OSError) -> str:
        return f"--results {path.parent}: cannot write {path.name} ({e.strerror or e})"

    with writing(path, cannot_write) as tmp, h5py.File(tmp, "w") as f:
        for name, rows in tables.items():
            f.create_dataset(name, data=table_array(rows))
        for key, value in {**attrs, **stamp}.items():
            f.attrs[key] = value
    return path
