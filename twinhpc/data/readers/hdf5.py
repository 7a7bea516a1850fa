"""``hdf5``: simulation outputs that already exist as HDF5 arrays, one field per ``--field NAME=PATH``.

Two layouts, chosen by the form of PATH:

- **Whole arrays** (PATH names a dataset, e.g. ``tensor`` or ``sim/u``): the dataset's first axis
  is the sample axis; a sample of field NAME is ``PATH[i]``. Every such PATH must have the same
  first-axis length. PDEBench's 1-D advection, Burgers and reaction-diffusion files (``tensor`` of
  shape (N, T, X) beside ``x-coordinate`` and ``t-coordinate``), its CFD files (``density``,
  ``pressure``, ``Vx``, ... of shape (N, T, X[, Y, Z])) and its Darcy files (``tensor`` (N, 1, X,
  Y), ``nu`` (N, X, Y)) are of this layout.
- **One group per sample** (PATH has one ``*`` component, e.g. ``*/data`` or ``runs/*/u``): the
  ``*`` stands for every member group of the group before it (the file's root for ``*/data``),
  taken in natural order of their names (``2`` before ``10``; ``0002`` before ``0010``); sample
  ``i`` of field NAME is the dataset ``<group i>/<rest of PATH>``, which every sample group must
  hold with one shape and dtype. PDEBench's 2-D diffusion-reaction and shallow-water files
  (``0000/data`` of shape (T, X, Y, C) with ``0000/grid/{x,y,t}``) and its 1-D
  diffusion-sorption file (``0000/data`` (T, X, 1), ``0000/grid/{x,t}``) are of this layout.
  Every ``*`` field must name the same parent group, and the two layouts cannot be mixed in one
  ingest (their sample orders are unrelated).

``PATH[C]`` keeps only index ``C`` of the array's last axis: PDEBench's 2-D fields are
(T, X, Y, C), and ``--field 'u=*/data[0]' --field 'v=*/data[1]'`` makes fields of shape (T, X, Y)
that a field surrogate reads as its state. An index past the last axis is an error naming its
size.

Fields keep the source's dtype (numeric only: bool, integers, floats) and values bit for bit.
``--label NAME`` marks an integer field of per-sample shape ``()`` as the label (classes
``0 .. max``, computed from the data alone, so every rank computes the same list).

Reads are chunked: :meth:`Hdf5Source.read` reads a whole-array field in slabs of at most
:data:`BLOCK_BYTES` along the first axis (a sparse set of rows in a slab as a row selection), and
a sample group's dataset one sample at a time, so memory stays bounded whatever the file size.

Provenance (``details`` in the manifest): the layout; the file's root attributes; per field its
PATH, the source shape and dtype and the dataset's attributes; every other dataset of the file
(outside the sample groups) with its shape, dtype and attributes, and its values when it holds at
most :data:`SMALL_VALUES` elements (coordinates such as ``x-coordinate``); for the sample-group
layout, the groups' count and names, the first group's attributes and small datasets (e.g.
``grid/x``), and which of them differ between groups.

Errors (:class:`~twinhpc.errors.IngestError`, naming the file): a PATH that does not exist (with
what the file holds at the deepest level that does), a PATH that is a group, arrays that disagree
in their first axis (both paths and lengths), sample groups that disagree in shape or dtype (both
groups), a non-numeric dtype, a file holding no dataset, 0 samples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo

#: at most this many bytes of one field are read at once (one slab along the first axis)
BLOCK_BYTES = 16 << 20
#: datasets and attributes of at most this many elements have their values kept in the provenance
SMALL_VALUES = 4096
#: at most this many other datasets / sample-group names are listed in the provenance
MAX_LISTED = 1000
#: at most this many attributes of one object are kept in the provenance (PDEBench's
#: diffusion-sorption file holds one ``<group>/config`` root attribute per sample)
MAX_ATTRS = 100
#: a slab is read whole when at least this fraction of its rows (or this many rows) is wanted
DENSE = 0.5
DENSE_ROWS = 256
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: a channel picked at the end of a --field PATH: "[C]"
_CHANNEL = re.compile(r"\[\s*(\d+)\s*\]\s*$")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key of a group name: digit runs compare as numbers (``2`` < ``10``), ties by the name."""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(name) if p)
    return parts, name


