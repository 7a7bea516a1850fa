"""``twinhpc report RUN|SWEEP``."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Summarise a training run or a sweep.

RUN (a run directory, or its results.h5): the per-epoch metrics, the best and last epochs, the
final validation report (accuracy, loss, per-class precision/recall/F1; or MAE/RMSE/R²) and the
timing breakdown, read from RUN/results.h5 (docs/results-format.md). Writes PNG plots beside it,
titled with the run's name: loss.png (per epoch and per recorded step), metric.png, lr.png,
confusion.png (classification) and timing.png.

SWEEP (a folder holding sweep.h5, or that file): the sweep's settings (strategy, scheduler and
rungs, metric and direction, trials done, utilisation, epochs trained of the budget), a
leaderboard (each trial's values, its metric at every rung, epochs, status and wall time; ranked
by the highest rung reached, then the metric there; failed trials last with their error and
log) and the decisions per rung (docs/sweep-report.md). Writes SWEEP/best.toml, the best trial's
job for `twinhpc train` (train.epochs = the sweep's max_epochs, train.out =
runs/<sweep folder name>-best), and PNG plots into SWEEP/report/: metric_vs_epochs.png and
param_<key>.png for each searched key.

Both work while the run or the sweep is going on.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="summary and plots of a training run or a sweep",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run", metavar="RUN|SWEEP", help="run directory (or its results.h5), or sweep folder (or its sweep.h5)"
    )
    p.add_argument("--no-plots", action="store_true", help="print the summary only, write no PNG")
    p.add_argument("--json", action="store_true", help="a sweep: print the report as JSON (NaN as null)")
    return p


def run(args) -> int:
    from ..errors import TwinError
    from ..report.sweep import sweep_directory

    if sweep_directory(args.run) is not None:
        from ..report.sweep import sweep_report

        rep = sweep_report(args.run, plot=not args.no_plots)
        print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.text(), flush=True)
        return 0
    if args.json:
        raise TwinError(f"--json: {args.run} is not a sweep folder (no sweep.h5); --json reports a sweep")
    from ..report import report

    text, _ = report(args.run, plot=not args.no_plots)
    print(text)
    return 0
