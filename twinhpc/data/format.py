"""Dataset format v1: the manifest and the shard files it describes.

A dataset is a directory::

    DIR/manifest.json            schema, splits, per-shard counts and checksums, provenance
    DIR/<split>-<i>-of-<n>.h5    one HDF5 file per shard; one HDF5 dataset per field,
                                 sample axis first, chunked along the sample axis

``docs/dataset-format.md`` is the user-facing description; this module is the one place in the
code that reads and writes it. Every reading error names the file and the key that is wrong.

Field dtypes are numpy dtype names (``uint8``, ``float32``, ``int64``, ...) or ``str`` for
variable-length UTF-8 text (stored with ``h5py.string_dtype()``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

FORMAT_NAME = "twinhpc-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLIT_ORDER = ("train", "val", "test", "unlabeled")
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<i>\d+)-of-(?P<n>\d+)\.h5$")
STR_DTYPE = "str"


@dataclass(frozen=True)
class FieldSpec:
    """One field of every sample.

    Attributes
    ----------
    name : HDF5 dataset name inside each shard.
    dtype : numpy dtype name, or ``"str"`` for variable-length UTF-8 text.
    shape : per-sample shape (``()`` for a scalar such as a label).
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()

    @property
    def is_text(self) -> bool:
        return self.dtype == STR_DTYPE

    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.is_text else np.dtype(self.dtype)

    def h5_dtype(self):
        import h5py  # the data layer is allowed h5py; imported lazily for fast CLI start

        return h5py.string_dtype("utf-8") if self.is_text else np.dtype(self.dtype)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample in memory (text counted as 256 bytes for chunk sizing)."""
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return n * (256 if self.is_text else np.dtype(self.dtype).itemsize)


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: its name inside the dataset directory, sample count and SHA-256."""

    file: str
    count: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    name: str
    count: int
    shards: tuple[ShardInfo, ...]


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a dataset directory."""

    fields: tuple[FieldSpec, ...]
    splits: tuple[SplitInfo, ...]
    label_field: str | None = None
    classes: tuple[str, ...] = ()
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    #: per split, per field, counts over every sample taken at ingest: ``nan``/``inf`` for float
    #: fields, ``outside_classes`` (label value -> count) for a label field with classes
    statistics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    # -- lookups -------------------------------------------------------------------------
    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise DatasetError(f"no field {name!r}; fields are {[f.name for f in self.fields]}")

    def split(self, name: str) -> SplitInfo:
        for s in self.splits:
            if s.name == name:
                return s
        raise DatasetError(f"no split {name!r}; splits are {[s.name for s in self.splits]}")

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.splits)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "fields": [{"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in self.fields],
            "label_field": self.label_field,
            "classes": list(self.classes),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "splits": {s.name: {"count": s.count, "shards": [asdict(sh) for sh in s.shards]} for s in self.splits},
            "provenance": self.provenance,
            **({"statistics": self.statistics} if self.statistics else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> Manifest:
        def need(obj: dict, key: str, typ, ctx: str):
            if not isinstance(obj, dict) or key not in obj:
                raise DatasetError(f"{where}: missing key {ctx}{key!r}")
            val = obj[key]
            if not isinstance(val, typ):
                raise DatasetError(f"{where}: key {ctx}{key!r} must be {typ.__name__}, got {type(val).__name__}")
            return val

        if d.get("format") != FORMAT_NAME:
            raise DatasetError(f"{where}: key 'format' must be {FORMAT_NAME!r}, got {d.get('format')!r}")
        version = need(d, "version", int, "")
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{where}: dataset format version {version} is not supported (this twinhpc reads {FORMAT_VERSION})"
            )
        fields = []
        for i, f in enumerate(need(d, "fields", list, "")):
            ctx = f"fields[{i}]."
            name = need(f, "name", str, ctx)
            dtype = need(f, "dtype", str, ctx)
            if dtype != STR_DTYPE:
                try:
                    np.dtype(dtype)
                except TypeError:
                    raise DatasetError(f"{where}: key {ctx}'dtype' has unknown dtype {dtype!r}") from None
            shape = tuple(int(x) for x in need(f, "shape", list, ctx))
            fields.append(FieldSpec(name, dtype, shape))
        splits = []
        for name, s in need(d, "splits", dict, "").items():
            ctx = f"splits.{name}."
            shards = []
            for j, sh in enumerate(need(s, "shards", list, ctx)):
                c2 = f"{ctx}shards[{j}]."
                shards.append(
                    ShardInfo(need(sh, "file", str, c2), need(sh, "count", int, c2), need(sh, "sha256", str, c2))
                )
            count = need(s, "count", int, ctx)
            if count != sum(sh.count for sh in shards):
                raise DatasetError(
                    f"{where}: key {ctx}'count' is {count} but its shards hold {sum(sh.count for sh in shards)}"
                )
            splits.append(SplitInfo(name, count, tuple(shards)))
        splits.sort(key=lambda s: (SPLIT_ORDER.index(s.name) if s.name in SPLIT_ORDER else len(SPLIT_ORDER), s.name))
        return cls(
            fields=tuple(fields),
            splits=tuple(splits),
            label_field=d.get("label_field"),
            classes=tuple(d.get("classes") or ()),
            categorical={k: tuple(v) for k, v in (d.get("categorical") or {}).items()},
            provenance=dict(d.get("provenance") or {}),
            version=version,
            statistics=dict(d.get("statistics") or {}),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Manifest:
        path = Path(directory) / MANIFEST
        if not Path(directory).is_dir():
            raise DatasetError(f"{directory}: not a dataset directory (does not exist or is not a directory)")
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing manifest; is {directory} a twinhpc dataset?") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, where=str(path))

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``manifest.json`` atomically (temporary name, then rename)."""
        path = Path(directory) / MANIFEST
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)


def shard_name(split: str, i: int, n: int) -> str:
    """``<split>-<i>-of-<n>.h5``, with ``i`` counted from 0."""
    return f"{split}-{i}-of-{n}.h5"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    m = _SHARD_RE.match(name)
    return (m["split"], int(m["i"]), int(m["n"])) if m else None


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def chunk_rows(spec: FieldSpec, count: int, target_bytes: int = 1 << 19) -> int:
    """Rows per HDF5 chunk: about ``target_bytes`` (512 KiB) per chunk, at least 1, at most ``count``."""
    return max(1, min(count, target_bytes // max(1, spec.sample_bytes)))
