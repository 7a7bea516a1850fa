"""``npz``: a NumPy ``.npz`` (or a single ``.npy``) file; one field per array, sample axis first.

``--fields`` picks the arrays before any is loaded, so an array that cannot be ingested (an
object array, which would need unpickling) can be left out; one that is asked for (or every
array, without ``--fields``) is an :class:`~twinhpc.errors.IngestError` naming the file and the
array. Arrays must be numeric (bool, integers, floats).
"""

from __future__ import annotations

import zipfile

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo


class NpzSource(Source):
    kind = "npz"
    option_help = {
        "fields": "comma-separated array names to keep (default: all arrays)",
        "label": "name of the label array (integer class ids); default: 'y' if present",
    }

    def open(self) -> SourceInfo:
        self.require_exists(directory=False)
        try:
            # allow_pickle=False: an object array in a user's file is refused, never unpickled
            self._npz = np.load(self.path, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise IngestError(f"{self.path}: not a readable .npz/.npy file ({e})") from None
        available = ["x"] if isinstance(self._npz, np.ndarray) else list(self._npz.files)
        if not available:
            raise IngestError(f"{self.path}: the .npz file holds no arrays")
        wanted = self.option("fields")
        names = [n.strip() for n in wanted.split(",")] if wanted else sorted(available)
        for n in names:
            if n not in available:
                raise IngestError(f"{self.path}: --fields names array {n!r}, but the file has {sorted(available)}")
        # only the arrays asked for are loaded, so --fields can leave out one that cannot be
        arrays = {n: self._load(n, available) for n in names}
        self._arrays = {n: arrays[n] for n in names}
        counts = {n: (a.shape[0] if a.ndim else None) for n, a in self._arrays.items()}
        if any(c is None for c in counts.values()) or len(set(counts.values())) != 1:
            raise IngestError(f"{self.path}: arrays must share their first (sample) axis; lengths are {counts}")
        count = next(iter(counts.values()))
        if count == 0:
            raise IngestError(f"{self.path}: the source is empty (0 samples)")
        fields = []
        for n, a in self._arrays.items():
            if a.dtype.kind not in "biuf":
                raise IngestError(f"{self.path}: array {n!r} has unsupported dtype {a.dtype} (numeric arrays only)")
            fields.append(FieldSpec(n, a.dtype.name, tuple(int(s) for s in a.shape[1:])))
        label = self.option("label") or ("y" if "y" in self._arrays else None)
        classes: tuple[str, ...] = ()
        if label is not None:
            if label not in self._arrays:
                raise IngestError(
                    f"{self.path}: --label names array {label!r}, which is not among {sorted(self._arrays)}"
                )
            y = np.asarray(self._arrays[label])
            if y.dtype.kind in "iu" and y.ndim == 1:
                classes = tuple(str(i) for i in range(int(y.max()) + 1)) if y.size else ()
        return SourceInfo(
            tuple(fields), int(count), label_field=label, classes=classes, details={"arrays": list(self._arrays)}
        )

    def _load(self, name: str, available: list[str]) -> np.ndarray:
        """Array ``name``; an object array (which would need unpickling) is an error naming it."""
        if isinstance(self._npz, np.ndarray):
            return self._npz
        try:
            return self._npz[name]
        except ValueError as e:
            others = [n for n in available if n != name]
            raise IngestError(
                f"{self.path}: array {name!r} cannot be loaded ({e}); an object array is never unpickled: "
                f"leave it out with --fields (the file also has {others})"
            ) from None
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise IngestError(f"{self.path}: array {name!r} cannot be read ({e})") from None

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(a[indices]) for n, a in self._arrays.items()}
