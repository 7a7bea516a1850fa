"""``cifar10``: the directory of the official CIFAR-10 python batches.

SRC holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (pickled dicts with keys
``b'data'``: uint8 (n, 3072), each row the red, green and blue 32x32 planes; ``b'labels'``: n class
ids) and optionally ``batches.meta`` (``b'label_names'``: the class names; without it the classes
are named ``"0"`` ... ``"9"``).

Fields: ``image`` uint8 (32, 32, 3) height x width x RGB, ``label`` int64. Global order: the five
training batches in order, then ``test_batch``; the given split is ``train`` for the former and
``test`` for the latter (validation is cut from ``train`` by ingest).

Security: the batches are pickles, and unpickling can run code. They are read with a restricted
unpickler that resolves only NumPy's array reconstruction (``numpy[._]core.multiarray._reconstruct``,
``numpy[._]core.numeric._frombuffer`` of protocol 5, ``numpy.ndarray``, ``numpy.dtype``) and the
two calls by which Python 3's protocol 2 writes ``bytes`` (``_codecs.encode(text, 'latin1')``
and ``bytes()``, each replaced by a function that accepts exactly those arguments); any other
global in a file is refused with an :class:`~twinhpc.errors.IngestError` naming the file, before
anything in it is called. So batches pickled by Python 2 (the official files) and by Python 3
with any protocol (2 to 5) read the same. Keys may be ``bytes`` (``b'data'``) or ``str``.

Every batch is unpickled once in :meth:`Cifar10Source.open` and kept in memory (the whole set is
180 MB), so :meth:`Cifar10Source.read` only gathers rows.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ...errors import IngestError
from ..format import FieldSpec
from ..source import Source, SourceInfo

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
_SIDE = 32


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3's protocol-2 pickles call it for ``bytes``: ``(str, 'latin1')``
    only; any other call is refused."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"refusing _codecs.encode of {type(obj).__name__} with {encoding!r}")
    return obj.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as Python 3's protocol-2 pickles call it for ``b''``; any argument is refused."""
    if args:
        raise pickle.UnpicklingError("refusing bytes() with arguments")
    return b""


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays, and the bytes of Python 3's protocol 2, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }
    #: protocol 2 written by Python 3 spells every ``bytes`` object as one of these calls
    _BYTES = {
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # the official files were pickled by Python 2
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self._BYTES:
            return self._BYTES[(module, name)]
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise IngestError(
                f"{self._path}: refusing to unpickle global {module}.{name} "
                "(a CIFAR-10 batch holds only NumPy arrays, lists and strings)"
            )
        return super().find_class(*target)


def load_pickle(path: Path) -> object:
    """Unpickle ``path`` with :class:`_ArrayUnpickler`.

    Raises :class:`IngestError` naming ``path`` when it is missing, not a pickle, truncated or
    references a forbidden global.
    """
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, path).load()
    except IngestError:
        raise
    except FileNotFoundError:
        raise IngestError(f"{path}: CIFAR-10 batch file is missing") from None
    except OSError as e:
        raise IngestError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a file that is no pickle
        raise IngestError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None


def _batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data (n, 3072) uint8, labels (n,) int64)`` of one batch file; IngestError naming it otherwise."""
    d = load_pickle(path)
    if isinstance(d, dict):
        d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise IngestError(f"{path}: not a CIFAR-10 python batch (expected a dict with keys b'data' and b'labels')")
    data, labels = d[b"data"], np.asarray(d[b"labels"])
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * _SIDE * _SIDE
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise IngestError(f"{path}: b'data' must be uint8 of shape (n, {3 * _SIDE * _SIDE}), got {got}")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise IngestError(f"{path}: b'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    return data, labels.astype(np.int64)


class Cifar10Source(Source):
    kind = "cifar10"
    option_help: dict[str, str] = {}

    def open(self) -> SourceInfo:
        self.require_exists(directory=True)
        if not any(self.path.iterdir()):
            raise IngestError(f"{self.path}: the source is empty (an empty directory)")
        missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (self.path / n).is_file()]
        if len(missing) == len(TRAIN_BATCHES) + 1:
            raise IngestError(f"{self.path}: not a CIFAR-10 python directory (no data_batch_1..5, test_batch)")
        if missing:
            raise IngestError(f"{self.path / missing[0]}: CIFAR-10 batch file is missing")
        datas, labels, splits = [], [], []
        for name in (*TRAIN_BATCHES, TEST_BATCH):
            data, y = _batch(self.path / name)
            datas.append(data)
            labels.append(y)
            splits.append(np.full(len(y), "test" if name == TEST_BATCH else "train"))
        self._data = np.concatenate(datas)
        self._labels = np.concatenate(labels)
        if len(self._labels) == 0:
            raise IngestError(f"{self.path}: the source is empty (0 samples in the batches)")
        classes = self._classes()
        bad = (self._labels < 0) | (self._labels >= len(classes))
        if bad.any():
            raise IngestError(f"{self.path}: label {self._labels[bad][0]} is outside the {len(classes)} classes")
        fields = (FieldSpec("image", "uint8", (_SIDE, _SIDE, 3)), FieldSpec("label", "int64"))
        return SourceInfo(
            fields,
            len(self._labels),
            label_field="label",
            classes=classes,
            given_split=np.concatenate(splits),
            details={"files": [*TRAIN_BATCHES, TEST_BATCH]},
        )

    def _classes(self) -> tuple[str, ...]:
        meta = self.path / META
        if not meta.is_file():
            return tuple(str(i) for i in range(10))
        d = load_pickle(meta)
        names = d.get(b"label_names", d.get("label_names")) if isinstance(d, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
            raise IngestError(f"{meta}: expected a dict with b'label_names', a list of class names")
        return tuple(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names)

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Gather the images at ``indices`` from memory (no I/O, no failure modes)."""
        planes = self._data[indices].reshape(len(indices), 3, _SIDE, _SIDE)
        return {"image": np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), "label": self._labels[indices]}
