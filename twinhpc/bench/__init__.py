"""Benchmarks: ``twinhpc bench NAME`` and ``benchmarks/NAME.py`` call ``twinhpc.bench.NAME``.

Each benchmark is a collective Python function that measures, gathers the figures on rank 0 and
writes them as a new record ``FOLDER/NAME/<time>-<commit>.h5``
(:func:`twinhpc.io.bench_results.write_results`). :mod:`.targets` declares every benchmark's
targets, :mod:`.report` renders the benchmark page from the records (``twinhpc bench report``).
The helpers here are what every benchmark shares: medians over repeated rounds (these machines
are noisy) and plain text tables.
"""

from __future__ import annotations

import statistics
from typing import Any


def median(values) -> float:
    return float(statistics.median(values))


def format_table(rows: list[dict[str, Any]], formats: dict[str, str]) -> str:
    """A plain text table: one column per key of ``formats`` (its value: the format spec)."""
    cells = [[k for k in formats]] + [
        [format(r[k], f) if not isinstance(r[k], str) else r[k] for k, f in formats.items()] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(formats))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)
