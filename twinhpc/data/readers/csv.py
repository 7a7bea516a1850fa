"""``csv``: a CSV file with a header row (parsed with ``pyarrow.csv``).

Columns and fields (the same rules serve the ``parquet`` reader, which imports them from here):

* **label**: the column named by ``--label``; default a column named ``label``, else ``y``, else
  an error asking for ``--label``. Stored as field ``label``: integer class ids when the column
  holds integers or text (classes: the sorted distinct values, integers in numeric order, or the
  ``--classes`` order; the stored id is the index), or a float32 regression target (no classes)
  when it holds other numbers. A missing label is an error naming the row.
* **features**: the other columns, or those named by ``--fields`` (in header order either way).
  Numeric feature columns (every non-empty value parses as a number) go, in header order, into
  one float32 field ``x`` of shape (n_numeric,); the column order is recorded in the manifest's
  provenance details as ``x_columns``. Other columns, and those named by ``--categorical``, are
  categorical: each becomes an int64 field ``cat_<column>`` holding the index of the value in the
  column's levels (its distinct values as text, sorted), which the manifest records under
  ``categorical``.
* **dialect**: fields are separated by ``--delimiter`` (one character, or ``tab``; default
  ``,``) and may be quoted with ``"``. Whitespace around every field (and header name) is
  removed, so ``1, 2, 3`` reads as ``1,2,3``. A header that comes out as one column holding
  ``;``, tab or ``|`` is an error naming the delimiter to set.
* **missing values**: a field that is empty or, after trimming, one of ``--na-values``
  (comma-separated; default ``NA,N/A,NaN,null``; ``--na-values ''`` leaves only the empty field)
  is missing. It reads as NaN in a numeric column and as the level ``""`` in a categorical one; a
  missing label is an error naming the row. The count of missing values per column is recorded
  in the manifest's provenance details as ``missing``.

The whole file is parsed once in :meth:`CsvSource.open` (so it must fit in memory on every rank)
and kept as arrays; :meth:`CsvSource.read` only gathers rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo, number_key

DEFAULT_LABELS = ("label", "y")
TABLE_OPTIONS = {
    "label": "label column (default: 'label', else 'y')",
    "fields": "comma-separated feature columns to keep (default: all but the label)",
    "categorical": "comma-separated columns to treat as categorical (default: the non-numeric ones)",
    "classes": "comma-separated label values in class order (default: sorted)",
}
NA_VALUES = ("NA", "N/A", "NaN", "null")
DELIMITERS = {"tab": "\t", "\\t": "\t"}


def _names(value) -> list[str]:
    return [s.strip() for s in str(value).split(",") if s.strip()]


@dataclass(frozen=True)
class ColumnPlan:
    """Which column is the label and which columns become ``x`` and ``cat_<column>``."""

    label: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    def fields(self, label_dtype: str) -> tuple[FieldSpec, ...]:
        x = (FieldSpec("x", "float32", (len(self.numeric),)),) if self.numeric else ()
        return (*x, *(FieldSpec(f"cat_{c}", "int64") for c in self.categorical), FieldSpec("label", label_dtype))

    def details(self) -> dict:
        return {
            "label_column": self.label,
            "x_columns": list(self.numeric),
            "categorical_columns": list(self.categorical),
        }


def plan_columns(names: list[str], is_numeric: Callable[[str], bool], options: dict, where: Path) -> ColumnPlan:
    """Apply ``--label``, ``--fields`` and ``--categorical`` to the columns ``names``.

    Raises IngestError naming ``where`` and the option when an option names a missing column,
    when there is no label column, or when no feature column is left.
    """
    label = options.get("label")
    if label is None:
        label = next((n for n in DEFAULT_LABELS if n in names), None)
        if label is None:
            raise IngestError(f"{where}: no label column: name one with --label (columns are {names})")
    elif label not in names:
        raise IngestError(f"{where}: --label names column {label!r}, which is not among {names}")
    features = [n for n in names if n != label]
    if options.get("fields"):
        wanted = _names(options["fields"])
        for n in wanted:
            if n not in names:
                raise IngestError(f"{where}: --fields names column {n!r}, which is not among {names}")
            if n == label:
                raise IngestError(f"{where}: --fields names the label column {n!r}")
        features = [n for n in features if n in wanted]
    forced = _names(options.get("categorical") or "")
    for n in forced:
        if n not in features:
            raise IngestError(f"{where}: --categorical names column {n!r}, which is not a feature column {features}")
    if not features:
        raise IngestError(f"{where}: no feature columns besides the label {label!r}")
    categorical = tuple(n for n in features if n in forced or not is_numeric(n))
    for n in categorical:
        if "/" in n:
            raise IngestError(f"{where}: categorical column {n!r}: '/' cannot be in a field name")
    return ColumnPlan(label, tuple(n for n in features if n not in categorical), categorical)


def categorical_codes(column) -> tuple[tuple[str, ...], np.ndarray]:
    """``(levels, codes)`` of a pyarrow column: levels are its distinct values as text, sorted
    (missing values are the level ``""``); codes index the levels (int64)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.fill_null(pc.cast(column, pa.string()), "")
    levels = sorted(pc.unique(text).to_pylist())
    codes = pc.index_in(text, value_set=pa.array(levels, pa.string()))
    return tuple(levels), np.asarray(codes.to_numpy(), dtype=np.int64)


