"""The training loop: one job file in, ``RUN/results.h5`` and ``RUN/ckpt/*.h5`` out.

Read it top to bottom: set-up (data, model, optimizer, resume), then epochs of optimizer steps,
then the final report. The same code runs as one process, under ``mpirun -n N`` and under
``srun``; ``master_process`` (rank 0) alone prints, writes results.h5 and checkpoints.

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

    *One small all-reduce per step* (:func:`step_allreduce`) carries this rank's loss, whether
    it was finite, whether a stop signal arrived, and the statistics of the training metric. So
    every rank knows the global loss, stops together on NaN/inf or on SIGUSR2/SIGTERM
    (:mod:`twinhpc.train.signals`), and adds up the same numbers in the same order — which
    keeps a resumed run's records bit-identical.

    *Read one step late.* A step's loss and statistics stay on the device (a
    :class:`PendingStep`, copied to pinned memory without waiting) and are read and all-reduced
    during the next step, after its backward and gradient synchronize; the epoch's last step,
    and any step before a checkpoint, is read at once. So on a GPU the host queues step k+1
    while the device still runs step k, as a plain PyTorch loop does, instead of waiting for
    the device every step. The price: a non-finite loss at step k is found after step k's
    optimizer update (the run stops in step k+1, naming step k, its samples and the last
    checkpoint, which never holds an unchecked step), and a stop signal is acted on at the end
    of the step after the one in which it arrived.

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
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..comm.ddp import DataParallel
from ..comm.engine import Engine
from ..comm.world import World, get_world
from .device import resolve_device, to_device
from ..config import Job
from ..data.loader import ShardedLoader
from ..errors import TwinError
from ..io.checkpoint import latest, load_checkpoint, rng_state, save_checkpoint
from ..io.results import ResultsWriter
from ..log import Progress
from .evaluate import autocast, evaluate, split_loader
from .losses import batch_stats, make_loss, metric_from_stats, stats_size
from .model import build_model
from .optim import Schedule, clip_gradients, improved, make_optimizer
from .signals import StopSignal

log = logging.getLogger("twinhpc")

PHASES = ("data_wait", "forward_backward", "communication", "optimizer")
WIRE_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLoss(TwinError):
    """The loss became NaN or infinite; the message names the step, samples and checkpoint."""


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    run_dir: Path
    status: str                 # "finished", "early_stopped" or "preempted"
    step: int                   # optimizer steps done
    epoch: int                  # epochs completed
    metrics: dict = field(default_factory=dict)   # the last epoch's row of /metrics
    checkpoint: Path | None = None                # the newest checkpoint


@dataclass
class LoopState:
    """Where the loop stands; saved in every checkpoint's ``extra`` (JSON values only)."""

    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # the epoch in progress (= epochs completed at its start)
    best: float | None = None      # early stopping: best watched value so far
    bad_epochs: int = 0            # early stopping: epochs since it improved
    # the epoch in progress, so that a run resumed mid-epoch records the same epoch row
    loss_sum: float = 0.0          # Σ of the steps' global mean losses
    steps_in_epoch: int = 0
    metric_stats: list = field(default_factory=list)    # Σ of batch_stats over the epoch
    timing: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    elapsed: float = 0.0           # seconds of training in this epoch before the checkpoint
    pending_steps: dict = field(default_factory=dict)   # per-step records not yet in results

    def start_epoch(self, stats_len: int) -> None:
        self.loss_sum, self.steps_in_epoch, self.elapsed = 0.0, 0, 0.0
        self.metric_stats = [0.0] * stats_len
        self.timing = dict.fromkeys(PHASES, 0.0)


