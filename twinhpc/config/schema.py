"""The job file's schema: :class:`Job`, one frozen dataclass per TOML table.

A job file (TOML) has the tables ``[data] [preprocess] [model] [optim] [train] [slurm]``,
for a sweep ``[sweep]`` and for a simulated ensemble ``[simulate]``; each becomes a dataclass of
:mod:`.data` (``DataConfig``, ``PreprocessConfig``), :mod:`.training` (``ModelConfig``,
``OptimConfig``, ``TrainConfig``), :mod:`.slurm` (``SlurmConfig``), :mod:`.sweep`
(``SweepConfig``) or :mod:`.simulate` (``SimulateConfig``), and :class:`Job` holds them.
:mod:`.fields` declares and checks their keys; :class:`Job` adds the rules across tables.
``Job.sweep`` is ``None`` for a job without ``[sweep]`` (every trial's job is one), and
``Job.simulate`` for a job without ``[simulate]``.

Note:
    Free sub-tables (``[model.structure]``, ``[slurm.additional]``) are plain ``dict`` fields:
    their keys belong to someone else's schema (a model builder's signature, sbatch's options)
    and are checked there, e.g. by :func:`~twinhpc.config.training.check_structure`. Values a
    user leaves out are ``None`` where the default depends on something only known later (the
    dataset's manifest, the task); the properties named ``task_loss``, ``task_metric`` ...
    resolve them, so a job written back with :meth:`Job.to_toml` keeps "the default" rather
    than a frozen choice.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .data import DataConfig, PreprocessConfig, check_minilm_text
from .fields import JobFileError, Table, did_you_mean
from .simulate import SimulateConfig
from .slurm import SlurmConfig
from .sweep import RESERVED, SweepConfig
from .toml_writer import toml_table
from .training import ModelConfig, OptimConfig, TrainConfig


@dataclass(frozen=True)
class Job:
    """A whole job file: one attribute per table."""

    data: DataConfig
    model: ModelConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    sweep: SweepConfig | None = None
    simulate: SimulateConfig | None = None

    #: tables in the order a job file (and the reference) lists them
    TABLES: ClassVar[tuple[str, ...]] = ("data", "preprocess", "model", "optim", "train", "slurm", "sweep", "simulate")
    #: tables a job may leave out altogether (``None`` then)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("sweep", "simulate")

    def __post_init__(self) -> None:
        tokenizer = self.preprocess.text.tokenizer
        if self.model.name == "minilm" and tokenizer == "words":
            raise JobFileError(
                "preprocess.text.tokenizer",
                'is "words", but model "minilm" reads ids of MiniLM\'s own WordPiece '
                "tokenizer (its pretrained embeddings know no other vocabulary); set "
                'it to "minilm" (or "auto")',
            )
        if tokenizer == "auto" and self.text_tokenizer == "minilm":
            check_minilm_text(self.preprocess.text, "'auto' and model \"minilm\"")
        self._check_field_task()
        if self.sweep is not None:
            self._check_sweep(self.sweep)

    def _check_field_task(self) -> None:
        """``data.state``/``forcing``/``params`` name the fields of a field task, which reads no
        ``data.inputs`` or ``data.label``; other tasks read those and not the former."""
        field_keys = [k for k in ("state", "forcing", "params") if getattr(self.data, k) is not None]
        if self.train.task == "field":
            for k in ("inputs", "label"):
                if getattr(self.data, k) is not None:
                    raise JobFileError(
                        f"data.{k}",
                        "is not read by train.task = 'field'; name its fields with data.state, data.forcing "
                        "and data.params",
                    )
        elif field_keys:
            raise JobFileError(
                f"data.{field_keys[0]}", f"names a field of train.task = 'field', but the task is {self.train.task!r}"
            )

    def _check_sweep(self, sweep: SweepConfig) -> None:
        """The rules of ``[sweep]`` across tables: every searched key is a key of the job, the
        metric is a validation metric the run records, ``min_epochs`` ≤ ``max_epochs``."""
        for p in sweep.params:
            if p.key.split(".")[0] != "sweep" and p.key not in RESERVED:
                try:
                    self.check_key(p.key)
                except JobFileError as e:
                    raise JobFileError(p.label, f"not a key of the job ({e.key}: {e.problem})") from None
        metric, _ = sweep.objective(self.train.early_stopping)
        watched = ("val_loss", f"val_{self.train.task_metric}")
        if metric not in watched:
            raise JobFileError(
                "sweep.metric",
                f"must be one of {', '.join(map(repr, watched))} (the validation metrics recorded), got {metric!r}",
            )
        top = sweep.max_epochs_of(self.train.epochs)
        if sweep.min_epochs > top:
            source = "sweep.max_epochs" if sweep.max_epochs is not None else "train.epochs"
            raise JobFileError("sweep.min_epochs", f"{sweep.min_epochs} is above {source} {top}")

    @classmethod
    def check_key(cls, dotted: str) -> None:
        """Raise :class:`JobFileError` unless ``dotted`` names a key of the schema (or lies
        inside a free table such as ``model.structure``), naming the first part that is wrong."""
        parts = dotted.split(".")
        if parts[0] not in cls.TABLES:
            raise JobFileError(
                dotted,
                f"unknown table {parts[0]!r}{did_you_mean(parts[0], cls.TABLES)}; "
                f"a job file has: {', '.join(cls.TABLES)}",
            )
        table: type[Table] = cls.table_class(parts[0])
        for i, part in enumerate(parts[1:], start=1):
            hints = typing.get_type_hints(table)
            names = [n for n in hints if n.upper() != n]
            if part not in names:
                raise JobFileError(
                    ".".join(parts[: i + 1]),
                    f"unknown key{did_you_mean(part, names)}; [{table.TABLE}] has: {', '.join(names)}",
                )
            tp = hints[part]
            if isinstance(tp, type) and issubclass(tp, Table):
                if i == len(parts) - 1:
                    return  # a whole sub-table given as an inline table
                table = tp
            elif tp is dict or typing.get_origin(tp) is dict:
                return  # a free table: its keys are checked by their owner
            elif i != len(parts) - 1:
                raise JobFileError(dotted, f"{'.'.join(parts[: i + 1])} is not a table")

    @property
    def text_tokenizer(self) -> str:
        """``preprocess.text.tokenizer`` with ``auto`` resolved: ``"minilm"`` or ``"words"``."""
        tokenizer = self.preprocess.text.tokenizer
        if tokenizer == "auto":
            return "minilm" if self.model.name == "minilm" else "words"
        return tokenizer

    @classmethod
    def table_class(cls, name: str) -> type[Table]:
        """The dataclass of table ``name`` (one of :attr:`TABLES`)."""
        hint = typing.get_type_hints(cls)[name]
        table: type[Table] = next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))
        return table

    @classmethod
    def from_dict(cls, tables: Mapping[str, Any], where: str | None = None) -> Job:
        """The job from parsed tables (TOML, or the JSON of :meth:`to_json`).

        Raises
        ------
        JobFileError
            Naming the dotted key and ``where``: an unknown table, or any error of a table.
        """
        try:
            for name in tables:
                if name not in cls.TABLES:
                    raise JobFileError(
                        name, f"unknown table{did_you_mean(name, cls.TABLES)}; a job file has: {', '.join(cls.TABLES)}"
                    )
            parsed: dict[str, Any] = {
                name: cls.table_class(name).from_dict(tables.get(name, {}))
                for name in cls.TABLES
                if name not in cls.OPTIONAL or tables.get(name) is not None
            }
            return cls(**parsed)
        except JobFileError as e:
            raise (e.at(where) if where else e) from None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every table as :meth:`Table.to_dict` gives it, in the order of :attr:`TABLES` (an
        optional table that is ``None`` left out)."""
        return {name: table.to_dict() for name in self.TABLES if (table := getattr(self, name)) is not None}

    def to_json(self) -> str:
        """The job as JSON (results.h5's ``config`` attribute); :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str | None = None) -> Job:
        return cls.from_dict(json.loads(text), where)

    def to_toml(self) -> str:
        """The job as a TOML job file that :func:`~twinhpc.config.load.load_job` reads back equal.

        Every key is written, defaults included, so the file records the whole configuration;
        keys whose value is "derived" (``None``) are left out.
        """
        lines: list[str] = []
        for name, table in self.to_dict().items():
            toml_table(name, table, lines)
        return "\n".join(lines).strip() + "\n"

    @property
    def preprocessed_dir(self) -> str:
        """Where the preprocessed dataset lives: ``preprocess.out`` or ``<data.dataset>-pre``."""
        return self.preprocess.out or self.data.dataset.rstrip("/") + "-pre"
