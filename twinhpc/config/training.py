"""The tables of what is trained and how: ``[model]`` (a registered model and its structure),
``[optim]`` (optimizer, schedule, clipping, accumulation) and ``[train]`` (the loop: length,
objective, precision, checkpoints, logging, communication): frozen dataclasses, see
:mod:`.fields`.

``[model.structure]`` is a free table: its keys are the model builder's keyword arguments,
checked against the builder's signature by :func:`check_structure` when the model is built.
``train.loss`` and ``train.metric`` are ``None`` unless set; :attr:`TrainConfig.task_loss` and
:attr:`TrainConfig.task_metric` resolve them from the task, so a job written back keeps "the
default" rather than a frozen choice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .defaults import BUCKET_CAP_MB, STALL_TIMEOUT_ENV, STALL_TIMEOUT_S, stall_timeout
from .fields import JobFileError, Table, TypeMismatch, coerce, did_you_mean, key, toml_type_name

CLASSIFICATION_LOSSES = ("cross_entropy",)
REGRESSION_LOSSES = ("mse", "l1", "huber")
CLASSIFICATION_METRICS = ("accuracy", "f1")
REGRESSION_METRICS = ("mae", "rmse", "r2")
FIELD_LOSSES = ("mse",)
FIELD_METRICS = ("nrmse", "rmse")
#: train.task → (its losses, its metrics)
TASK_CHOICES = {
    "classification": (CLASSIFICATION_LOSSES, CLASSIFICATION_METRICS),
    "regression": (REGRESSION_LOSSES, REGRESSION_METRICS),
    "field": (FIELD_LOSSES, FIELD_METRICS),
}
#: train.task → (its default loss, its default metric)
TASK_DEFAULTS = {
    "classification": ("cross_entropy", "accuracy"),
    "regression": ("mse", "rmse"),
    "field": ("mse", "nrmse"),
}
#: metrics where smaller is better (early stopping's ``mode = "auto"``)
SMALLER_IS_BETTER = ("loss", "mae", "rmse", "nrmse")


# -- [model] ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig(Table):
    """``[model]``: which model of the registry (`twinhpc.models`) and its structure."""

    TABLE: ClassVar[str] = "model"
    name: str = key(
        doc="A registered model name (see `twinhpc.models.names()`), e.g. `cnn`, "
        "`resnet18`, `mlp`, `lstm`, `transformer`, `gpt`, `minilm`."
    )
    structure: dict[str, Any] = key(
        {},
        "`[model.structure]`: keyword arguments of the model's "
        "builder (its signature is the schema; unknown keys are "
        "errors when the model is built).",
    )


def check_structure(
    builder: Callable[..., Any], structure: Mapping[str, Any], *, where: str | None = None
) -> dict[str, Any]:
    """Check ``[model.structure]`` against a builder's signature; the keyword arguments to call it.

    Every key must be a parameter of ``builder`` (any key if it takes ``**kwargs``), every
    parameter without a default must be given, and a value must have the type of the parameter's
    default: a boolean for a boolean, an integer for an integer, a number for a float (an integer
    is converted), a string for a string, an array for a tuple or list (converted to the
    default's type). Parameters whose default is ``None`` take any value.

    Raises
    ------
    JobFileError
        Naming ``model.structure.<key>`` (and ``where``) with the valid keys or the expected type.
    """
    params = inspect.signature(builder).parameters
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {}
    try:
        for name, value in structure.items():
            dotted = f"model.structure.{name}"
            if name not in named:
                if takes_any:
                    out[name] = value
                    continue
                raise JobFileError(
                    dotted,
                    f"unknown key{did_you_mean(name, named)}; the model's "
                    f"structure keys are: {', '.join(named) or '(none)'}",
                )
            default = named[name].default
            if default is inspect.Parameter.empty or default is None:
                out[name] = value
                continue
            tp = tuple[Any, ...] if isinstance(default, (tuple, list)) else type(default)
            try:
                coerced = coerce(value, tp)
            except TypeMismatch:
                raise JobFileError(
                    dotted,
                    f"must be {_describe_default(default)} like its default "
                    f"{default!r}, got {toml_type_name(value)} {value!r}",
                ) from None
            out[name] = list(coerced) if isinstance(default, list) else coerced
        missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in out]
        if missing:
            raise JobFileError(f"model.structure.{missing[0]}", "missing (the model's builder has no default for it)")
    except JobFileError as e:
        raise (e.at(where) if where else e) from None
    return out


def _describe_default(default: Any) -> str:
    if isinstance(default, (tuple, list)):
        return "an array"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), f"a {type(default).__name__}"
    )


# -- [optim] ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimConfig(Table):
    """``[optim]``: optimizer, learning-rate schedule, clipping and accumulation."""

    TABLE: ClassVar[str] = "optim"
    name: str = key(
        "adamw", "Optimizer: SGD, Adam, or AdamW (Adam with decoupled weight decay).", choices=("sgd", "adam", "adamw")
    )
    lr: float = key(1e-3, "Peak learning rate.", gt=0)
    momentum: float = key(0.9, "SGD momentum (sgd only).", ge=0, lt=1)
    nesterov: bool = key(False, "Nesterov momentum (sgd only).")
    weight_decay: float = key(0.0, "L2 penalty (sgd, adam) or decoupled weight decay (adamw).", ge=0)
    betas: tuple[float, float] = key((0.9, 0.999), "Adam's β₁, β₂ (adam, adamw).", ge=0, lt=1)
    eps: float = key(1e-8, "Adam's ε (adam, adamw).", gt=0)
    schedule: str = key(
        "none",
        "Learning-rate schedule: `step` multiplies by `gamma` every "
        "`step_size` epochs; `cosine` decays to `min_lr` over the run's "
        "optimizer steps; `warmup_cosine` first rises linearly over "
        "`warmup_steps`; `plateau` multiplies by `factor` when "
        "`train.early_stopping.metric` has not improved for `patience` "
        "epochs.",
        choices=("none", "step", "cosine", "warmup_cosine", "plateau"),
    )
    step_size: int = key(30, "Epochs between decays (`step`).", ge=1)
    gamma: float = key(0.1, "Decay factor (`step`).", gt=0, le=1)
    warmup_steps: int = key(
        0, "Optimizer steps of linear warm-up from 0 to `lr` (`warmup_cosine`; must be > 0 there).", ge=0
    )
    patience: int = key(5, "Epochs without improvement before a decay (`plateau`).", ge=0)
    factor: float = key(0.1, "Decay factor (`plateau`).", gt=0, lt=1)
    min_lr: float = key(0.0, "Floor of the learning rate (`cosine`, `warmup_cosine`, `plateau`).", ge=0)
    grad_clip: float | None = key(
        None, "Clip the global L2 norm of the gradients to this value.", gt=0, default_doc="no clipping"
    )
    accumulate: int = key(
        1,
        "Micro-batches whose gradients are summed per optimizer step "
        "(gradient accumulation; ranks communicate once per step).",
        ge=1,
    )

    def check(self) -> None:
        if self.schedule == "warmup_cosine" and self.warmup_steps == 0:
            raise JobFileError(
                "optim.warmup_steps", "must be > 0 with schedule 'warmup_cosine' (use 'cosine' for no warm-up)"
            )
        if self.min_lr > self.lr:
            raise JobFileError("optim.min_lr", f"{self.min_lr!r} is above optim.lr {self.lr!r}")


# -- [train] ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EarlyStopping(Table):
    """``[train.early_stopping]``: stop when a validation metric stops improving."""

    TABLE: ClassVar[str] = "train.early_stopping"
    patience: int = key(0, "Epochs without improvement before stopping (0: never stop early).", ge=0)
    metric: str = key("val_loss", "Per-epoch metric watched: `val_loss` or `val_<train metric>` (e.g. `val_accuracy`).")
    mode: str = key(
        "auto",
        "`min`: smaller is better; `max`: larger is better; `auto`: `min` for losses, MAE, RMSE and nRMSE, `max` "
        "otherwise.",
        choices=("auto", "min", "max"),
    )
    min_delta: float = key(0.0, "Smallest change that counts as an improvement.", ge=0)

    @property
    def direction(self) -> str:
        """``"min"`` or ``"max"``: ``mode`` with ``auto`` resolved from the metric's name."""
        if self.mode != "auto":
            return self.mode
        return "min" if self.metric.rsplit("_", 1)[-1] in SMALLER_IS_BETTER else "max"


def _checkpoint_every_problem(value: Any) -> str | None:
    if isinstance(value, str) and value != "epoch":
        return f'must be a number of optimizer steps (≥ 1) or "epoch", got {value!r}'
    if isinstance(value, int) and value < 1:
        return f'must be ≥ 1 optimizer steps (or "epoch"), got {value!r}'
    return None


@dataclass(frozen=True)
class TrainConfig(Table):
    """``[train]``: the training loop: length, objective, precision, checkpoints, logging."""

    TABLE: ClassVar[str] = "train"
    epochs: int = key(10, "Passes over the training split.", ge=1)
    max_steps: int | None = key(
        None, "Stop after this many optimizer steps, even mid-epoch.", ge=1, default_doc="no limit"
    )
    task: str = key(
        "classification",
        "What the model predicts: class logits, values, or `field`: the next state of a simulated field "
        "from the state, forcing and parameters of a scenario (docs/surrogates.md).",
        choices=tuple(TASK_CHOICES),
    )
    loss: str | None = key(
        None,
        "Loss function: `cross_entropy` (classification); `mse`, `l1`, `huber` (regression); `mse` of the "
        "normalised state (field).",
        choices=CLASSIFICATION_LOSSES + REGRESSION_LOSSES,
        default_doc="`cross_entropy` / `mse` by task",
    )
    metric: str | None = key(
        None,
        "Metric reported per epoch: `accuracy`, `f1` (macro; classification); `mae`, `rmse`, `r2` (regression); "
        "`nrmse` (‖pred − true‖₂ / ‖true‖₂ per sample and time step, averaged), `rmse` (field, physical units).",
        choices=CLASSIFICATION_METRICS + REGRESSION_METRICS + ("nrmse",),
        default_doc="`accuracy` / `rmse` / `nrmse` by task",
    )
    unroll: int = key(
        1,
        "Field task: steps the model is rolled out during training, its own prediction fed back; the loss is the "
        "mean over the `unroll` predicted states (1: one-step training).",
        ge=1,
    )
    noise: float = key(
        0.0,
        "Field task: std of the Gaussian noise added to the start state of every training chain, in units of the "
        "state's std (held nodes excepted); the targets stay the true states, so the model learns to pull a "
        "perturbed state back and long rollouts stay stable (0: none).",
        ge=0,
    )
    first_step_weight: float = key(
        1.0,
        "Field task: weight in the training loss of the chains that start at a scenario's first state `u[0]`, "
        "against 1 for every other start (the loss is the weighted mean). The first step from rest, as the sources "
        "switch on, is the one a rollout starts with and the least like the others (1: no extra weight).",
        gt=0,
    )
    prior: str = key(
        "none",
        "Field task: the physics the model starts from. `none`: the model predicts the whole increment of a "
        "step; `plate`: a hybrid twin of a `twinhpc simulate` plate dataset, whose step is the plate's linear "
        "physics advanced one saved interval in closed form (with the interval's mean forcing and the scenario's "
        "`k`, `h`, `t_inf`, `t_edge`) plus the model's correction, trained on what that step misses "
        "(docs/surrogates.md). Needs the dataset's `provenance.simulate`, its forcing and its params.",
        choices=("none", "plate"),
    )
    forcing_window: int = key(
        1,
        "Field task: forcing frames the model reads per step: 1, the step's own (the mean over its interval); "
        "3, also those of the steps before and after it (the first and last step repeat their own), which tell "
        "the model how the forcing changes within the interval: when a source switched on, how steep its ramp is.",
        ge=1,
        le=3,
    )
    device: str = key(
        "cpu",
        "Where the model trains: `cpu`; `cuda` (rank r of a node uses GPU "
        "`local rank % GPUs`; images are augmented there, other batches "
        "copied there; not yet run on a GPU); `auto` (cuda when a GPU is visible).",
        choices=("cpu", "cuda", "auto"),
    )
    bf16: bool = key(False, "Run forward and loss under bfloat16 autocast (weights stay float32).")
    dropout: float | None = key(
        None, "Set the probability of every dropout layer of the model.", ge=0, lt=1, default_doc="the model's own"
    )
    early_stopping: EarlyStopping = key(EarlyStopping(), "`[train.early_stopping]` below.")
    checkpoint_every: int | str = key(
        "epoch",
        'Write `RUN/ckpt/step-<N>.h5` every this many optimizer steps, or at the end of every `"epoch"`.',
        check=_checkpoint_every_problem,
    )
    keep_checkpoints: int = key(3, "Checkpoints kept (the newest); older ones are deleted.", ge=1)
    keep_best: bool | None = key(
        None,
        "Also keep the checkpoint of the best epoch by `train.early_stopping.metric` (a checkpoint is "
        "written at the end of every epoch that improves it); `validate`/`predict --checkpoint best` use it.",
        default_doc="on when early stopping (`train.early_stopping.patience` > 0) or `train.metric` is set",
    )
    out: str | None = key(
        None, "Run directory (results.h5, ckpt/, logs); `--out` overrides it.", default_doc="`runs/<job file name>`"
    )
    seed: int = key(
        0,
        "Global seed of initialisation, dropout and augmentation; rank `r` seeds "
        "its per-rank generators with `seed + r`.",
        ge=0,
    )
    log_every: int = key(10, "Optimizer steps between per-step records (`/steps` in results.h5) and log lines.", ge=1)
    progress_seconds: float = key(
        30.0,
        "Seconds between the progress lines rank 0 logs during an epoch when stderr is not a terminal (a batch "
        "job's output): epoch, step, samples/s and ETA. On a terminal a progress bar is drawn instead.",
        gt=0,
    )
    bucket_cap_mb: float = key(BUCKET_CAP_MB, "Gradient bucket size of the data-parallel all-reduce (MiB).", gt=0)
    wire_dtype: str = key(
        "none", "Dtype gradients are cast to for the all-reduce (`none`: their own).", choices=("none", "fp16", "bf16")
    )
    stall_timeout: float = key(
        doc="Seconds a rank may wait in a collective (a gradient all-reduce, validation, a checkpoint's "
        "coordination) for the others before it names the ranks that have not arrived and aborts the job; "
        "0: wait without bound.",
        factory=stall_timeout,
        default_doc=f"`${STALL_TIMEOUT_ENV}`, else `{STALL_TIMEOUT_S}`",
        ge=0,
    )

    def check(self) -> None:
        losses, metrics = TASK_CHOICES[self.task]
        if self.unroll > 1 and self.task != "field":
            raise JobFileError("train.unroll", f"is {self.unroll}, but unrolled training needs train.task = 'field'")
        if self.noise > 0 and self.task != "field":
            raise JobFileError("train.noise", f"is {self.noise}, but state noise needs train.task = 'field'")
        if self.first_step_weight != 1.0 and self.task != "field":
            raise JobFileError(
                "train.first_step_weight", f"is {self.first_step_weight}, but it weights chains of train.task = 'field'"
            )
        if self.forcing_window not in (1, 3):
            raise JobFileError("train.forcing_window", f"must be 1 or 3, got {self.forcing_window}")
        if self.forcing_window != 1 and self.task != "field":
            raise JobFileError(
                "train.forcing_window", f"is {self.forcing_window}, but a forcing window needs train.task = 'field'"
            )
        if self.prior != "none" and self.task != "field":
            raise JobFileError("train.prior", f"is {self.prior!r}, but a physics prior needs train.task = 'field'")
        if self.loss is not None and self.loss not in losses:
            raise JobFileError(
                "train.loss",
                f"{self.loss!r} does not fit task {self.task!r}; use one of {', '.join(map(repr, losses))}",
            )
        if self.metric is not None and self.metric not in metrics:
            raise JobFileError(
                "train.metric",
                f"{self.metric!r} does not fit task {self.task!r}; use one of {', '.join(map(repr, metrics))}",
            )
        watched = ("val_loss", f"val_{self.task_metric}")
        if self.early_stopping.metric not in watched:
            raise JobFileError(
                "train.early_stopping.metric",
                f"must be one of {', '.join(map(repr, watched))} "
                f"(the validation metrics recorded), got "
                f"{self.early_stopping.metric!r}",
            )

    @property
    def keeps_best(self) -> bool:
        """``keep_best``, or its default: on when early stopping or ``metric`` is set."""
        if self.keep_best is not None:
            return self.keep_best
        return self.early_stopping.patience > 0 or self.metric is not None

    @property
    def task_loss(self) -> str:
        """``loss``, or the task's default (``cross_entropy`` / ``mse`` / ``mse``)."""
        return self.loss or TASK_DEFAULTS[self.task][0]

    @property
    def task_metric(self) -> str:
        """``metric``, or the task's default (``accuracy`` / ``rmse`` / ``nrmse``)."""
        return self.metric or TASK_DEFAULTS[self.task][1]
