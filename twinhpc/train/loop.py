"""The training loop: one job file in, ``RUN/results.h5`` and ``RUN/ckpt/*.h5`` out.

Read :func:`train` top to bottom: set-up (data, model, optimizer, resume), then epochs of
optimizer steps, then the final report. What the steps share, and the work between them
(reading a step's scalars, checkpoints, the end of an epoch), is a
:class:`~twinhpc.train.run.TrainingRun`; the model comes from :mod:`twinhpc.train.model`.
The same code runs as one process, under ``mpirun -n N`` and under ``srun``;
``master_process`` (rank 0) alone prints, writes results.h5 and checkpoints.

::

    from twinhpc.config import load_job
    from twinhpc.train import train
    result = train(load_job("jobs/digits.toml"), out="runs/digits")   # collective
    result.status            # "finished", "early_stopped" or "preempted"

Note:
    *Data parallelism.* Every rank holds a replica (:class:`~twinhpc.comm.ddp.DataParallel`, also
    at one rank) and reads ``data.batch_size / ranks`` samples per micro-batch. A step is
    ``optim.accumulate`` micro-batches: all but the last run backward inside ``no_sync()``, the
    last one's ``synchronize()`` averages the summed gradients over the ranks, then clipping
    and the optimizer step run identically on every rank. An epoch has
    ``len(loader) // accumulate`` steps; the few micro-batches left over are skipped.

    *One small all-reduce per step* (:func:`~twinhpc.train.run.step_allreduce`) carries this
    rank's loss, whether it was finite, whether a stop signal arrived, and the statistics of
    the training metric. So every rank knows the global loss, stops together on NaN/inf or on
    SIGUSR2/SIGTERM (:mod:`twinhpc.train.signals`), and adds up the same numbers in the same
    order — which keeps a resumed run's records bit-identical.

    *Read one step late.* A step's loss and statistics stay on the device (a
    :class:`~twinhpc.train.run.PendingStep`, copied to pinned memory without waiting) and are
    read and all-reduced during the next step, after its backward and gradient synchronize; the
    epoch's last step, and any step before a checkpoint, is read at once. So on a GPU the host
    queues step k+1 while the device still runs step k, as a plain PyTorch loop does, instead of
    waiting for the device every step. The price: a non-finite loss at step k is found after
    step k's optimizer update (the run stops in step k+1, naming step k, its samples and the
    last checkpoint, which never holds an unchecked step), and a stop signal is acted on at the
    end of the step after the one in which it arrived.

    *Bit-identical resume on CPU.* A checkpoint holds everything that decides what happens next:
    model and optimizer tensors, the loader position (mid-epoch), every rank's RNG states
    (torch for dropout, the numpy generator of the augmentation), the step, the schedule state,
    early-stopping counters and the running sums of the epoch in progress. Validation reads
    no random numbers. BatchNorm running statistics, which ranks update on their own, are
    re-aligned from rank 0 (``broadcast_state``) before every validation; a checkpoint saves
    rank 0's, and a resumed run starts from them on every rank, which changes only the other
    ranks' statistics until the next re-alignment.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from ..comm.watchdog import fault_point
from ..comm.world import World, get_world
from ..config import Job
from ..errors import TwinError
from ..log import ensure_logging
from .evaluate import autocast
from .optim import clip_gradients
from .run import PHASES, HostCopy, PendingStep, TrainingRun, TrainResult
from .rundir import open_run
from .signals import StopSignal

log = logging.getLogger("twinhpc")


def run_directory(job: Job, out=None) -> Path:
    """``--out``, else ``train.out`` (``runs/<job file name>`` when the file names none)."""
    where = out or job.train.out
    if not where:
        raise TwinError("train.out: no run directory (give --out RUN or set train.out)")
    return Path(where)


def train(
    job: Job,
    out=None,
    *,
    resume: bool = False,
    world: World | None = None,
    prepared=None,
    progress: bool | None = None,
    force_unlock: bool = False,
    until_epoch: int | None = None,
) -> TrainResult:
    """Train ``job``'s model; collective over ``world``.

    Parameters
    ----------
    job : the job (:func:`twinhpc.config.load_job`).
    out : the run directory (default ``train.out``).
    resume : continue from the newest checkpoint in ``RUN/ckpt`` (from scratch when there is
        none, so a requeued job can always pass it). Without it, a directory that holds a run is
        refused; with it, settings that differ from the run's (but those of
        :data:`~twinhpc.train.rundir.MAY_CHANGE`) and another rank count are refused, and a
        complete run is left as it is (status ``"complete"``).
    world : the ranks (default: ``COMM_WORLD``).
    prepared : the preprocessed data (default ``twinhpc.preprocess.open_prepared(job)``): an
        object with ``dataset_dir``, ``fields``, ``classes``, ``model_defaults`` and
        ``transform(batch, train, rng) -> (x, y)``.
    progress : rank 0 shows progress within epochs: a bar when stderr is a terminal, else a line
        every ``train.progress_seconds`` (default); ``False``: nothing.
    force_unlock : take ``RUN/twinhpc.lock`` even when another process holds it (for a holder
        that is gone but cannot be proven so: another host).
    until_epoch : stop once epoch ``until_epoch``'s records and checkpoint are committed (status
        ``"until_epoch"``); the run is still trained as its job says (``train.epochs`` stays the
        length of the learning-rate schedule), so ``--resume`` continues it exactly. A resumed
        run already at that epoch or beyond is left as it is (status ``"complete"``).

    Returns
    -------
    TrainResult
        ``status`` is ``"preempted"`` when a signal stopped the run after a checkpoint,
        ``"complete"`` when a resumed run had nothing left to do (nothing was written),
        ``"until_epoch"`` when it stopped at ``until_epoch`` before its end.

    Raises
    ------
    NonFiniteLoss
        On every rank, naming the step, the ranks and their samples, and the last good checkpoint.
    TwinError
        For a bad job, data or checkpoint (naming the key, file or rank), a run directory that
        another process holds or that cannot be written.
    """
    # -- claim the run directory (rundir.py), then set up (TrainingRun) ------------------------
    world = world or get_world()
    ensure_logging(world.rank)  # a program that set up no logging sees the CLI's lines
    if until_epoch is not None and until_epoch < 1:
        raise TwinError(f"--until-epoch: {until_epoch} is not an epoch (1 or more)")
    start = open_run(
        job, run_directory(job, out), world, resume=resume, force_unlock=force_unlock, until_epoch=until_epoch
    )
    try:
        if start.complete is not None:
            return TrainResult(start.run_dir, "complete", start.complete["step"], start.complete["epoch"])
        run = TrainingRun(job, start.run_dir, world, prepared, resume=resume, progress=progress)
        return _train(job, world, run, until_epoch)
    finally:
        start.release()


def _train(job: Job, world: World, run: TrainingRun, until_epoch: int | None = None) -> TrainResult:
    """The loop of :func:`train` over a set-up :class:`TrainingRun` (closed on return); it stops
    after epoch ``until_epoch`` (its checkpoint written) when that comes before the run's end."""
    cfg, state, loader, model, optimizer = job.train, run.state, run.loader, run.model, run.optimizer
    accumulate, status = run.accumulate, "finished"
    last_epoch = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    run.stop = StopSignal.install()  # before the line below: a test waits for it to send a signal
    log.info(
        "training %s on %d rank(s): %d steps per epoch of %d samples, %d epoch(s), run %s",
        job.model.name,
        world.size,
        run.steps_per_epoch,
        run.samples_per_step,
        cfg.epochs,
        run.run_dir,
    )
    try:
        model.train()
        # an epoch whose steps are all done is still closed (validated, recorded) when the run
        # resumes from a checkpoint of its last step
        while (
            state.epoch < last_epoch
            and (state.step < run.total_steps or state.steps_in_epoch > 0)
            and not run.stopped_early()
        ):
            epoch = state.epoch
            batches = run.start_epoch(epoch)
            t_epoch = time.perf_counter() - state.elapsed
            lr = run.schedule.lr(state.step, epoch)
            while loader.batches_consumed < run.steps_per_epoch * accumulate and state.step < run.total_steps:
                t_step = time.perf_counter()
                lr = run.schedule.apply(optimizer, state.step, epoch)
                timing = dict.fromkeys(PHASES, 0.0)
                scalars, batch_indices = [], []
                for micro in range(accumulate):
                    t0 = time.perf_counter()
                    x, y = run.next_batch(batches)
                    t1 = time.perf_counter()
                    sync = model.no_sync() if micro < accumulate - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast(cfg.bf16, run.device):
                            outputs, targets, loss = run.forward(x, y)
                        (loss / accumulate).backward()
                    # the loss and the metric statistics, copied to the host without waiting
                    scalars.append(
                        torch.cat([loss.detach().double().reshape(1), run.batch_stats(outputs.detach(), targets)])
                    )
                    batch_indices.append(loader.batches_consumed - 1)
                    timing["data_wait"] += t1 - t0
                    timing["forward_backward"] += time.perf_counter() - t1
                fault_point("step")  # a test hook (TWINHPC_FAULT); nothing otherwise
                t0 = time.perf_counter()
                model.synchronize()  # gradients: the average over the ranks
                # the previous step's scalars: on a GPU read while the device runs this step
                stopping = run.drain()
                timing["communication"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                clip_gradients(model.parameters(), job.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                timing["optimizer"] = time.perf_counter() - t0
                state.step += 1
                run.pending = PendingStep(
                    state.step, epoch, lr, batch_indices, HostCopy(scalars), timing, time.perf_counter() - t_step
                )
                # -- checkpoint, and stop on a signal ----------------------------------------
                every = cfg.checkpoint_every
                if stopping or (every != "epoch" and state.step % every == 0):
                    stopping = run.drain() or stopping  # a checkpoint holds only checked steps
                    state.elapsed = time.perf_counter() - t_epoch
                    checkpoint = run.save(epoch)
                    if stopping:
                        return run.preempted(checkpoint, epoch)
            if run.drain():  # the epoch's last step
                state.elapsed = time.perf_counter() - t_epoch
                return run.preempted(run.save(epoch), epoch)

            # -- end of the epoch: validate, record, decide ----------------------------------
            run.end_epoch(epoch, lr, t_epoch)  # the /metrics row, schedule, early-stopping counters; next epoch
            best_now = state.best_step == state.step  # train.keep_best: this epoch is the best
            segment_end = state.epoch >= last_epoch  # --until-epoch: the next segment resumes here
            if cfg.checkpoint_every == "epoch" or state.step >= run.total_steps or best_now or segment_end:
                run.save(state.epoch)
            else:
                run.flush_results()
            if run.stopped_early():
                log.info(
                    "early stopping: %s has not improved for %d epoch(s) (best %.6g)",
                    cfg.early_stopping.metric,
                    state.bad_epochs,
                    state.best,
                )

        # -- the end: checkpoint and final report ---------------------------------------------
        status = "early_stopped" if run.stopped_early() else status
        if run.saved_step != state.step:
            run.save(state.epoch)
        if status == "finished" and state.epoch < cfg.epochs and state.step < run.total_steps:
            log.info("stopped at epoch %d of %d (--until-epoch)", state.epoch, cfg.epochs)
            return run.until_epoch()
        return run.final_report(status)
    except BaseException:
        run.end_attempt("failed")
        raise
    finally:
        run.close()
