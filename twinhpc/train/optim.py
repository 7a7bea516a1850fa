"""Optimizers, learning-rate schedules and gradient clipping from ``[optim]``.

::

    opt = make_optimizer(model.parameters(), job.optim)
    schedule = Schedule(job.optim, steps_per_epoch, total_steps)
    for ...:
        schedule.apply(opt, step, epoch)           # before every optimizer step
        clip_gradients(model.parameters(), job.optim.grad_clip)
        opt.step()
    schedule.end_epoch(val_metric, better)         # plateau only; no-op otherwise

Note:
    The schedule is a pure function of the optimizer step and the epoch (``step``, ``cosine``,
    ``warmup_cosine``), plus a few numbers for ``plateau`` (best value, epochs without
    improvement, current factor) that :meth:`Schedule.state_dict` returns as JSON values for the
    checkpoint's ``extra``. Setting the learning rate in every parameter group before each step,
    instead of letting a ``torch.optim.lr_scheduler`` mutate it, makes a resumed run take the
    same rates as an uninterrupted one without saving a scheduler object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..config import OptimConfig


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW with ``cfg``'s hyper-parameters.

    ``weight_decay`` is an L2 penalty added to the gradient for ``sgd`` and ``adam`` and
    decoupled weight decay for ``adamw`` (as in PyTorch). The implementation is PyTorch's
    default, as a plain loop gets it: a loop over the parameters on CPU, the multi-tensor
    (``foreach``) kernels on GPUs, a few launches per step instead of a few per parameter.
    """
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor | None:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping as a 0-d tensor on the gradients' device, not read on the
    host (on a GPU that would wait for the device every step); ``None`` when ``max_norm`` is
    ``None``. Called after the data-parallel synchronize, so every rank clips the same averaged
    gradients the same way.
    """
    if max_norm is None:
        return None
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm)


class Schedule:
    """The learning rate of every optimizer step (``optim.schedule``).

    Parameters
    ----------
    cfg : the ``[optim]`` table.
    steps_per_epoch : optimizer steps in one epoch (``step`` counts epochs).
    total_steps : optimizer steps of the whole run (``cosine`` decays over them).
    """

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int, total_steps: int):
        self.cfg = cfg
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.plateau_factor = 1.0  # product of the plateau decays so far
        self.best: float | None = None
        self.bad_epochs = 0

    def lr(self, step: int, epoch: int) -> float:
        """The rate of optimizer step ``step`` (0-based) taken in ``epoch``."""
        c = self.cfg
        if c.schedule == "step":
            return c.lr * c.gamma ** (epoch // c.step_size)
        if c.schedule == "plateau":
            return max(c.min_lr, c.lr * self.plateau_factor)
        if c.schedule in ("cosine", "warmup_cosine"):
            warmup = c.warmup_steps if c.schedule == "warmup_cosine" else 0
            if step < warmup:
                return c.lr * (step + 1) / warmup
            span = max(1, self.total_steps - warmup)
            progress = min(1.0, (step - warmup) / span)
            return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return c.lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int, epoch: int) -> float:
        """Set every parameter group's rate for step ``step``; returns it."""
        rate = self.lr(step, epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate

    def end_epoch(self, value: float, direction: str, min_delta: float = 0.0) -> None:
        """``plateau``: after an epoch, with the watched validation metric's ``value``;
        multiply the rate by ``factor`` after ``patience`` epochs without improvement."""
        if self.cfg.schedule != "plateau":
            return
        if self.best is None or improved(value, self.best, direction, min_delta):
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            self.plateau_factor *= self.cfg.factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        """JSON values (for the checkpoint's ``extra``)."""
        return {"plateau_factor": self.plateau_factor, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor, self.best, self.bad_epochs = state["plateau_factor"], state["best"], state["bad_epochs"]


def improved(value: float, best: float, direction: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``direction`` "min"/"max")."""
    return value < best - min_delta if direction == "min" else value > best + min_delta
