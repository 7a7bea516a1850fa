"""``imdb``: the aclImdb directory of the Large Movie Review Dataset.

SRC holds ``train/neg``, ``train/pos``, ``test/neg`` and ``test/pos`` (all four are required),
each of review files named ``<id>_<rating>.txt``, and ``train/unsup`` (unlabelled reviews, rating
0), which is read only with ``--keep-unsup``.

Fields: ``text`` (str: the file decoded as UTF-8, invalid bytes replaced by U+FFFD, otherwise raw:
``<br />`` tags are kept; a NUL character, which HDF5 text cannot hold, replaced by U+FFFD, counted
and recorded in the manifest's provenance as ``replaced_characters``), ``label`` int64 (neg 0,
pos 1, unsup -1; classes ``("neg", "pos")``), ``rating`` int64 (from the file name). Given
splits: ``train``, ``test`` and, for unsup, ``unlabeled``. Global order: train/neg, train/pos,
test/neg, test/pos, train/unsup; in each folder the ``.txt`` files sorted by name. Other files
and hidden files in those folders are ignored; a
``.txt`` file whose name is not ``<id>_<rating>.txt`` is an error naming it.

:meth:`ImdbSource.open` lists the files; :meth:`ImdbSource.read` reads only the requested ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo

CLASSES = ("neg", "pos")
_NAME_RE = re.compile(r"^\d+_(?P<rating>\d+)\.txt$")


class ImdbSource(Source):
    kind = "imdb"
    option_help = {"keep_unsup": "keep train/unsup reviews as split 'unlabeled' (label -1, rating 0)"}

    def open(self) -> SourceInfo:
        self.require_exists(directory=True)
        folders = [(split, cls, label) for split in ("train", "test") for label, cls in enumerate(CLASSES)]
        if self.option("keep_unsup"):
            folders.append(("unlabeled", "unsup", -1))
        files: list[Path] = []
        labels, ratings, splits = [], [], []
        for split, cls, label in folders:
            folder = self.path / ("test" if split == "test" else "train") / cls
            if not folder.is_dir():
                what = "--keep-unsup needs" if cls == "unsup" else "an aclImdb directory has"
                raise IngestError(
                    f"{folder}: missing folder ({what} train/neg, train/pos, test/neg, test/pos"
                    f"{', train/unsup' if cls == 'unsup' else ''})"
                )
            for p in sorted(folder.iterdir()):
                if p.name.startswith(".") or p.suffix != ".txt" or not p.is_file():
                    continue
                m = _NAME_RE.match(p.name)
                if m is None:
                    raise IngestError(f"{p}: review file name is not <id>_<rating>.txt")
                files.append(p)
                labels.append(label)
                ratings.append(int(m["rating"]))
                splits.append(split)
        if not files:
            raise IngestError(f"{self.path}: the source is empty (no <id>_<rating>.txt reviews)")
        self._files = files
        self._labels = np.asarray(labels, dtype=np.int64)
        self._ratings = np.asarray(ratings, dtype=np.int64)
        fields = (FieldSpec("text", "str"), FieldSpec("label", "int64"), FieldSpec("rating", "int64"))
        return SourceInfo(
            fields,
            len(files),
            label_field="label",
            classes=CLASSES,
            given_split=np.asarray(splits),
            details={"keep_unsup": bool(self.option("keep_unsup"))},
        )

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Read the review files at ``indices``; an unreadable file raises IngestError naming it."""
        text = np.empty(len(indices), dtype=object)
        for k, i in enumerate(indices):
            path = self._files[i]
            try:
                raw = path.read_bytes().decode("utf-8", errors="replace")
                line = raw.count("\n", 0, max(raw.find("\0"), 0)) + 1
                text[k] = self.storable(raw, f"{path}:{line}")
            except OSError as e:
                raise IngestError(f"{path}: cannot read ({e.strerror})") from None
        return {"text": text, "label": self._labels[indices], "rating": self._ratings[indices]}