def numeric_matrix(table, columns: tuple[str, ...]) -> np.ndarray:
    """The ``columns`` of a pyarrow table as float32 (n, len(columns)); missing values are NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = np.empty((table.num_rows, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        out[:, j] = pc.cast(table[name], pa.float64()).to_numpy()
    return out


def encode_label(column, classes_option, where: Path, column_name: str) -> tuple[np.ndarray, tuple[str, ...], str]:
    """``(values, classes, dtype)`` of the label column (see the module docstring).

    Raises IngestError naming ``where`` for a missing label value (with its row), a value not in
    ``--classes``, or a column of a type that is neither numeric nor text.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise IngestError(f"{where}: label column {column_name!r} has no value in data row {row + 1}")
    typ = column.type
    if classes_option:
        classes = tuple(_names(classes_option))
        text = pc.cast(column, pa.string())
        if all(_is_number(c) for c in classes):
            # numeric classes match by value: --classes 1,2,4 takes a label written 4.0
            keys = [number_key(c) for c in classes]
            if len(set(keys)) != len(keys):
                raise IngestError(f"{where}: --classes {list(classes)} names a class twice")
            distinct = pc.unique(text)
            position = {k: i for i, k in enumerate(keys)}
            code_of = pa.array([position.get(number_key(v)) for v in distinct.to_pylist()], pa.int64())
            codes = pc.take(code_of, pc.index_in(text, value_set=distinct))
        else:
            codes = pc.index_in(text, value_set=pa.array(classes, pa.string()))
        if codes.null_count:
            row = int(np.flatnonzero(codes.is_null().to_numpy(zero_copy_only=False))[0])
            raise IngestError(
                f"{where}: label {text[row].as_py()!r} in data row {row + 1} is not among --classes {list(classes)}"
            )
        return np.asarray(codes.to_numpy(), dtype=np.int64), classes, "int64"
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        values = pc.cast(column, pa.int64()).to_numpy()
        distinct = np.unique(values)
        return np.searchsorted(distinct, values).astype(np.int64), tuple(str(v) for v in distinct), "int64"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return pc.cast(column, pa.float32()).to_numpy(), (), "float32"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_dictionary(typ):
        classes, codes = categorical_codes(column)
        return codes, classes, "int64"
    raise IngestError(f"{where}: label column {column_name!r} has type {typ}; use integers, floats or text")