def jsonable(value: Any) -> Any:
    """An HDF5 attribute or small array as JSON: numbers, text (bytes decoded as UTF-8), lists;
    a non-finite float as its text (``"nan"``, ``"inf"``); an array of more than
    :data:`SMALL_VALUES` elements as ``{"dtype", "shape"}`` only."""
    import h5py

    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.size > SMALL_VALUES:
            return {"dtype": str(value.dtype), "shape": list(value.shape)}
        if value.dtype.kind in "biuf":
            return jsonable(value.tolist())
        return [jsonable(v) for v in value.reshape(-1)] if value.ndim else jsonable(value[()])
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def attrs_of(obj) -> dict[str, Any]:
    """The attributes of an HDF5 object as JSON, in natural order of their names, at most
    :data:`MAX_ATTRS` of them (then ``"...": "<n> more attribute(s) not listed"``); one that
    cannot be read is recorded as the text of its error."""
    out: dict[str, Any] = {}
    keys = sorted(obj.attrs, key=natural_key)
    for key in keys[:MAX_ATTRS]:
        try:
            out[key] = jsonable(obj.attrs[key])
        except (OSError, TypeError, ValueError) as e:
            out[key] = f"<unreadable: {' '.join(str(e).split())}>"
    if len(keys) > MAX_ATTRS:
        out["..."] = f"{len(keys) - MAX_ATTRS} more attribute(s) not listed"
    return out


def _describe(obj) -> str:
    import h5py

    if isinstance(obj, h5py.Dataset):
        return f"dataset {obj.dtype} {tuple(obj.shape)}"
    if isinstance(obj, h5py.Group):
        return f"group of {len(obj)}"
    return type(obj).__name__


def listing(group, limit: int = 20) -> str:
    """``name (what), ...`` of a group's members, at most ``limit`` of them."""
    names = sorted(group, key=natural_key)
    if not names:
        return "nothing"
    shown = []
    for n in names[:limit]:
        try:
            shown.append(f"{n} ({_describe(group[n])})")
        except (KeyError, OSError):  # a dangling link
            shown.append(f"{n} (unresolvable link)")
    more = f", ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def _deepest(group, parts: list[str]):
    """The deepest existing group along ``parts`` below ``group``."""
    import h5py

    node = group
    for p in parts:
        child = node.get(p) if p in node else None
        if not isinstance(child, h5py.Group):
            break
        node = child
    return node


class _FieldArg:
    """One ``--field NAME=PATH[C]``: ``parent/*/rest`` split when PATH has a ``*`` component;
    ``[C]`` (optional) picks index ``C`` of the array's last axis (a channel)."""

    def __init__(self, text: str, where: str):
        name, eq, path = text.partition("=")
        name, path = name.strip(), path.strip()
        self.channel: int | None = None
        picked = _CHANNEL.search(path)
        if picked:
            self.channel = int(picked.group(1))
            path = path[: picked.start()]
        elif "[" in path or "]" in path:
            raise IngestError(
                f"{where}: --field {text!r}: a channel is picked by one integer in brackets at the end "
                "(e.g. u=*/data[0])"
            )
        path = path.strip("/")
        if not eq or not name or not path:
            raise IngestError(f"{where}: --field {text!r} must be NAME=PATH (e.g. u=tensor or u=*/data)")
        if not _NAME.match(name):
            raise IngestError(
                f"{where}: --field {text!r}: field name {name!r} may hold only letters, digits, '_', '.' and '-' "
                "(and does not start with '.' or '-')"
            )
        parts = path.split("/")
        stars = [i for i, p in enumerate(parts) if "*" in p]
        if len(stars) > 1 or any(parts[i] != "*" for i in stars):
            raise IngestError(
                f"{where}: --field {text!r}: a PATH may hold one '*', as a whole component (e.g. */data or runs/*/u)"
            )
        if stars and stars[0] == len(parts) - 1:
            raise IngestError(
                f"{where}: --field {text!r}: '*' stands for the sample groups and must be followed by the "
                "dataset inside each (e.g. */data)"
            )
        self.text, self.name, self.path = text, name, path
        self.grouped = bool(stars)
        self.parent = "/".join(parts[: stars[0]]) if stars else ""
        self.rest = "/".join(parts[stars[0] + 1 :]) if stars else ""


