"""The job file's schema: :class:`Job`, one frozen dataclass per TOML table.

A job file (TOML) has the tables ``[data] [preprocess] [model] [optim] [train] [slurm]``; each
becomes a dataclass of :mod:`.data` (``DataConfig``, ``PreprocessConfig``), :mod:`.training`
(``ModelConfig``, ``OptimConfig``, ``TrainConfig``) or :mod:`.slurm` (``SlurmConfig``), and
:class:`Job` holds them. :mod:`.fields` declares and checks their keys; :class:`Job` adds the
rules across tables.

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
from .slurm import SlurmConfig
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

    #: tables in the order a job file (and the reference) lists them
    TABLES: ClassVar[tuple[str, ...]] = ("data", "preprocess", "model", "optim", "train", "slurm")

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
        table: type[Table] = typing.get_type_hints(cls)[name]
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
                name: cls.table_class(name).from_dict(tables.get(name, {})) for name in cls.TABLES
            }
            return cls(**parsed)
        except JobFileError as e:
            raise (e.at(where) if where else e) from None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every table as :meth:`Table.to_dict` gives it, in the order of :attr:`TABLES`."""
        return {name: getattr(self, name).to_dict() for name in self.TABLES}

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
        for name in self.TABLES:
            toml_table(name, getattr(self, name).to_dict(), lines)
        return "\n".join(lines).strip() + "\n"

    @property
    def preprocessed_dir(self) -> str:
        """Where the preprocessed dataset lives: ``preprocess.out`` or ``<data.dataset>-pre``."""
        return self.preprocess.out or self.data.dataset.rstrip("/") + "-pre"