class HostCopy:
    """Equal-length 1-D tensors on their way to the host. From a GPU they are copied into pinned
    memory without waiting, and :meth:`read` waits for that copy only (not for work queued
    after it); on the CPU they are read as they are."""

    def __init__(self, tensors: list[torch.Tensor]):
        stacked = torch.stack(tensors)
        self.event = None
        if stacked.is_cuda:
            self.host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            self.host.copy_(stacked, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = stacked

    def read(self) -> np.ndarray:
        """The tensors as the rows of a numpy array."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


@dataclass
class PendingStep:
    """An optimizer step whose update is done (on a GPU: queued) but whose loss and metric
    statistics have not been read yet: the loop reads them during the next step, so that the
    host never waits for the device in between (see the module notes)."""

    step: int                  # its number (1 = the first step of the run)
    epoch: int
    lr: float
    batches: list[int]         # the loader's index of each micro-batch in the epoch
    scalars: HostCopy          # a row per micro-batch: loss, then batch_stats
    timing: dict               # seconds per phase
    time_s: float              # the step's wall time on the host


def run_directory(job: Job, out=None) -> Path:
    """``--out``, else ``train.out`` (``runs/<job file name>`` when the file names none)."""
    where = out or job.train.out
    if not where:
        raise TwinError("train.out: no run directory (give --out RUN or set train.out)")
    return Path(where)


def step_allreduce(world: World, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` (float64) over the ranks: one ``MPI_Allreduce`` per optimizer step."""
    out = np.empty_like(values)
    world.comm.Allreduce(values, out, op=world.MPI.SUM)
    return out


def train(job: Job, out=None, *, resume: bool = False, world: World | None = None, prepared=None,
          progress: bool | None = None) -> TrainResult:
    """Train ``job``'s model; collective over ``world``.

    Parameters
    ----------
    job : the job (:func:`twinhpc.config.load_job`).
    out : the run directory (default ``train.out``).
    resume : continue from the newest checkpoint in ``RUN/ckpt`` (from scratch when there is
        none, so a requeued job can always pass it).
    world : the ranks (default: ``COMM_WORLD``).
    prepared : the preprocessed data (default ``twinhpc.preprocess.open_prepared(job)``): an
        object with ``dataset_dir``, ``fields``, ``classes``, ``model_defaults`` and
        ``transform(batch, train, rng) -> (x, y)``.
    progress : rank 0 draws a progress bar (default: when stderr is a terminal).

    Returns
    -------
    TrainResult
        ``status`` is ``"preempted"`` when a signal stopped the run after a checkpoint.

    Raises
    ------
    NonFiniteLoss
        On every rank, naming the step, the ranks and their samples, and the last good checkpoint.
    TwinError
        For a bad job, data or checkpoint (naming the key, file or rank).
    """
    world = world or get_world()
    master_process = world.rank == 0
    cfg, ocfg = job.train, job.optim
    run_dir = run_directory(job, out)
    show_bar = master_process and (sys.stderr.isatty() if progress is None else progress)

    # -- data: this rank's share of every global batch ------------------------------------
    if prepared is None:
        from ..preprocess import open_prepared

        prepared = world.run(lambda: open_prepared(job))
    prep = prepared
    per_rank = job.data.per_rank_batch(world.size)
    loader = ShardedLoader(prep.dataset_dir, job.data.train_split, per_rank, seed=job.data.seed,
                           fields=prep.fields, policy=job.data.policy, prefetch=job.data.prefetch, world=world)
    val_loader = split_loader(prep.dataset_dir, job.data.val_split, job, world, prep.fields)
    accumulate = ocfg.accumulate
    steps_per_epoch = len(loader) // accumulate
    if steps_per_epoch == 0:
        raise TwinError(f"optim.accumulate: {accumulate} micro-batches per step, but an epoch has "
                        f"only {len(loader)} batches of data.batch_size {job.data.batch_size}")
    total_steps = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
    samples_per_step = job.data.batch_size * accumulate

    # -- model, optimizer, schedule, loss ---------------------------------------------------
    torch.manual_seed(cfg.seed)                       # the same initial weights on every rank
    engine = Engine(world.comm, stall_timeout=cfg.stall_timeout)
    device = resolve_device(cfg.device)
    on_device = {"device": device} if device.type == "cuda" else {}  # images augmented on the GPU
    model = DataParallel(build_model(job, prep).to(device), engine=engine, bucket_cap_mb=cfg.bucket_cap_mb,
                         wire_dtype=WIRE_DTYPES[cfg.wire_dtype])
    optimizer = make_optimizer(model.parameters(), ocfg)
    schedule = Schedule(ocfg, steps_per_epoch, int(total_steps))
    loss_fn = make_loss(cfg.task_loss)
    n_out = len(prep.classes) or int(prep.model_defaults.get("classes", 1))
    stats_len = stats_size(cfg.task, n_out)
    torch.manual_seed(cfg.seed + world.rank)          # dropout: per rank
    aug_rng = np.random.default_rng(cfg.seed + world.rank)   # augmentation: per rank

    # -- the record, and where to start -----------------------------------------------------
    from ..env import startup_report

    environment = startup_report(world)
    state = LoopState()
    state.start_epoch(stats_len)
    checkpoint = latest(run_dir) if resume else None
    results = ResultsWriter(run_dir, job.to_json(), environment, resume=checkpoint is not None) if master_process else None
    if checkpoint is not None:
        info = load_checkpoint(checkpoint, model.module, optimizer, rank=world.rank, generators={"augment": aug_rng})
        loader.load_state_dict(info["loader"])
        state = LoopState(**info["extra"]["loop"])
        schedule.load_state_dict(info["extra"]["schedule"])
        if results is not None:
            results.truncate(epochs=state.epoch, step=state.step)
        log.info("resuming from %s: step %d, epoch %d", checkpoint, state.step, state.epoch + 1)
    stop = StopSignal.install()   # before the line below: a test waits for it to send a signal
    log.info("training %s on %d rank(s): %d steps per epoch of %d samples, %d epoch(s), run %s",
             job.model.name, world.size, steps_per_epoch, samples_per_step, cfg.epochs, run_dir)

    saved_step = None

    def save(epoch_for_loader: int) -> Path | None:
        """Every rank: gather RNG states; rank 0 writes the checkpoint and flushes results."""
        nonlocal saved_step
        saved_step = state.step
        states = world.gather(rng_state({"augment": aug_rng}))
        path = None
        if master_process:
            path = save_checkpoint(run_dir, step=state.step, epoch=epoch_for_loader, model=model.module,
                                   optimizer=optimizer, loader=loader.state_dict(), rng=states,
                                   extra={"loop": asdict(state), "schedule": schedule.state_dict()},
                                   keep=cfg.keep_checkpoints)
            results.flush()
        return world.bcast(path)

    status, last_eval, row = "finished", None, {}
    pending: PendingStep | None = None   # the last step done, its scalars not yet read

    def finish(step: PendingStep) -> bool:
        """Read ``step``'s loss and statistics, sum them over the ranks (with the NaN and stop
        flags), raise on a non-finite loss, record the step; True when a rank got a stop signal.
        Collective."""
        local = np.zeros(3 + stats_len)       # loss, non-finite, stop flag, metric stats
        bad_batch = None
        for batch_index, values in zip(step.batches, step.scalars.read()):
            value = float(values[0])
            if not math.isfinite(value) and bad_batch is None:
                bad_batch = (batch_index, value)
            local[0] += value / accumulate
            local[3:] += values[1:]
        local[1] = bad_batch is not None
        local[2] = stop.received is not None
        total = step_allreduce(world, local)  # loss, flags, metric statistics: summed
        if total[1] > 0:
            raise_non_finite(world, run_dir, loader, step.epoch, step.step - 1, bad_batch, per_rank,
                             job.data.train_split)
        step_loss = total[0] / world.size
        state.loss_sum += step_loss
        state.steps_in_epoch += 1
        state.metric_stats = list(np.asarray(state.metric_stats) + total[3:])
        for k, v in step.timing.items():
            state.timing[k] += v
        bar.update()
        if step.step % cfg.log_every == 0:
            log.debug("step %d: loss %.6g lr %.6g %.3fs", step.step, step_loss, step.lr, step.time_s)
            if results is not None:
                results.append_steps({"step": [step.step], "loss": [step_loss], "lr": [step.lr],
                                      "step_time_s": [step.time_s]})
        return total[2] > 0

    def drain() -> bool:
        """Finish the pending step, if any (before a checkpoint, or at the end of an epoch)."""
        nonlocal pending
        stopping, pending = (finish(pending) if pending is not None else False), None
        return stopping

    def preempted(ckpt: Path, epoch: int, row: dict) -> TrainResult:
        log.warning("stop signal: checkpoint %s written at step %d (epoch %d); exiting for a requeue",
                    ckpt, state.step, epoch + 1)
        return TrainResult(run_dir, "preempted", state.step, state.epoch, row, ckpt)

    try:
        model.train()
        while state.epoch < cfg.epochs and state.step < total_steps:
            epoch = state.epoch
            loader.set_epoch(epoch)
            batches = iter(loader)
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=show_bar)
            bar.done = loader.batches_consumed // accumulate
            t_epoch = time.perf_counter() - state.elapsed
            lr = schedule.lr(state.step, epoch)
            while loader.batches_consumed < steps_per_epoch * accumulate and state.step < total_steps:
                t_step = time.perf_counter()
                lr = schedule.apply(optimizer, state.step, epoch)
                timing = dict.fromkeys(PHASES, 0.0)
                scalars, batch_indices = [], []
                for micro in range(accumulate):
                    t0 = time.perf_counter()
                    batch = next(batches)
                    x, y = prep.transform(batch, train=True, rng=aug_rng, **on_device)
                    x, y = to_device(x, device), to_device(y, device)
                    t1 = time.perf_counter()
                    sync = model.no_sync() if micro < accumulate - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast(cfg.bf16, device):
                            outputs = model(x)
                            loss = loss_fn(outputs, y).mean()
                        (loss / accumulate).backward()
                    # the loss and the metric statistics, copied to the host without waiting
                    scalars.append(torch.cat([loss.detach().double().reshape(1),
                                              batch_stats(cfg.task, outputs.detach().float(), y, n_out)]))
                    batch_indices.append(loader.batches_consumed - 1)
                    timing["data_wait"] += t1 - t0
                    timing["forward_backward"] += time.perf_counter() - t1
                t0 = time.perf_counter()
                model.synchronize()                   # gradients: the average over the ranks
                # the previous step's scalars: on a GPU read while the device runs this step
                stopping = drain()
                timing["communication"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                clip_gradients(model.parameters(), ocfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                timing["optimizer"] = time.perf_counter() - t0
                state.step += 1
                pending = PendingStep(state.step, epoch, lr, batch_indices, HostCopy(scalars), timing,
                                      time.perf_counter() - t_step)
                every = cfg.checkpoint_every
                if stopping or (every != "epoch" and state.step % every == 0):
                    stopping = drain() or stopping     # a checkpoint holds only checked steps
                    state.elapsed = time.perf_counter() - t_epoch
                    ckpt = save(epoch)
                    if stopping:
                        return preempted(ckpt, epoch, row)
            if drain():                               # the epoch's last step
                state.elapsed = time.perf_counter() - t_epoch
                return preempted(save(epoch), epoch, row)

            # -- end of the epoch: validate, record, decide ----------------------------------
            loader.set_epoch(epoch + 1)
            train_time = time.perf_counter() - t_epoch
            model.broadcast_state()                  # BatchNorm statistics: rank 0's everywhere
            last_eval = evaluate(model.module, val_loader, prep.transform, job, world, tuple(prep.classes))
            metric = cfg.task_metric
            row = {"loss": state.loss_sum / max(1, state.steps_in_epoch),
                   metric: metric_from_stats(metric, np.asarray(state.metric_stats), n_out),
                   **last_eval.metrics(), "lr": lr,
                   "epoch_time_s": time.perf_counter() - t_epoch,
                   "samples_per_s": state.steps_in_epoch * samples_per_step / max(train_time, 1e-9)}
            log.info("epoch %d/%d - %d steps - loss: %.4f - %s: %.4f - val_loss: %.4f - val_%s: %.4f "
                     "- %.1fs - %.0f samples/s", epoch + 1, cfg.epochs, state.steps_in_epoch, row["loss"],
                     metric, row[metric], row["val_loss"], metric, row[f"val_{metric}"],
                     row["epoch_time_s"], row["samples_per_s"])
            if results is not None:
                results.append_epoch(row, timing=dict(state.timing))
            es = cfg.early_stopping
            watched = row[es.metric]
            schedule.end_epoch(watched, es.direction, es.min_delta)
            if state.best is None or improved(watched, state.best, es.direction, es.min_delta):
                state.best, state.bad_epochs = watched, 0
            else:
                state.bad_epochs += 1
            state.epoch += 1
            state.start_epoch(stats_len)
            if cfg.checkpoint_every == "epoch" or state.step >= total_steps:
                save(state.epoch)
            elif results is not None:
                results.flush()
            if es.patience and state.bad_epochs >= es.patience:
                log.info("early stopping: %s has not improved for %d epoch(s) (best %.6g)",
                         es.metric, state.bad_epochs, state.best)
                status = "early_stopped"
                break

        # -- the end: checkpoint and final report ---------------------------------------
        if saved_step != state.step:
            save(state.epoch)
        if last_eval is None:   # resumed after the last epoch: validate the final model
            model.broadcast_state()
            last_eval = evaluate(model.module, val_loader, prep.transform, job, world, tuple(prep.classes))
        if results is not None:
            results.write_report(last_eval.report())
            results.flush()
        return TrainResult(run_dir, status, state.step, state.epoch, row, world.bcast(latest(run_dir) if master_process else None))
    finally:
        stop.restore()
        model.close()
        engine.close()
        loader.close()
        val_loader.close()


def raise_non_finite(world: World, run_dir: Path, loader: ShardedLoader, epoch: int, step: int,
                     bad_batch, per_rank: int, split: str) -> None:
    """Collective: raise :class:`NonFiniteLoss` on every rank, naming the ranks whose loss was
    not finite, their batch's global sample indices, and the last good checkpoint."""
    message = None
    if bad_batch is not None:
        index, value = bad_batch
        samples = loader.indices(epoch)[index * per_rank:(index + 1) * per_rank]
        message = (f"loss is {value} at optimizer step {step + 1} (epoch {epoch + 1}, batch {index + 1}); "
                   f"samples {samples.tolist()} of split {split!r}")
    good = world.bcast(str(latest(run_dir)) if world.rank == 0 and latest(run_dir) else None)
    errors = world.allgather(message)
    where = "; ".join(f"rank {r}: {m}" for r, m in enumerate(errors) if m)
    raise NonFiniteLoss(f"{where}; last good checkpoint: {good or 'none (nothing saved yet)'}")
