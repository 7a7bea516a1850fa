"""What an ingest reader provides: a schema, a sample count and random access by global index.

A reader (``twinhpc/data/readers/<kind>.py``) subclasses :class:`Source`. Ingest calls
:meth:`Source.open` once on every rank (local work only, no MPI), then :meth:`Source.read` with
the sorted global indices of the samples that this rank's shards need. Global indices number the
source's samples in one order that every rank agrees on (file order), which is what makes the
resulting dataset independent of the number of ranks.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import IngestError
from .format import FieldSpec

#: characters a text field cannot store in HDF5 (NUL, lone surrogates) and their replacement
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
MAX_PLACES = 10


@dataclass(frozen=True)
class SourceInfo:
    """What :meth:`Source.open` learns about a source.

    Attributes
    ----------
    fields : the schema of every sample.
    count : number of samples (all splits together).
    label_field : name of the label field, if the source has labels.
    classes : class names, index = label value (empty for regression or unlabeled data).
    categorical : for each categorical input column, its levels; the stored code is the index.
    given_split : per-sample split name (``"train"``, ``"test"``, ``"unlabeled"``) for sources
        that come split (CIFAR-10, IMDB), else ``None``.
    details : extra provenance (e.g. the files read), recorded in the manifest.
    """

    fields: tuple[FieldSpec, ...]
    count: int
    label_field: str | None = None
    classes: tuple[str, ...] = ()
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)
    given_split: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """A source of samples for ``twinhpc ingest KIND SRC``.

    Parameters
    ----------
    path : the SRC argument (a file or a directory, depending on the kind).
    options : reader options from the command line (``--label``, ``--fields``, ...); a reader
        raises :class:`IngestError` naming an option it cannot use.
    """

    kind: ClassVar[str]
    #: options this reader understands, with a one-line description for ``--help``
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, path: str | Path, options: dict[str, Any] | None = None):
        self.path = Path(path)
        self.options = dict(options or {})
        #: characters :meth:`storable` replaced in this process's reads, and the first places
        self.replaced = 0
        self.replaced_at: list[str] = []

    @abstractmethod
    def open(self) -> SourceInfo:
        """Inspect the source (local work only) and return its schema and sample count.

        Raises :class:`IngestError` naming the path when the source is missing, empty or not of
        this kind.
        """

    @abstractmethod
    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Return the samples at ``indices`` (sorted, unique, int64) as one array per field.

        Each array has ``len(indices)`` rows in the order of ``indices``, the field's dtype and
        per-sample shape (``object`` arrays of ``str`` for text fields).
        """

    def check_options(self) -> None:
        """Raise :class:`IngestError` naming each option this reader does not understand."""
        extra = sorted(set(self.options) - set(self.option_help))
        if extra:
            raise IngestError(
                f"{self.path}: option(s) {', '.join('--' + o.replace('_', '-') for o in extra)} "
                f"do not apply to the {self.kind} reader"
            )

    # helpers for readers ----------------------------------------------------------------
    def require_exists(self, directory: bool | None = None) -> None:
        if not self.path.exists():
            raise IngestError(f"{self.path}: source does not exist")
        if directory is True and not self.path.is_dir():
            raise IngestError(f"{self.path}: the {self.kind} source must be a directory")
        if directory is False and not self.path.is_file():
            raise IngestError(f"{self.path}: the {self.kind} source must be a file")

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def storable(self, text: str, where: str) -> str:
        """``text`` with each character HDF5 text cannot hold (NUL, a lone UTF-16 surrogate as a
        JSON ``\\ud83d`` escape gives) replaced by U+FFFD; counted, with ``where`` (file and line)
        remembered for the first few, for ingest to report and record in the manifest."""
        text, n = _UNSTORABLE.subn(REPLACEMENT, text)
        if n:
            self.replaced += n
            if len(self.replaced_at) < MAX_PLACES:
                self.replaced_at.append(where)
        return text


def label_text(value: object) -> str:
    """The canonical text of a label value: equal numbers give equal text (``4``, ``4.0``, ``4e0``
    -> ``"4"``; ``4.50`` -> ``"4.5"``), booleans ``true``/``false``, strings themselves."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def number_key(text: str) -> str:
    """``text`` as the canonical text of its number when it is a finite number (``" 4.0"`` ->
    ``"4"``), else ``text`` stripped; class lists and label values are matched through it."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        return t
    return label_text(v) if math.isfinite(v) else t
