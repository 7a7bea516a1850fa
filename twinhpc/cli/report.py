"""``twinhpc report RUN``."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Summarise a training run: the per-epoch metrics, the best and last epochs, the final validation
report (accuracy, loss, per-class precision/recall/F1; or MAE/RMSE/R²) and the timing breakdown,
read from RUN/results.h5 (docs/results-format.md). Writes PNG plots beside it: loss.png,
metric.png, confusion.png (classification) and timing.png. Works while the run is training.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="summary and plots of a training run",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run directory (or its results.h5)")
    p.add_argument("--no-plots", action="store_true", help="print the summary only")
    return p


def run(args) -> int:
    from ..report import report

    text, _ = report(args.run, plot=not args.no_plots)
    print(text)
    return 0