class Hdf5Source(Source):
    kind = "hdf5"
    option_help = {
        "field": "NAME=PATH[C], repeatable: an HDF5 dataset (first axis = samples) or a pattern with one '*' "
        "for one group per sample (e.g. */data); [C] keeps channel C of the last axis (e.g. u=*/data[0])",
        "label": "name of an integer field of per-sample shape () to use as the label (classes 0..max)",
    }

    # -- open ---------------------------------------------------------------------------------
    def open(self) -> SourceInfo:
        import h5py

        self.require_exists(directory=False)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise IngestError(f"{self.path}: not a readable HDF5 file ({' '.join(str(e).split())})") from None
        f = self._file
        if not self._has_dataset(f):
            raise IngestError(f"{self.path}: the file is empty (it holds no dataset; the root holds {listing(f)})")
        texts = self.option("field") or []
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise IngestError(
                f"{self.path}: the hdf5 reader needs at least one --field NAME=PATH "
                f"(e.g. --field u=tensor, or --field u=*/data for one group per sample); the root holds {listing(f)}"
            )
        args = [_FieldArg(t, str(self.path)) for t in texts]
        seen: dict[str, str] = {}
        for a in args:
            if a.name in seen:
                raise IngestError(f"{self.path}: --field {seen[a.name]!r} and --field {a.text!r} name one field twice")
            seen[a.name] = a.text
        grouped = [a for a in args if a.grouped]
        if grouped and len(grouped) != len(args):
            plain = next(a for a in args if not a.grouped)
            raise IngestError(
                f"{self.path}: --field {grouped[0].text!r} reads one group per sample and --field {plain.text!r} "
                "a whole array; one ingest reads one layout (their sample orders are unrelated)"
            )
        self._args = args
        self._grouped = bool(grouped)
        if grouped:
            count, fields, field_details = self._open_groups(f, args)
        else:
            count, fields, field_details = self._open_arrays(f, args)
        if count == 0:
            raise IngestError(f"{self.path}: the source is empty (0 samples in {', '.join(a.path for a in args)})")
        used = set() if grouped else {self._datasets[a.name].name for a in args}
        details: dict[str, Any] = {
            "layout": "sample_groups" if grouped else "arrays",
            "file_attrs": attrs_of(f),
            "fields": field_details,
            "arrays": self._other_arrays(f, used, self._sample_parent.name if grouped else None),
        }
        if grouped:
            details["sample_groups"] = self._group_details(args)
        label, classes = self._label(fields, count)
        self._fields = fields
        return SourceInfo(tuple(fields), count, label_field=label, classes=classes, details=details)

    def _has_dataset(self, f) -> bool:
        import h5py

        found = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found.append(name)
                return True  # stops the walk
            return None

        f.visititems(visit)
        return bool(found)

    def _dataset(self, f, path: str, what: str):
        """The dataset at ``path``; an error naming the file, ``what`` and the level's members otherwise."""
        import h5py

        obj = f.get(path) if path in f else None
        if obj is None:
            parts = path.split("/")
            level = _deepest(f, parts[:-1])
            raise IngestError(f"{self.path}: {what}: no {path!r} in the file; {level.name} holds: {listing(level)}")
        if not isinstance(obj, h5py.Dataset):
            raise IngestError(
                f"{self.path}: {what}: {obj.name} is a group, not a dataset; it holds: {listing(obj)}"
                + ("" if "*" in what else " (one group per sample: name the dataset inside with '*', e.g. */data)")
            )
        return obj

    def _check_dtype(self, ds, what: str) -> None:
        kind = ds.dtype.kind
        if kind not in "biuf":
            raise IngestError(
                f"{self.path}: {what}: {ds.name} has dtype {ds.dtype}, which is not numeric "
                "(bool, integer and float arrays only)"
            )

    def _check_channel(self, a: _FieldArg, ds, sample_axes: int, what: str) -> None:
        """A channel ``[C]`` needs a last per-sample axis that holds it."""
        if a.channel is None:
            return
        if sample_axes < 1:
            raise IngestError(f"{self.path}: {what}: {ds.name} has no per-sample axis to pick channel {a.channel} from")
        if a.channel >= ds.shape[-1]:
            raise IngestError(
                f"{self.path}: {what}: {ds.name} has {ds.shape[-1]} channel(s) on its last axis "
                f"(shape {tuple(ds.shape)}); pick one of 0..{ds.shape[-1] - 1}"
            )

    def _open_arrays(self, f, args: list[_FieldArg]):
        self._datasets = {}
        self._channels: dict[str, int | None] = {}
        fields, field_details, lengths = [], {}, {}
        for a in args:
            what = f"--field {a.text}"
            ds = self._dataset(f, a.path, what)
            self._check_dtype(ds, what)
            if ds.ndim == 0:
                raise IngestError(f"{self.path}: {what}: {ds.name} is a scalar; it has no first (sample) axis")
            self._check_channel(a, ds, ds.ndim - 1, what)
            self._datasets[a.name] = ds
            self._channels[a.name] = a.channel
            lengths[a.name] = (ds.name, int(ds.shape[0]))
            per_sample = tuple(map(int, ds.shape[1:]))
            fields.append(FieldSpec(a.name, ds.dtype.name, per_sample if a.channel is None else per_sample[:-1]))
            field_details[a.name] = {
                "path": ds.name,
                "dtype": str(ds.dtype),
                "shape": list(map(int, ds.shape)),
                "attrs": attrs_of(ds),
            } | ({} if a.channel is None else {"channel": a.channel})
        first = next(iter(lengths.values()))
        for path, n in lengths.values():
            if n != first[1]:
                raise IngestError(
                    f"{self.path}: arrays disagree in their first (sample) axis: {first[0]} has {first[1]} rows, "
                    f"{path} has {n}"
                )
        return first[1], fields, field_details

    def _open_groups(self, f, args: list[_FieldArg]):
        import h5py

        parents = {a.parent for a in args}
        if len(parents) > 1:
            raise IngestError(
                f"{self.path}: --field {args[0].text!r} and the others name different parents of the sample groups "
                f"({', '.join(sorted('/' + p for p in parents))}); every '*' must stand for the same groups"
            )
        parent_path = args[0].parent or "/"
        parent = f.get(parent_path) if parent_path in f else None
        if not isinstance(parent, h5py.Group):
            level = _deepest(f, parent_path.strip("/").split("/"))
            raise IngestError(
                f"{self.path}: --field {args[0].text}: no group {parent_path!r} to hold the sample groups; "
                f"{level.name} holds: {listing(level)}"
            )
        names = sorted((n for n in parent if isinstance(parent.get(n), h5py.Group)), key=natural_key)
        if not names:
            raise IngestError(
                f"{self.path}: --field {args[0].text}: {parent.name} holds no groups (one per sample expected); "
                f"it holds: {listing(parent)}"
            )
        self._sample_parent = parent
        self._groups = [parent[n] for n in names]
        fields, field_details = [], {}
        self._rest = {}
        self._channels = {}
        for a in args:
            first = None
            for g in self._groups:
                what = f"--field {a.text}"
                obj = g.get(a.rest) if a.rest in g else None
                if obj is None:
                    level = _deepest(g, a.rest.split("/")[:-1])
                    raise IngestError(
                        f"{self.path}: {what}: sample group {g.name} has no {a.rest!r}; {level.name} holds: "
                        f"{listing(level)}"
                    )
                ds = self._dataset(g, a.rest, what)
                if first is None:
                    self._check_dtype(ds, what)
                    first = ds
                elif ds.shape != first.shape or ds.dtype != first.dtype:
                    raise IngestError(
                        f"{self.path}: {what}: sample groups disagree: {first.name} is {first.dtype} "
                        f"{tuple(first.shape)}, {ds.name} is {ds.dtype} {tuple(ds.shape)}"
                    )
            self._check_channel(a, first, first.ndim, f"--field {a.text}")
            self._rest[a.name] = a.rest
            self._channels[a.name] = a.channel
            shape = tuple(map(int, first.shape))
            fields.append(FieldSpec(a.name, first.dtype.name, shape if a.channel is None else shape[:-1]))
            field_details[a.name] = {
                "path": a.path,
                "dtype": str(first.dtype),
                "shape": list(shape),
                "attrs": attrs_of(first),
            } | ({} if a.channel is None else {"channel": a.channel})
        return len(self._groups), fields, field_details

    def _group_details(self, args: list[_FieldArg]) -> dict[str, Any]:
        """The sample groups in the provenance: parent, count, names, the first group's attributes
        and small datasets, and which of them differ in some other group."""
        import h5py

        names = [g.name.rsplit("/", 1)[-1] for g in self._groups]
        first = self._groups[0]
        fields = {a.rest for a in args}
        small: dict[str, np.ndarray] = {}
        other: dict[str, Any] = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name not in fields:
                entry = {"dtype": str(obj.dtype), "shape": list(map(int, obj.shape))}
                if obj.size <= SMALL_VALUES:
                    small[name] = obj[()]
                    entry["values"] = jsonable(small[name])
                if obj.attrs:
                    entry["attrs"] = attrs_of(obj)
                other[name] = entry

        first.visititems(visit)
        attrs = {k: first.attrs[k] for k in first.attrs}
        attrs_vary: dict[str, int] = {}
        arrays_vary: dict[str, int] = {}
        for g in self._groups[1:]:
            for k, v in attrs.items():
                if k not in g.attrs or not _equal(g.attrs[k], v):
                    attrs_vary[k] = attrs_vary.get(k, 0) + 1
            for name, v in small.items():
                if name not in g or not _equal(g[name][()], v):
                    arrays_vary[name] = arrays_vary.get(name, 0) + 1
        for name, n in arrays_vary.items():
            other[name]["groups_differing_from_first"] = n
        listed = names if len(names) <= MAX_LISTED else None
        return {
            "parent": self._sample_parent.name,
            "count": len(names),
            **({"names": listed} if listed is not None else {"first": names[0], "last": names[-1]}),
            "first_group_attrs": attrs_of(first),
            "attrs_differing_from_first": dict(sorted(attrs_vary.items())),
            "first_group_arrays": other,
        }

    def _other_arrays(self, f, used: set[str], sample_parent: str | None) -> dict[str, Any]:
        """Every dataset outside the fields and the sample groups: shape, dtype, attributes and,
        when small, values (at most :data:`MAX_LISTED` of them, in file order)."""
        import h5py

        out: dict[str, Any] = {}
        left = 0
        prefix = None if sample_parent is None else sample_parent.rstrip("/") + "/"
        samples = {g.name for g in self._groups} if sample_parent is not None else set()

        def inside_sample_group(full: str) -> bool:
            if prefix is None or not full.startswith(prefix):
                return False
            head, _, tail = full[len(prefix) :].partition("/")
            return bool(tail) and prefix + head in samples

        def visit(name, obj):
            nonlocal left
            full = "/" + name
            if not isinstance(obj, h5py.Dataset) or full in used or inside_sample_group(full):
                return
            if len(out) >= MAX_LISTED:
                left += 1
                return
            entry: dict[str, Any] = {"dtype": str(obj.dtype), "shape": list(map(int, obj.shape))}
            if obj.size <= SMALL_VALUES:
                try:
                    entry["values"] = jsonable(obj[()])
                except (OSError, TypeError, ValueError) as e:
                    entry["values"] = f"<unreadable: {' '.join(str(e).split())}>"
            if obj.attrs:
                entry["attrs"] = attrs_of(obj)
            out[name] = entry

        f.visititems(visit)
        if left:
            out["..."] = f"{left} more dataset(s) not listed"
        return out

    def _label(self, fields: list[FieldSpec], count: int) -> tuple[str | None, tuple[str, ...]]:
        label = self.option("label")
        if label is None:
            return None, ()
        spec = next((s for s in fields if s.name == label), None)
        if spec is None:
            raise IngestError(
                f"{self.path}: --label names field {label!r}, which is not among the --field names "
                f"{[s.name for s in fields]}"
            )
        if spec.shape != () or np.dtype(spec.dtype).kind not in "iu":
            raise IngestError(
                f"{self.path}: --label {label}: the label must be an integer field of one value per sample, "
                f"got {spec.dtype} of per-sample shape {spec.shape}"
            )
        top = -1
        for lo in range(0, count, 1 << 20):
            got = self._read_field(label, spec, np.arange(lo, min(count, lo + (1 << 20)), dtype=np.int64))
            if got.size:
                top = max(top, int(got.max()))
        return label, tuple(str(i) for i in range(top + 1))

    # -- read ---------------------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        return {spec.name: self._read_field(spec.name, spec, indices) for spec in self._fields}

    def _read_field(self, name: str, spec: FieldSpec, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *spec.shape), dtype=np.dtype(spec.dtype))
        c = self._channels.get(name)
        try:
            if self._grouped:
                rest = self._rest[name]
                for k, i in enumerate(indices):
                    ds = self._groups[int(i)][rest]
                    if c is not None:
                        out[k] = ds[..., c]
                    elif not spec.shape:
                        out[k] = ds[()]
                    elif out[k].size:
                        ds.read_direct(out, dest_sel=np.s_[k])
            else:
                ds = self._datasets[name]
                rows = max(1, BLOCK_BYTES // max(1, spec.sample_bytes))
                for a, b, lo, hi in slabs(indices, rows):
                    want = indices[a:b]
                    if b - a >= DENSE_ROWS or (b - a) >= DENSE * (hi - lo):
                        out[a:b] = (ds[lo:hi] if c is None else ds[lo:hi, ..., c])[want - lo]
                    else:
                        out[a:b] = ds[want] if c is None else ds[want, ..., c]
        except (OSError, KeyError, ValueError, TypeError) as e:
            where = self._datasets[name].name if not self._grouped else f"*/{self._rest[name]}"
            raise IngestError(
                f"{self.path}: field {name!r} ({where}): cannot read ({' '.join(str(e).split())})"
            ) from None
        return out


def slabs(indices: np.ndarray, rows: int) -> Iterator[tuple[int, int, int, int]]:
    """Cut sorted ``indices`` into runs ``indices[a:b]`` that lie within one slab ``lo:hi`` of at
    most ``rows`` consecutive rows; yields ``(a, b, lo, hi)`` with ``hi = indices[b-1] + 1``."""
    a, n = 0, len(indices)
    while a < n:
        lo = int(indices[a])
        b = int(np.searchsorted(indices, lo + rows, side="left"))
        yield a, b, lo, int(indices[b - 1]) + 1
        a = b


def _equal(a: Any, b: Any) -> bool:
    """Two attribute or dataset values equal (NaN equal to NaN, shapes and dtypes compared)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))
