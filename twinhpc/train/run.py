"""One training run's state and what the loop does with it between steps.

:class:`TrainingRun` is set up once by :func:`~twinhpc.train.loop.train` (data, model,
optimizer, the record, resume) and holds everything the loop shares across its steps. Its
methods are the loop's step-boundary work: read a step's scalars one step late
(:meth:`~TrainingRun.finish_step`, :meth:`~TrainingRun.drain`), checkpoint
(:meth:`~TrainingRun.save`), stop for a requeue (:meth:`~TrainingRun.preempted`), close an
epoch (:meth:`~TrainingRun.end_epoch`) and the run (:meth:`~TrainingRun.final_report`). The
design notes (one-step-late scalars, the per-step all-reduce, bit-identical resume) are in
:mod:`twinhpc.train.loop`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..comm.ddp import DataParallel
from ..comm.engine import Engine
from ..comm.watchdog import fault_point
from ..comm.world import World
from ..config import Job
from ..data.checks import check_labels
from ..data.loader import ShardedLoader
from ..errors import TwinError
from ..io.checkpoint import latest, load_checkpoint, rng_state, save_checkpoint
from ..io.results import ResultsWriter
from ..io.rundir import RunDirError
from ..log import Progress
from .device import resolve_device, to_device
from .evaluate import Evaluation, evaluate, split_loader
from .field import STATS as FIELD_STATS
from .field import FieldTask, metric_from_field_stats
from .losses import batch_stats, make_loss, metric_from_stats, stats_size
from .model import build_model
from .optim import Schedule, improved, make_optimizer
from .rundir import check_checkpoint_space, os_error_text
from .signals import StopSignal

log = logging.getLogger("twinhpc")

#: the parts of a step whose seconds ``/timing`` records
PHASES = ("data_wait", "forward_backward", "communication", "optimizer")
#: ``train.wire_dtype`` → the dtype gradients travel in between the ranks (None: their own)
WIRE_DTYPES = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def attempt_identity(environ=os.environ) -> dict:
    """Who trains: the Slurm job id (``""`` outside Slurm), its restart count
    (``SLURM_RESTART_COUNT``, 0 on the first run of a job) and this host's name."""
    try:
        restart = int(environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        restart = 0
    return {"job_id": environ.get("SLURM_JOB_ID", ""), "restart": restart, "host": socket.gethostname()}


class NonFiniteLoss(TwinError):
    """The loss became NaN or infinite; the message names the step, samples and checkpoint."""


@dataclass
class TrainResult:
    """What :func:`~twinhpc.train.loop.train` returns (on every rank)."""

    run_dir: Path
    status: str  # "finished", "early_stopped", "preempted", "until_epoch" or "complete"
    step: int  # optimizer steps done
    epoch: int  # epochs completed
    metrics: dict = field(default_factory=dict)  # the last epoch's row of /metrics
    checkpoint: Path | None = None  # the newest checkpoint


@dataclass
class LoopState:
    """Where the loop stands; saved in every checkpoint's ``extra`` (JSON values only)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (= epochs completed at its start)
    best: float | None = None  # early stopping: best watched value so far
    bad_epochs: int = 0  # early stopping: epochs since it improved
    # the epoch in progress, so that a run resumed mid-epoch records the same epoch row
    loss_sum: float = 0.0  # Σ of the steps' global mean losses
    steps_in_epoch: int = 0
    metric_stats: list = field(default_factory=list)  # Σ of batch_stats over the epoch
    timing: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    elapsed: float = 0.0  # seconds of training in this epoch before the checkpoint
    best_step: int | None = None  # train.keep_best: the step of the best epoch's checkpoint
    pending_steps: dict = field(default_factory=dict)  # per-step records not yet in results

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
    host never waits for the device in between (see :mod:`twinhpc.train.loop`)."""

    step: int  # its number (1 = the first step of the run)
    epoch: int
    lr: float
    batches: list[int]  # the loader's index of each micro-batch in the epoch
    scalars: HostCopy  # a row per micro-batch: loss, then batch_stats
    timing: dict  # seconds per phase
    time_s: float  # the step's wall time on the host


def step_allreduce(world: World, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` (float64) over the ranks: one ``MPI_Allreduce`` per optimizer step."""
    return world.allreduce_array(values, name="step loss")


class TrainingRun:
    """A training run between its steps: what :func:`~twinhpc.train.loop.train` sets up once and
    its steps share. Set-up is collective over ``world``; so are the methods marked so.

    Parameters
    ----------
    job : the job.
    run_dir : the run directory (results.h5, ckpt/).
    world : the ranks.
    prepared : the preprocessed data, or ``None`` to open the job's.
    resume : start from the newest checkpoint in ``run_dir/ckpt`` when there is one.
    progress : rank 0 shows progress within epochs (``None``: a bar when stderr is a terminal, else a
        line every ``train.progress_seconds``; ``False``: nothing).

    Attributes
    ----------
    job : Job
        The job; ``cfg`` is its ``[train]`` table.
    world : World
        The ranks; ``master_process`` is true on rank 0, which alone writes results and checkpoints.
    run_dir : Path
        Where ``results.h5`` and ``ckpt/step-<N>.h5`` go.
    prep
        The preprocessed data: ``dataset_dir``, ``fields``, ``classes``, ``model_defaults``, ``transform``.
    loader, val_loader : ShardedLoader
        This rank's share of the training split (``per_rank`` samples per micro-batch), and of
        the validation split (every sample covered, :func:`~twinhpc.train.evaluate.split_loader`).
    per_rank : int
        Samples per micro-batch on this rank (``data.batch_size / ranks``).
    accumulate : int
        Micro-batches per optimizer step (``optim.accumulate``).
    steps_per_epoch : int
        Optimizer steps per epoch: ``len(loader) // accumulate``.
    total_steps : int or float
        Steps of the whole run: ``train.epochs`` epochs, or fewer by ``train.max_steps``.
    samples_per_step : int
        Global samples per optimizer step (all ranks, all micro-batches).
    gradient_bytes : int
        Bytes of the trainable parameters' gradients as they travel (``train.wire_dtype``, else
        their own dtype): what a step all-reduces at more than one rank.
    allreduce_bytes : int
        Bytes this rank all-reduces per optimizer step: ``gradient_bytes``, 0 at one rank.
    engine : Engine
        The gradient all-reduce engine (its thread is stopped by :meth:`close`).
    device : torch.device
        Where the model, batches and gradients live (``train.device``).
    on_device : dict
        Extra arguments of ``prep.transform``: ``{"device": device}`` on a GPU (images are
        augmented there), else empty.
    model : DataParallel
        The replica of this rank; ``model.module`` is the plain module that checkpoints hold.
    optimizer : torch.optim.Optimizer
    schedule : Schedule
        The learning rate per step and epoch, and the plateau state.
    loss_fn : callable
        ``(outputs, targets) -> per-sample losses`` (``train.loss``).
    field : FieldTask or None
        The field task's step, objective and metrics (``train.task = "field"``), else ``None``.
    n_out : int
        Model outputs: classes, or regression targets.
    stats_len : int
        Length of a step's training-metric statistics (:func:`~twinhpc.train.losses.stats_size`).
    aug_rng : numpy.random.Generator
        This rank's augmentation generator (seeded ``train.seed + rank``; checkpointed).
    state : LoopState
        Step, epoch, early-stopping counters and the epoch's running sums (checkpointed).
    results : ResultsWriter or None
        The record, on rank 0; ``None`` on the others.
    stop : StopSignal
        The stop-signal flag: one whose handlers :func:`~twinhpc.train.loop.train` installs after
        set-up (until then one that nothing sets).
    pending : PendingStep or None
        The last step done whose scalars are not read yet.
    saved_step : int or None
        The step of the last checkpoint this process wrote, ``None`` before the first.
    show_bar : bool
        Whether this rank shows the epochs' progress (rank 0, unless ``progress`` is False).
    bar : Progress
        The epoch's progress: a bar on a terminal, else a line every ``train.progress_seconds``
        (a silent one before the first epoch).
    row : dict
        The last completed epoch's row of ``/metrics`` (empty before the first).
    last_eval : Evaluation or None
        The last validation of this process, ``None`` before the first.
    """

    def __init__(
        self,
        job: Job,
        run_dir: Path,
        world: World,
        prepared=None,
        *,
        resume: bool = False,
        progress: bool | None = None,
    ):
        self.job, self.world, self.run_dir = job, world, run_dir
        self.master_process = world.rank == 0
        self.cfg = cfg = job.train
        world.stall_timeout = cfg.stall_timeout  # every collective of the run, not only the engine's
        ocfg = job.optim
        self.show_bar = self.master_process and progress is not False

        # -- data: this rank's share of every global batch ------------------------------------
        if prepared is None:
            from ..preprocess import open_prepared

            prepared = world.run(lambda: open_prepared(job))
        self.prep = prep = prepared
        if cfg.task == "classification" and getattr(prep, "label", None) and prep.classes:
            # a label outside the classes would end the first step in the loss, with a traceback
            check_labels(
                world,
                prep.dataset_dir,
                (job.data.train_split, job.data.val_split),
                prep.label,
                len(prep.classes),
                job.data.dataset,
            )
        self.per_rank = job.data.per_rank_batch(world.size)
        self.loader = self.val_loader = self.engine = None
        try:
            self.loader = ShardedLoader(
                prep.dataset_dir,
                job.data.train_split,
                self.per_rank,
                seed=job.data.seed,
                fields=prep.fields,
                policy=job.data.policy,
                prefetch=job.data.prefetch,
                world=world,
            )
            self.val_loader = split_loader(prep.dataset_dir, job.data.val_split, job, world, prep.fields)
            self.accumulate = ocfg.accumulate
            self.steps_per_epoch = len(self.loader) // self.accumulate
            if self.steps_per_epoch == 0:
                raise TwinError(
                    f"optim.accumulate: {self.accumulate} micro-batches per step, but an epoch has "
                    f"only {len(self.loader)} batches of data.batch_size {job.data.batch_size}"
                )
            self.total_steps = min(cfg.max_steps or math.inf, self.steps_per_epoch * cfg.epochs)
            self.samples_per_step = job.data.batch_size * self.accumulate

            # -- model, optimizer, schedule, loss ---------------------------------------------------
            torch.manual_seed(cfg.seed)  # the same initial weights on every rank
            self.engine = Engine(world.comm, stall_timeout=cfg.stall_timeout)
            self.device = resolve_device(cfg.device)
            self.on_device = {"device": self.device} if self.device.type == "cuda" else {}
            self.model = DataParallel(
                build_model(job, prep).to(self.device),
                engine=self.engine,
                bucket_cap_mb=cfg.bucket_cap_mb,
                wire_dtype=WIRE_DTYPES[cfg.wire_dtype],
            )
            wire = WIRE_DTYPES[cfg.wire_dtype]
            self.gradient_bytes = sum(
                p.numel() * (p.element_size() if wire is None or not p.is_floating_point() else wire.itemsize)
                for p in self.model.parameters()
                if p.requires_grad
            )
            self.allreduce_bytes = self.gradient_bytes if world.size > 1 else 0  # DataParallel's buckets
            self.optimizer = make_optimizer(self.model.parameters(), ocfg)
            self.schedule = Schedule(ocfg, self.steps_per_epoch, int(self.total_steps))
            self.loss_fn = make_loss(cfg.task_loss)
            self.field = (
                FieldTask(prep.field, cfg.unroll, cfg.noise, cfg.first_step_weight) if cfg.task == "field" else None
            )
            self.n_out = len(prep.classes) or int(prep.model_defaults.get("classes", 1))
            self.stats_len = len(FIELD_STATS) if self.field is not None else stats_size(cfg.task, self.n_out)
            torch.manual_seed(cfg.seed + world.rank)  # dropout: per rank
            self.aug_rng = np.random.default_rng(cfg.seed + world.rank)  # augmentation: per rank

            # -- the record, and where to start -----------------------------------------------------
            from ..env import startup_report

            environment = startup_report(world)
            self.state = LoopState()
            self.state.start_epoch(self.stats_len)
            world.run(lambda: check_checkpoint_space(job, run_dir, self.model.module) if self.master_process else None)
            checkpoint = latest(run_dir) if resume else None
            info = None
            if checkpoint is not None:
                info = load_checkpoint(
                    checkpoint, self.model.module, self.optimizer, rank=world.rank, generators={"augment": self.aug_rng}
                )
                self.loader.load_state_dict(info["loader"])
                self.state = LoopState(**info["extra"]["loop"])
                self.schedule.load_state_dict(info["extra"]["schedule"])
                log.info("resuming from %s: step %d, epoch %d", checkpoint, self.state.step, self.state.epoch + 1)
            self.results = None
            if self.master_process:
                # the checkpoint is the commit point: its records replace results.h5's (which may
                # be behind it, or ahead of it); a checkpoint without records cuts results.h5 back
                rows = info["results"] if info is not None else None
                self.results = ResultsWriter(
                    run_dir, job.to_json(), environment, resume=info is not None and rows is None, rows=rows
                )
                if info is not None and rows is None:
                    self.results.truncate(epochs=self.state.epoch, step=self.state.step)
            if self.results is not None:  # this process's row of /attempts
                self.results.begin_attempt(**attempt_identity(), ranks=world.size, step=self.state.step)

            self.stop = StopSignal()  # a flag that nothing sets, until train() installs the handlers
            self.pending: PendingStep | None = None
            self.saved_step: int | None = None
            self.bar = Progress(self.steps_per_epoch, "", enabled=False)  # replaced by each epoch's
            self.row: dict = {}
            self.last_eval: Evaluation | None = None
        except BaseException:
            self._abandon()
            raise

    def start_epoch(self, epoch: int):
        """Point the loader at ``epoch`` (its position within it kept, when resumed mid-epoch),
        start the epoch's progress bar; returns the iterator of its micro-batches."""
        self.loader.set_epoch(epoch)
        batches = iter(self.loader)
        done = self.loader.batches_consumed // self.accumulate
        self.bar = Progress(
            self.steps_per_epoch,
            f"epoch {epoch + 1}/{self.cfg.epochs}",
            enabled=self.show_bar,
            interval=self.cfg.progress_seconds,
            done=done,
            per_unit=self.samples_per_step,
            after=max(0, int(self.total_steps) - self.state.step - (self.steps_per_epoch - done)),
            log=log,
        )
        return batches

    def next_batch(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch as model input and targets on the run's device: transformed
        (normalised, augmented from :attr:`aug_rng`) as training data."""
        batch = next(batches)
        x, y = self.prep.transform(batch, train=True, rng=self.aug_rng, **self.on_device)
        return to_device(x, self.device), to_device(y, self.device)

    def forward(self, x, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(outputs, targets, loss)`` of a micro-batch: the model's outputs, what they are
        compared with, and the mean loss (the field task's: the ``train.unroll`` predicted states
        of every chain, :meth:`FieldTask.forward <twinhpc.train.field.FieldTask.forward>`)."""
        if self.field is not None:
            return self.field.forward(self.model, x)
        outputs = self.model(x)
        return outputs, y, self.loss_fn(outputs, y).mean()

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training metric's statistics of a micro-batch (float64, summed over the epoch)."""
        if self.field is not None:
            return self.field.stats(outputs, targets)
        return batch_stats(self.cfg.task, outputs.float(), targets, self.n_out)

    def record(self) -> dict:
        """What a checkpoint records besides the loop: for a field task the fitted normalisation
        and the model's data-given structure (``field``), so that the checkpoint alone rolls out
        (:mod:`twinhpc.train.rollout`)."""
        if self.field is None:
            return {}
        arrays, settings = self.prep.field.state()
        return {
            "field": {
                "settings": settings,
                "stats": {k: np.asarray(v).tolist() for k, v in arrays.items()},
                "model_defaults": dict(self.prep.model_defaults),
            }
        }

    def save(self, epoch: int) -> Path | None:
        """Collective. Every rank gathers its RNG states to rank 0, which writes the checkpoint
        of the current step (``epoch``: the epoch the loader resumes in) and flushes results.h5;
        returns the checkpoint's path on every rank. A failed write (a full disk, an unwritable
        run directory) raises the same error on every rank, naming rank 0."""
        state = self.state
        self.saved_step = state.step
        states = self.world.gather(rng_state({"augment": self.aug_rng}), name="checkpoint: RNG states")
        fault_point("checkpoint")  # a test hook (TWINHPC_FAULT); nothing otherwise
        path, error = None, None
        if self.results is not None:  # rank 0
            # the commit: the checkpoint holds the records; results.h5 follows from the same ones
            try:
                path = save_checkpoint(
                    self.run_dir,
                    step=state.step,
                    epoch=epoch,
                    model=self.model.module,
                    optimizer=self.optimizer,
                    loader=self.loader.state_dict(),
                    rng=states,
                    extra={"loop": asdict(state), "schedule": self.schedule.state_dict(), **self.record()},
                    keep=self.cfg.keep_checkpoints,
                    protect=() if state.best_step is None else (state.best_step,),
                    config=self.job.to_json(),
                    results=self.results.rows(),
                )
            except OSError as e:
                error = (
                    f"cannot write checkpoint {self.run_dir}/ckpt/step-{state.step}.h5 ({os_error_text(e)}); "
                    f"nothing of it was kept, the run's last complete checkpoint is "
                    f"{latest(self.run_dir) or 'none'} (free space or fix the directory, then --resume)"
                )
            if error is None:
                error = self._flush_error()
        self.world.check(error, RunDirError, name="checkpoint: write")  # names rank 0
        return self.world.bcast(path, name="checkpoint: path")

    def _flush_error(self) -> str | None:
        """Rank 0: flush results.h5; the error message when it cannot be written."""
        try:
            self.results.flush()
        except OSError as e:
            return (
                f"cannot write {self.results.path} ({os_error_text(e)}); it holds the previous flush, "
                f"and --resume rebuilds it from the newest checkpoint ({latest(self.run_dir) or 'none'})"
            )
        return None

    def flush_results(self) -> None:
        """Collective. Rank 0 writes results.h5; an error there ends every rank with one message."""
        error = self._flush_error() if self.results is not None else None
        self.world.check(error, RunDirError, name="results: flush")  # names rank 0

    def finish_step(self, step: PendingStep) -> bool:
        """Collective. Read ``step``'s loss and statistics, sum them over the ranks (with the NaN
        and stop flags), raise :class:`NonFiniteLoss` on a non-finite loss, record the step;
        True when a rank got a stop signal."""
        state, accumulate = self.state, self.accumulate
        local = np.zeros(3 + self.stats_len)  # loss, non-finite, stop flag, metric stats
        bad_batch = None
        for batch_index, values in zip(step.batches, step.scalars.read()):
            value = float(values[0])
            if not math.isfinite(value) and bad_batch is None:
                bad_batch = (batch_index, value)
            local[0] += value / accumulate
            local[3:] += values[1:]
        local[1] = bad_batch is not None
        local[2] = self.stop.received is not None
        fault_point("step_loss")
        total = step_allreduce(self.world, local)  # loss, flags, metric statistics: summed
        if total[1] > 0:
            self.raise_non_finite(step, bad_batch)
        step_loss = total[0] / self.world.size
        state.loss_sum += step_loss
        state.steps_in_epoch += 1
        state.metric_stats = list(np.asarray(state.metric_stats) + total[3:])
        for k, v in step.timing.items():
            state.timing[k] += v
        self.bar.update()
        if step.step % self.cfg.log_every == 0:
            log.debug("step %d: loss %.6g lr %.6g %.3fs", step.step, step_loss, step.lr, step.time_s)
            if self.results is not None:
                self.results.append_steps(
                    {
                        "step": [step.step],
                        "loss": [step_loss],
                        "lr": [step.lr],
                        "step_time_s": [step.time_s],
                        **{f"{phase}_s": [seconds] for phase, seconds in step.timing.items()},
                        "allreduce_bytes": [self.allreduce_bytes],
                        "gradient_bytes": [self.gradient_bytes],
                    }
                )
        return total[2] > 0

    def drain(self) -> bool:
        """Collective. Finish the pending step, if any (:meth:`finish_step`); True when a rank
        got a stop signal."""
        stopping, self.pending = (self.finish_step(self.pending) if self.pending is not None else False), None
        return stopping

    def preempted(self, checkpoint: Path | None, epoch: int) -> TrainResult:
        """The result of a run stopped by a signal after writing ``checkpoint`` in ``epoch``."""
        log.warning(
            "stop signal: checkpoint %s written at step %d (epoch %d); exiting for a requeue",
            checkpoint,
            self.state.step,
            epoch + 1,
        )
        self.end_attempt("preempted")
        return TrainResult(self.run_dir, "preempted", self.state.step, self.state.epoch, self.row, checkpoint)

    def end_epoch(self, epoch: int, lr: float, t_epoch: float) -> None:
        """Collective. Close ``epoch`` (whose training began at ``time.perf_counter()`` value
        ``t_epoch``, the learning rate of its last step ``lr``): validate, log and record its row
        of ``/metrics`` (:attr:`row`), update the plateau schedule and the early-stopping
        counters, and advance :attr:`state` to the next epoch."""
        cfg, state = self.cfg, self.state
        self.loader.set_epoch(epoch + 1)
        train_time = time.perf_counter() - t_epoch
        self.last_eval = self.validate()
        metric = cfg.task_metric
        stats = np.asarray(state.metric_stats)
        row = self.row = {
            "loss": state.loss_sum / max(1, state.steps_in_epoch),
            metric: metric_from_field_stats(metric, stats)
            if self.field is not None
            else metric_from_stats(metric, stats, self.n_out),
            **self.last_eval.metrics(),
            "lr": lr,
            "epoch_time_s": time.perf_counter() - t_epoch,
            "samples_per_s": state.steps_in_epoch * self.samples_per_step / max(train_time, 1e-9),
        }
        log.info(
            "epoch %d/%d - %d steps - loss: %.4g - %s: %.4g - val_loss: %.4g - val_%s: %.4g - %.1fs - %.0f samples/s",
            epoch + 1,
            cfg.epochs,
            state.steps_in_epoch,
            row["loss"],
            metric,
            row[metric],
            row["val_loss"],
            metric,
            row[f"val_{metric}"],
            row["epoch_time_s"],
            row["samples_per_s"],
        )
        if self.results is not None:
            self.results.append_epoch(row, timing=dict(state.timing))
        es = cfg.early_stopping
        watched = row[es.metric]
        self.schedule.end_epoch(watched, es.direction, es.min_delta)
        if state.best is None or improved(watched, state.best, es.direction, es.min_delta):
            state.best, state.bad_epochs = watched, 0
            if cfg.keeps_best:
                state.best_step = state.step  # its checkpoint is written at this epoch's end
        else:
            state.bad_epochs += 1
        state.epoch += 1
        state.start_epoch(self.stats_len)

    def stopped_early(self) -> bool:
        """Early stopping's patience is used up (``train.early_stopping``)."""
        es = self.cfg.early_stopping
        return bool(es.patience) and self.state.bad_epochs >= es.patience

    def validate(self) -> Evaluation:
        """Collective. Re-align the BatchNorm statistics to rank 0's, then evaluate the model on
        the validation split."""
        self.model.broadcast_state()  # BatchNorm statistics: rank 0's everywhere
        return evaluate(
            self.model.module,
            self.val_loader,
            self.prep.transform,
            self.job,
            self.world,
            tuple(self.prep.classes),
            field=self.field,
        )

    def final_report(self, status: str) -> TrainResult:
        """Collective. Validate the final model when this process has not (a run resumed after
        its last epoch), write ``/report`` and flush results.h5; the run's result."""
        if self.last_eval is None:
            self.last_eval = self.validate()
        newest = self.world.bcast(latest(self.run_dir) if self.master_process else None, name="report: checkpoint")
        if self.results is not None:
            which = {
                "checkpoint": str(Path(newest).relative_to(self.run_dir)) if newest else "",
                "checkpoint_step": self.state.step,
            }
            if self.state.best_step is not None:
                which["best_checkpoint"] = f"ckpt/step-{self.state.best_step}.h5"
            self.results.write_report({**self.last_eval.report(), **which})
            self.results.end_attempt(status, self.state.step)
        self.flush_results()
        return TrainResult(self.run_dir, status, self.state.step, self.state.epoch, self.row, newest)

    def until_epoch(self) -> TrainResult:
        """Collective. The result of a run stopped by ``--until-epoch`` at the end of an epoch
        whose checkpoint is written: its attempt ends (``until_epoch``), results.h5 is flushed
        and no report is written (the run is not over)."""
        if self.results is not None:
            self.results.end_attempt("until_epoch", self.state.step)
        self.flush_results()
        newest = self.world.bcast(latest(self.run_dir) if self.master_process else None, name="until: checkpoint")
        return TrainResult(self.run_dir, "until_epoch", self.state.step, self.state.epoch, self.row, newest)

    def end_attempt(self, reason: str) -> None:
        """Rank 0: close this process's row of ``/attempts`` with ``reason`` at the current step
        and flush results.h5 (a failure to write is logged: the run is ending anyway)."""
        if self.results is None:
            return
        self.results.end_attempt(reason, self.state.step)
        try:
            self.results.flush()
        except Exception as e:  # the error that ends the run matters more than this record
            log.warning("could not record the attempt's end (%s) in %s: %s", reason, self.results.path, e)

    def raise_non_finite(self, step: PendingStep, bad_batch: tuple[int, float] | None) -> None:
        """Collective: raise :class:`NonFiniteLoss` on every rank, naming the ranks whose loss in
        ``step`` was not finite (``bad_batch``: this rank's first such micro-batch and its loss),
        their batch's global sample indices, and the last good checkpoint."""
        world, run_dir = self.world, self.run_dir
        message = None
        if bad_batch is not None:
            index, value = bad_batch
            samples = self.loader.indices(step.epoch)[index * self.per_rank : (index + 1) * self.per_rank]
            message = (
                f"loss is {value} at optimizer step {step.step} (epoch {step.epoch + 1}, batch {index + 1}); "
                f"samples {samples.tolist()} of split {self.job.data.train_split!r}"
            )
        good = world.bcast(
            str(latest(run_dir)) if world.rank == 0 and latest(run_dir) else None, name="nan: checkpoint"
        )
        errors = world.allgather(message, name="nan: ranks")
        where = "; ".join(f"rank {r}: {m}" for r, m in enumerate(errors) if m)
        raise NonFiniteLoss(f"{where}; last good checkpoint: {good or 'none (nothing saved yet)'}")

    def _abandon(self) -> None:
        """After a failed set-up: stop the loaders' threads and release the engine without a
        collective (the other ranks may not have failed, or not at the same point)."""
        for part in (self.loader, self.val_loader):
            if part is not None:
                part.close()
        if self.engine is not None:
            self.engine.abandon()

    def close(self) -> None:
        """Restore the signal handlers, stop the engine's and the loaders' threads.

        Collective (the engine's close), except on an error that this rank raised alone
        (:meth:`World.agreed <twinhpc.comm.world.World.agreed>` says no): the other ranks are not
        coming, so only this process's part is released."""
        self.stop.restore()
        self.model.close()
        error = sys.exception()
        if error is not None and not self.world.agreed(error):
            self.engine.abandon()
        else:
            self.engine.close()
        self.loader.close()
        self.val_loader.close()