class CsvSource(Source):
    kind = "csv"

    option_help = {
        **TABLE_OPTIONS,
        "delimiter": "field delimiter, one character or 'tab' (default ',')",
        "na_values": "comma-separated texts meaning a missing value (default: empty, NA, N/A, NaN, null)",
    }

    def open(self) -> SourceInfo:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        self.require_exists(directory=False)
        if self.path.stat().st_size == 0:
            raise IngestError(f"{self.path}: the source is empty (an empty file)")
        raw = self.option("delimiter", ",")
        delimiter = DELIMITERS.get(raw, raw)
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise IngestError(f"{self.path}: --delimiter must be one character or 'tab', got {raw!r}")
        na = self.option("na_values")
        na_values = ["", *(NA_VALUES if na is None else _names(na))]
        try:
            table = pacsv.read_csv(
                self.path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types=_all_text(self.path, delimiter), strings_can_be_null=False, null_values=[]
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
            raise IngestError(
                f"{self.path}: not a readable CSV file with a header row and delimiter {delimiter!r} "
                f"({e}){_delimiter_hint(self.path, delimiter)}"
            ) from None
        names = [n.strip() for n in table.column_names]
        if len(names) == 1 and (hint := _delimiter_hint(self.path, delimiter)):
            raise IngestError(f"{self.path}: the header {names[0]!r} is one column with delimiter {delimiter!r}{hint}")
        missing_set = pa.array(na_values, pa.string())
        columns, missing = [], {}
        for n, column in zip(names, table.columns):
            trimmed = pc.utf8_trim_whitespace(column)
            is_na = pc.is_in(trimmed, value_set=missing_set)
            columns.append(pc.if_else(is_na, pa.scalar(None, pa.string()), trimmed))
            if count := pc.sum(is_na).as_py():
                missing[n] = count
        if len(set(names)) == len(names):
            table = pa.table(columns, names=names)
        if len(set(names)) != len(names):
            raise IngestError(
                f"{self.path}: the header repeats column names {sorted({n for n in names if names.count(n) > 1})}"
            )
        if table.num_rows == 0:
            raise IngestError(f"{self.path}: the source is empty (a header but no rows)")
        number = functools.cache(lambda n: _as_number(table[n]))
        plan = plan_columns(names, lambda n: number(n) is not None, self.options, self.path)
        numbers = {n: number(n) for n in plan.numeric}
        self._arrays: dict[str, np.ndarray] = {}
        if plan.numeric:
            self._arrays["x"] = numeric_matrix(pa.table(numbers), plan.numeric)
        categorical = {}
        for n in plan.categorical:
            categorical[n], self._arrays[f"cat_{n}"] = categorical_codes(table[n])
        label_column = table[plan.label]
        if not self.option("classes") and number(plan.label) is not None:
            label_column = number(plan.label)
        self._arrays["label"], classes, label_dtype = encode_label(
            label_column, self.option("classes"), self.path, plan.label
        )
        return SourceInfo(
            plan.fields(label_dtype),
            table.num_rows,
            label_field="label",
            classes=classes,
            categorical=categorical,
            details={**plan.details(), **({"missing": missing} if missing else {})},
        )

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Gather the rows at ``indices`` from memory (no I/O, no failure modes)."""
        return {n: a[indices] for n, a in self._arrays.items()}


def _delimiter_hint(path: Path, delimiter: str) -> str:
    """``"; the header looks delimited by ';': set --delimiter ';'"`` when the first line does not
    hold ``delimiter`` but holds another common one, else ``""``."""
    try:
        with open(path, "rb") as f:
            header = f.readline().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if delimiter in header:
        return ""
    for d in (";", "\t", "|", ","):
        if d != delimiter and d in header:
            return f"; the header looks delimited by {d!r}: set --delimiter {'tab' if d == chr(9) else repr(d)}"
    return ""


def _all_text(path: Path, delimiter: str) -> dict:
    """``column_types`` reading every column of ``path`` as text (the header read once)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter)) as reader:
            names = reader.schema.names
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
        raise IngestError(
            f"{path}: not a readable CSV file with a header row and delimiter {delimiter!r} ({e})"
        ) from None
    return {n: pa.string() for n in names}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_number(column):
    """A text column as int64 when every value is an integer, else float64 when every value is a
    number, else ``None`` (missing values stay missing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for typ in (pa.int64(), pa.float64()):
        try:
            return pc.cast(column, typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None
