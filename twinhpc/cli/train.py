"""``twinhpc train JOB.toml [--out RUN] [--resume] [--set k=v]``."""

from __future__ import annotations

import argparse

from .main import add_common, add_overrides

DESCRIPTION = """\
Train the job's model on its preprocessed data (run `twinhpc preprocess JOB.toml` first).
Data parallel over the ranks of `mpirun -n N` / `srun` (one process works too): data.batch_size
is the global batch, split over the ranks. Rank 0 prints one line per epoch (loss, metric,
val_loss, val_metric, time, samples/s) and, within an epoch, a progress bar on a terminal or
else a line every train.progress_seconds (step, samples/s, ETA); every rank logs to
RUN/logs/twinhpc-train.rank<r>.log. Writes RUN/results.h5 (metrics, timing, final report) and
RUN/ckpt/step-<N>.h5.

RUN belongs to one process at a time (RUN/twinhpc.lock: a second `train` on it is refused,
naming the holder; a lock whose process is gone is replaced). A RUN that holds a run is only
continued with --resume, which refuses settings that differ from the run's (except its length,
logging, checkpoint policy, paths, device and Slurm resources: docs/training.md) and another
rank count, and leaves a complete run as it is (exit 0).

SIGUSR2 or SIGTERM (from the command's start on): the ranks checkpoint after the next step and
exit with status 255 (the requeue status); run the same command with --resume to continue
bit-identically. A signal after the last step changes nothing (exit 0). --resume without a
checkpoint starts from scratch, so a requeued batch script can always pass it. `twinhpc sbatch
JOB.toml` writes a batch script that does this.
Exit status: 0 done (or stopped early, or already complete), 2 an error (a bad job, data,
NaN/inf loss, a refused run directory), 255 preempted.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train the job's model (data parallel over the MPI ranks)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB.toml", help="job file")
    p.add_argument("--out", metavar="RUN", help="run directory (default: train.out, else runs/<job name>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN's newest checkpoint")
    p.add_argument(
        "--force-unlock",
        action="store_true",
        help="take RUN's lock even if another process holds it (only when that process is gone, e.g. on a dead node)",
    )
    p.add_argument("--until-epoch", type=int, metavar="E", help="stop after epoch E (TEMP stand-in: caps train.epochs)")
    add_overrides(p, "optim.lr=0.01")
    add_common(p)
    return p


def run(args) -> int:
    import torch

    from ..comm.world import get_world
    from ..config import load_job
    from ..log import setup_logging
    from ..train.loop import run_directory, train
    from ..train.signals import REQUEUE_EXIT_STATUS

    world = get_world()
    job = world.run(lambda: load_job(args.job, args.overrides))
    if args.until_epoch is not None and args.until_epoch < job.train.epochs:  # TEMP stand-in
        from ..config import override

        job = override(job, {"train.epochs": args.until_epoch}, where="--until-epoch")
    run_dir = run_directory(job, args.out)
    setup_logging(world.rank, args.log_dir or run_dir / "logs", name="twinhpc-train", verbose=args.verbose)
    torch.set_num_threads(job.slurm.cpus_per_task if world.size > 1 else torch.get_num_threads())
    result = train(job, run_dir, resume=args.resume, world=world, force_unlock=args.force_unlock)
    if result.status == "preempted":
        return REQUEUE_EXIT_STATUS
    if result.status == "complete":
        if world.is_root:
            print(
                f"{run_dir}: the run is complete ({result.step} steps, {result.epoch} epoch(s)); nothing to do. "
                f"To train it longer, raise train.epochs (--set train.epochs=N) with --resume; to train anew, "
                f"use another --out",
                flush=True,
            )
        return 0
    if world.is_root:
        print(
            f"{result.status}: {result.step} steps, {result.epoch} epoch(s); results {run_dir / 'results.h5'}, "
            f"checkpoint {result.checkpoint}",
            flush=True,
        )
    return 0
