"""``parquet``: one ``.parquet`` file, or a directory of part files as Spark writes them.

A directory's data files are its files whose names do not start with ``.`` or ``_`` and do not end
in ``.crc`` (so ``_SUCCESS``, ``_metadata`` and Spark's hidden ``.crc`` files are skipped), taken
in sorted order. One level of hive partitioning is supported: sub-directories ``key=value/``
(all with the same key, values URL-decoded, ``__HIVE_DEFAULT_PARTITION__`` meaning missing) whose
files get the column ``key`` with the directory's value as text; files and partition directories
cannot be mixed, and deeper nesting is an error. All files must have the same schema.

Columns map to fields as for ``csv`` (see :mod:`twinhpc.data.readers.csv`): ``--label`` (default
``label``, else ``y``), ``--fields``, ``--categorical`` and ``--classes`` work the same way;
integer, floating, decimal and boolean columns are numeric (``x``, float32, nulls as NaN), text
and dictionary columns and partition keys are categorical (``cat_<column>``, nulls as level
``""``); a feature column of another type (lists, timestamps, binary, ...) is an error naming it
(leave it out with ``--fields``). The label column's type decides classes (integers, booleans and
text) or a float32 regression target (floating and decimal).

:meth:`ParquetSource.open` reads the file footers, plus the label and categorical columns in full
(their levels must be known on every rank). :meth:`ParquetSource.read` reads only the row groups
holding the requested rows, and only the numeric columns; decoded row groups are kept in a
least-recently-used cache of at most ``CACHE_BYTES``, so a shuffled shard plan reads each row
group once when the numeric data fits in it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from ...errors import IngestError
from ..source import Source, SourceInfo
from .csv import TABLE_OPTIONS, categorical_codes, encode_label, numeric_matrix, plan_columns

CACHE_BYTES = 256 << 20
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _is_data_file(p: Path) -> bool:
    return not p.name.startswith((".", "_")) and not p.name.endswith(".crc")


def list_parts(path: Path) -> tuple[list[Path], str | None, list[str | None]]:
    """``(files, partition key or None, partition value per file)`` of a file or Spark directory.

    Raises IngestError naming the offending path for nested directories, mixed layouts or
    inconsistent partition keys.
    """
    if path.is_file():
        return [path], None, [None]
    entries = sorted(p for p in path.iterdir() if _is_data_file(p))
    dirs = [p for p in entries if p.is_dir()]
    if not dirs:
        return entries, None, [None] * len(entries)
    if len(dirs) != len(entries):
        raise IngestError(f"{path}: holds both data files and partition directories; expected one or the other")
    key = None
    files, values = [], []
    for d in dirs:
        k, eq, v = d.name.partition("=")
        if not eq or not k:
            raise IngestError(f"{d}: not a hive partition directory key=value")
        if key is not None and k != key:
            raise IngestError(f"{d}: partition key {k!r} differs from {key!r} (one level of one key is supported)")
        key = k
        for p in sorted(q for q in d.iterdir() if _is_data_file(q)):
            if p.is_dir():
                raise IngestError(f"{p}: nested partition directories are not supported (one level only)")
            files.append(p)
            values.append(None if v == HIVE_NULL else unquote(v))
    return files, key, values


class ParquetSource(Source):
    kind = "parquet"
    option_help = TABLE_OPTIONS

    def open(self) -> SourceInfo:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.require_exists()
        files, key, values = list_parts(self.path)
        if not files:
            raise IngestError(f"{self.path}: the source is empty (no parquet files)")
        self._files = files
        self._handles: dict[int, pq.ParquetFile] = {}
        schema = None
        starts, groups = [0], []  # global first row of each row group; (file, row group) of each
        for fi, f in enumerate(files):
            meta = self._file(fi).metadata
            s = self._file(fi).schema_arrow
            if schema is None:
                schema = s
            elif not s.equals(schema, check_metadata=False):
                raise IngestError(f"{f}: schema differs from {files[0]}'s:\n{s}\nversus\n{schema}")
            for g in range(meta.num_row_groups):
                groups.append((fi, g))
                starts.append(starts[-1] + meta.row_group(g).num_rows)
        count = starts[-1]
        if count == 0:
            raise IngestError(f"{self.path}: the source is empty (0 rows)")
        names = list(schema.names)
        if key is not None and key in names:
            raise IngestError(f"{self.path}: partition key {key!r} is also a column of the files")
        types = {n: schema.field(n).type for n in names}

        def is_numeric(n: str) -> bool:
            t = types.get(n)  # None: the partition key, which is text
            return t is not None and (
                pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)
            )

        plan = plan_columns(names + ([key] if key else []), is_numeric, self.options, self.path)
        for n in plan.categorical:
            t = types.get(n)
            if t is not None and not (
                is_numeric(n) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)
            ):
                raise IngestError(
                    f"{self.path}: column {n!r} has type {t}, which is neither numeric nor text; "
                    "leave it out with --fields"
                )
        whole = self._whole_columns([n for n in (*plan.categorical, plan.label) if n != key], key, values)
        self._arrays: dict[str, np.ndarray] = {}
        categorical = {}
        for n in plan.categorical:
            categorical[n], self._arrays[f"cat_{n}"] = categorical_codes(whole[n])
        self._arrays["label"], classes, label_dtype = encode_label(
            whole[plan.label], self.option("classes"), self.path, plan.label
        )
        self._numeric = plan.numeric
        self._starts = np.asarray(starts, dtype=np.int64)
        self._groups = groups
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        return SourceInfo(
            plan.fields(label_dtype),
            int(count),
            label_field="label",
            classes=classes,
            categorical=categorical,
            details={
                **plan.details(),
                "files": [str(f.relative_to(self.path)) if f != self.path else f.name for f in files],
            },
        )

    def _file(self, fi: int):
        """The open ``pyarrow.parquet.ParquetFile`` of file ``fi``; IngestError naming it if it is no parquet file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if fi not in self._handles:
            try:
                self._handles[fi] = pq.ParquetFile(self._files[fi])
            except (pa.ArrowInvalid, OSError) as e:
                raise IngestError(f"{self._files[fi]}: not a readable parquet file ({e})") from None
        return self._handles[fi]

    def _whole_columns(self, columns: list[str], key: str | None, values: list[str | None]) -> dict:
        """``columns`` over all files, plus the partition key column; as pyarrow chunked arrays."""
        import pyarrow as pa

        parts = []
        for fi, f in enumerate(self._files):
            try:
                t = self._file(fi).read(columns=columns)
            except (pa.ArrowInvalid, OSError) as e:
                raise IngestError(f"{f}: cannot read columns {columns} ({e})") from None
            if key is not None:
                t = t.append_column(key, pa.array([values[fi]] * t.num_rows, pa.string()))
            parts.append(t)
        return pa.concat_tables(parts)

    def _group(self, g: int) -> np.ndarray:
        """Numeric columns of row group ``g`` as float32 (rows, n_numeric), through the LRU cache."""
        import pyarrow as pa

        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        fi, rg = self._groups[g]
        try:
            matrix = numeric_matrix(self._file(fi).read_row_group(rg, columns=list(self._numeric)), self._numeric)
        except (pa.ArrowInvalid, OSError) as e:
            raise IngestError(f"{self._files[fi]}: cannot read row group {rg} ({e})") from None
        self._cache[g] = matrix
        while sum(m.nbytes for m in self._cache.values()) > CACHE_BYTES and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return matrix

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Gather the rows at ``indices``, reading only their row groups; a row group that cannot
        be decoded raises IngestError naming the file and row group."""
        out = {n: a[indices] for n, a in self._arrays.items()}
        if self._numeric:
            x = np.empty((len(indices), len(self._numeric)), dtype=np.float32)
            group = np.searchsorted(self._starts, indices, side="right") - 1
            runs = np.flatnonzero(np.diff(group)) + 1  # indices are sorted: one run per row group
            for a, b in zip([0, *runs], [*runs, len(indices)]):
                if b > a:
                    g = int(group[a])
                    x[a:b] = self._group(g)[indices[a:b] - self._starts[g]]
            out["x"] = x
        return out
