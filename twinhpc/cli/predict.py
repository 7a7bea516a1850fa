"""``twinhpc predict JOB.toml [--run RUN] [--checkpoint best|last|PATH] --input DATASET --out PRED.h5``."""

from __future__ import annotations

import argparse

from .main import add_checkpoint_choice, add_common, add_overrides, setup_logging_for

DESCRIPTION = """\
Predict every sample of a dataset's split (default: data.test_split, else its only split) with a
trained checkpoint: RUN's newest (--checkpoint last, the default), its best epoch's
(--checkpoint best) or a file (--checkpoint PATH); RUN defaults to the job's train.out. DATASET
is a dataset written by `twinhpc ingest` with the fields of the job's data.dataset (the label
may be missing); it is preprocessed per batch with the job's fitted state. The ranks predict
disjoint parts; rank 0 writes PRED.h5 atomically, rows in the split's stored order: /index,
/output (logits or values), /prediction (class), /target (if labelled).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="predict a dataset with a trained checkpoint into PRED.h5",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file")
    add_checkpoint_choice(p)
    p.add_argument("--input", required=True, metavar="DATASET", help="dataset directory to predict")
    p.add_argument("--split", help="split of DATASET (default: data.test_split, else its only split)")
    p.add_argument("--out", required=True, metavar="PRED.h5", help="predictions file to write")
    add_overrides(p)
    add_common(p)
    return p


def run(args) -> int:
    from ..comm.world import get_world
    from ..config import load_job
    from ..train.loop import run_directory
    from ..train.predict import CHOICES, predict

    world = get_world()
    setup_logging_for(args, world)
    job = world.run(lambda: load_job(args.job, args.overrides))
    run_dir = args.run or (None if args.checkpoint not in (None, *CHOICES) else run_directory(job))
    out = predict(job, run_dir, args.input, args.out, checkpoint=args.checkpoint, split=args.split, world=world)
    if world.is_root:
        print(f"wrote {out}", flush=True)
    return 0
