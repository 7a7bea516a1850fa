"""``jsonl``: a JSON-lines file, one JSON object per line (e.g. the Yelp reviews).

Fields: ``text`` (str), the value of ``--text-field`` (default ``text``), and ``label`` int64, the
class index of the value of ``--label``. The label key defaults to ``label``, or ``stars`` when
the first record has no ``label`` key. Label values may be strings, numbers or booleans; a
non-string value is named by its canonical text: a number by its shortest form (``4``, ``4.0`` and
``4e0`` are one class, ``4``; ``4.5``), a boolean as ``true``/``false``. Classes are the distinct
values, numbers in numeric order when all values are numbers and text order otherwise, or the
``--classes`` order, whose entries match numerically when they are numbers (``--classes 1,2,4``
matches a label written ``4.0``). The mapping depends only on the data, so every rank computes the
same one. Other keys are ignored. Global order: file order.

Blank lines are skipped. A line that is not a JSON object, lacks the text or label key, or has a
text that is not a string is an :class:`~twinhpc.errors.IngestError` naming the file, the line
number and the option to set. The file must be UTF-8. A NUL (``\\u0000``) or a lone surrogate
(``\\ud83d`` without its pair, as truncated emoji leave) in a text cannot be stored in HDF5: each
is replaced by U+FFFD, and ingest warns with the count and records it, with the first lines, in
the manifest's provenance (``replaced_characters``).

:meth:`JsonlSource.open` parses every line once (for the classes) and keeps only the byte offset
and label of each record; :meth:`JsonlSource.read` seeks to the requested lines and parses them
again for their text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo, label_text, number_key

DEFAULT_TEXT = "text"
DEFAULT_LABELS = ("label", "stars")


def _parse(line: bytes, path: Path, lineno: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise IngestError(f"{path}: line {lineno}: not valid JSON ({e.msg} at character {e.pos + 1})") from None
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: line {lineno}: not UTF-8 ({e})") from None
    if not isinstance(record, dict):
        raise IngestError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
    return record


class JsonlSource(Source):
    kind = "jsonl"
    option_help = {
        "text_field": f"key of the text (default {DEFAULT_TEXT!r})",
        "label": "key of the label (default 'label', else 'stars')",
        "classes": "comma-separated label values in class order (default: sorted)",
    }

    def open(self) -> SourceInfo:
        self.require_exists(directory=False)
        self._text_key = self.option("text_field") or DEFAULT_TEXT
        label_key = self.option("label")
        offsets, linenos, values = [], [], []
        offset = 0
        with open(self.path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                record = _parse(line, self.path, lineno)
                if label_key is None:
                    label_key = next((k for k in DEFAULT_LABELS if k in record), None)
                    if label_key is None:
                        raise IngestError(
                            f"{self.path}: line {lineno}: no 'label' or 'stars' key; name the label key "
                            f"with --label (keys are {sorted(record)})"
                        )
                self._check(record, label_key, lineno)
                offsets.append(start)
                linenos.append(lineno)
                values.append(record[label_key])
        if not offsets:
            raise IngestError(f"{self.path}: the source is empty (no JSON lines)")
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._linenos = np.asarray(linenos, dtype=np.int64)
        self._labels, classes = self._encode(values, label_key)
        return SourceInfo(
            (FieldSpec("text", "str"), FieldSpec("label", "int64")),
            len(offsets),
            label_field="label",
            classes=classes,
            details={"text_field": self._text_key, "label_key": label_key},
        )

    def _check(self, record: dict, label_key: str, lineno: int) -> None:
        if not isinstance(record.get(self._text_key), str):
            what = "has no" if self._text_key not in record else "has a non-string"
            raise IngestError(
                f"{self.path}: line {lineno}: {what} text key {self._text_key!r} "
                f"(--text-field; keys are {sorted(record)})"
            )
        value = record.get(label_key)
        if value is None or not isinstance(value, (str, int, float)):
            what = "has no" if label_key not in record else f"has a {type(value).__name__} value of"
            raise IngestError(
                f"{self.path}: line {lineno}: {what} label key {label_key!r} (--label; keys are {sorted(record)})"
            )

    def _encode(self, values: list, label_key: str) -> tuple[np.ndarray, tuple[str, ...]]:
        texts = [label_text(v) for v in values]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if self.option("classes"):
            classes = tuple(s.strip() for s in str(self.option("classes")).split(",") if s.strip())
            keys = [number_key(c) if numeric else c for c in classes]
            if len(set(keys)) != len(keys):
                raise IngestError(f"{self.path}: --classes {list(classes)} names a class twice")
            index = {k: i for i, k in enumerate(keys)}
        else:
            # sorted by value, then text: a total order, the same in every process
            classes = tuple(sorted(set(texts), key=lambda t: (float(t), t) if numeric else (0.0, t)))
            index = {c: i for i, c in enumerate(classes)}
        codes = np.empty(len(texts), dtype=np.int64)
        for k, t in enumerate(texts):
            if t not in index:
                raise IngestError(
                    f"{self.path}: line {self._linenos[k]}: label {t!r} (key {label_key!r}) "
                    f"is not among --classes {list(classes)}"
                )
            codes[k] = index[t]
        return codes, classes

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Seek to and re-parse the lines at ``indices``; a line changed since :meth:`open` into
        invalid JSON raises IngestError naming the file and line."""
        text = np.empty(len(indices), dtype=object)
        with open(self.path, "rb") as f:
            for k, i in enumerate(indices):
                f.seek(self._offsets[i])
                lineno = int(self._linenos[i])
                text[k] = self.storable(
                    _parse(f.readline(), self.path, lineno)[self._text_key], f"{self.path}:{lineno}"
                )
        return {"text": text, "label": self._labels[indices]}
