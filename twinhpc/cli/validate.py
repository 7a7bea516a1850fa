"""``twinhpc validate JOB.toml [--run RUN] [--checkpoint best|last|PATH] [--split S] [--horizons H,...]
[--stability-steps N] [--no-plots] [--json]``."""

from __future__ import annotations

import argparse
import json

from .main import add_checkpoint_choice, add_common, add_overrides, setup_logging_for

DESCRIPTION = """\
Evaluate a trained checkpoint on a split of the job's preprocessed data (default
data.val_split), distributed over the ranks: RUN's newest (--checkpoint last, the default), its
best epoch's (--checkpoint best, kept by train.keep_best) or a file (--checkpoint PATH); RUN
defaults to the job's train.out. Prints the report, its first line naming the checkpoint:
loss, accuracy, macro F1 and the confusion matrix with per-class precision/recall/F1
(classification), MAE, RMSE and R2 (regression), or the one-step nRMSE and RMSE (field).
--json prints it as one JSON object.

A field job (train.task = "field", a twin) is also validated by rollouts (docs/twin.md,
"Validating the twin"): on the held-out split (data.test_split when the dataset has it, else
data.val_split; --split), each scenario is rolled out from its true u[0] by the twin and by two
baselines, persistence and a linear model fitted on the training split, and compared with the
truth at the --horizons (saved steps, default 1,10,50, clipped to T) and over the full rollout:
nRMSE of the temperature rise above the ambient T-inf (the figure judged), PDEBench's nRMSE of
the absolute state, RMSE and max error (state units), and the plate's energy balance (its
residual as a fraction of the heat input, for the truth too). Then the stability check: from
each scenario's last true state the twin runs --stability-steps more saved steps (default 500)
with the sources off; the plate then only relaxes toward its edges' and the air's temperature,
so its field must stay within the span of that state, t_edge and T-inf. The twin is reported
UNSTABLE when its state becomes non-finite or leaves that span by more than 10 times the span's
width (it blows up, and cannot follow a stream: twinhpc twin monitor). The scenarios are spread over the ranks.
Rank 0 prints the table, writes it into RUN/results.h5 as /twin_validation and writes
RUN/twin_panels.png (truth, twin and error at the horizons for two scenarios) and
RUN/twin_horizon.png (error against horizon, twin and baselines; --no-plots: none).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "validate",
        help="evaluate a trained checkpoint on a split",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file")
    add_checkpoint_choice(p)
    p.add_argument(
        "--split", help="split to evaluate (default: data.val_split; a field job: data.test_split if present)"
    )
    p.add_argument(
        "--horizons",
        type=_horizons,
        metavar="H,...",
        help="a field job's rollout horizons in saved steps (default 1,10,50; clipped to the trajectories' T)",
    )
    p.add_argument(
        "--stability-steps",
        type=_non_negative,
        metavar="N",
        help="a field job's stability check: saved steps past the data with the forcing off (default 500; 0: none)",
    )
    p.add_argument("--no-plots", action="store_true", help="a field job: write no PNG")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_overrides(p)
    add_common(p)
    return p


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _horizons(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected saved steps like 1,10,50, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"horizons must be integers >= 1, got {text!r}")
    return values


def format_report(report: dict) -> str:
    """The report as text: the headline figures, then a per-class table (classification)."""
    lines = [
        f"{report['split']} split, {report['n']} samples, checkpoint {report['checkpoint']} ({report['which']})",
        f"loss {report['loss']:.4g}",
    ]
    if report["task"] == "classification":
        lines[-1] += f"  accuracy {report['accuracy']:.4f}  macro F1 {report['macro_f1']:.4f}"
        lines.append(f"{'class':>12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
        for i, name in enumerate(report["classes"]):
            lines.append(
                f"{name:>12} {report['precision'][i]:9.4f} {report['recall'][i]:9.4f} "
                f"{report['f1'][i]:9.4f} {report['support'][i]:8d}"
            )
        lines.append("confusion (row: true class, column: predicted):")
        lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in report["confusion"]]
    elif report["task"] == "field":
        lines[-1] += f"  one-step nRMSE {report['nrmse']:.4g}  RMSE {report['rmse']:.4g}"
    else:
        lines[-1] += f"  MAE {report['mae']:.4g}  RMSE {report['rmse']:.4g}  R2 {report['r2']:.4f}"
    return "\n".join(lines)


def run(args) -> int:
    from ..comm.world import get_world
    from ..config import load_job
    from ..train.loop import run_directory
    from ..train.predict import CHOICES, validate

    world = get_world()
    setup_logging_for(args, world)
    job = world.run(lambda: load_job(args.job, args.overrides))
    run_dir = args.run or (None if args.checkpoint not in (None, *CHOICES) else run_directory(job))
    report = validate(
        job,
        run_dir,
        checkpoint=args.checkpoint,
        split=args.split,
        world=world,
        horizons=args.horizons,
        stability_steps=args.stability_steps,
    )
    tv = report.pop("twin_validation", None)
    if world.is_root:
        plain = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in report.items()}
        pngs = []
        if tv is not None and not args.no_plots and report.get("results"):
            from pathlib import Path

            from ..io.results import read_twin_validation
            from ..report.twin import twin_plots

            pngs = twin_plots(read_twin_validation(report["results"]), Path(report["results"]).parent)
        if args.json:
            if tv is not None:
                plain["twin_validation"] = tv.to_dict()
            print(json.dumps(plain), flush=True)
        else:
            text = format_report(report)
            if tv is not None:
                text += "\n\n" + tv.table()
                where = report.get("results") or "not written (no results.h5 in the run directory)"
                text += f"\nresults: {where}" + (f"; plots: {', '.join(str(p) for p in pngs)}" if pngs else "")
            print(text, flush=True)
    return 0
