"""Per-batch transforms: the stored form of a sample, and the model input made from a batch of it.

Each input kind has one transform class, built from the fitted state (:mod:`.fit`):

============  =============================  ==============================================
class         stored field(s) (``encode``)   model input (``__call__``)
============  =============================  ==============================================
``Image``     the uint8 image, unchanged     float32 NCHW, normalised; crop/flip if training
``Sequence``  ``ids`` int32 (max_len)        int64 ids (PAD = 0, UNK = 1)
``MiniLM``    ``ids`` int32 (max_len)        int64 ids of MiniLM's WordPiece tokenizer
``Tfidf``     ``terms`` int32, ``counts``    float32 sparse CSR TF-IDF rows (l2-normalised)
              int32 (width)
``Tabular``   ``x`` float32 (features)       float32 (batch, features)
``Field``     the state, forcing, params     ``{"state", "forcing", "params"}`` float32
              fields, float32, unchanged     tensors, each normalised by its training
                                             mean and std
============  =============================  ==============================================

``encode(batch)`` maps a batch of the *source* dataset (``dict`` field → numpy array, as the
loader yields it) to the stored fields; ``twinhpc preprocess`` writes its output, and
``Prepared.encode`` applies it to new data (``twinhpc predict --input``). ``transform(batch,
train, rng)`` maps a batch of the *preprocessed* dataset to the model input.

Note:
    What is stored is what is expensive to compute and the same every epoch (tokenising,
    vocabulary look-ups, standardising); what is cheap or random stays per batch (image
    normalisation and augmentation: one fused kernel pass, ~1 ms per CIFAR batch; the TF-IDF
    weights of a batch's few thousand non-zeros). Images therefore stay uint8 on disk (4× less
    than float32), and a TF-IDF row is stored as its vocabulary columns and counts, from which
    the row is computed exactly (``tf · idf``, l2-normalised, in float64) with the fitted idf.

Note:
    ``state()`` returns the fitted arrays and settings of a transform, ``from_state`` rebuilds
    it; :mod:`.prepared` stores them in ``state.h5`` (:mod:`twinhpc.io.prepared_state`: arrays
    as datasets, settings as the JSON attribute ``settings``), so each transform owns the
    meaning of its own state.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.format import FieldSpec
from ..kernels import text as ktext
from ..kernels.image import augment_params, normalize_augment
from ..pretrained import minilm_tokenizer, vocab_size

Batch = Mapping[str, np.ndarray]


def _torch():
    import torch  # lazily: `twinhpc preprocess` never needs torch

    return torch


#: whether numba.cuda launched the image kernel in this process: None before the first try,
#: False after a first try failed (numba without a usable CUDA driver, toolkit or NVVM)
_cuda_kernel_usable: bool | None = None


def _image_kernel_on_device(x, mean, std, offsets, flips, pad, device):
    """The image kernel on the GPU ``device`` (a torch CUDA tensor), or ``None`` when numba.cuda
    cannot run it in this process: then, after one warning naming the error, the caller runs
    the host kernel and copies the batch (slower, same bits). Bad arguments still raise, and so
    does any failure after a first success."""
    global _cuda_kernel_usable
    if _cuda_kernel_usable is False:
        return None
    try:
        from ..kernels.cuda_image import normalize_augment_torch

        y = normalize_augment_torch(
            np.ascontiguousarray(x), mean, std, offsets=offsets, flips=flips, pad=pad, device=device
        )
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- numba.cuda's driver, NVVM and linker errors alike
        if _cuda_kernel_usable:
            raise
        _cuda_kernel_usable = False
        import logging

        logging.getLogger("twinhpc").warning(
            "image normalisation and augmentation cannot run on %s here (%s: %s); the host kernel "
            "runs instead and each batch is copied to the device",
            device,
            type(e).__name__,
            e,
        )
        return None
    _cuda_kernel_usable = True
    return y


class Image:
    """Images: stored unchanged (uint8 H×W×C); per batch normalised, and augmented when training.

    Parameters
    ----------
    field : the image field (source and stored name).
    shape : (H, W, C).
    mean, std : per-channel statistics in [0, 1] units; ``None`` for no normalisation
        (``preprocess.image.normalize = false``: values are only scaled to [0, 1]).
    crop_padding, flip : ``[preprocess.image]`` augmentation, applied when ``train=True``.
    """

    kind = "image"

    def __init__(self, field: str, shape, mean=None, std=None, crop_padding: int = 0, flip: bool = False):
        self.field, self.shape = field, tuple(int(s) for s in shape)
        channels = self.shape[-1]
        self.mean = np.zeros(channels) if mean is None else np.asarray(mean, np.float64)
        self.std = np.ones(channels) if std is None else np.asarray(std, np.float64)
        self.normalize = mean is not None
        self.crop_padding, self.flip = int(crop_padding), bool(flip)

    @property
    def stored(self) -> tuple[FieldSpec, ...]:
        return (FieldSpec(self.field, "uint8", self.shape),)

    def encode(self, batch: Batch) -> dict[str, np.ndarray]:
        return {self.field: np.asarray(batch[self.field], np.uint8)}

    def __call__(self, batch: Batch, train: bool = False, rng: np.random.Generator | None = None, device=None):
        """float32 (N, C, H, W) images; on a CUDA ``device`` normalised and augmented there (the
        numba.cuda kernel of :mod:`twinhpc.kernels.cuda_image`, the same bits as on the host),
        unless numba.cuda cannot run in this process: then on the host, with one warning (the
        caller copies the batch to the device)."""
        x = batch[self.field]
        offsets = flips = None
        pad = self.crop_padding if train else 0
        if train and (self.crop_padding or self.flip):
            if rng is None:
                raise ValueError(
                    "rng: a numpy Generator is needed for train=True augmentation "
                    "(e.g. twinhpc.kernels.image.batch_rng(seed, rank, epoch, step))"
                )
            offsets, flips = augment_params(rng, len(x), pad=pad, flip=self.flip)
        if device is not None and _torch().device(device).type == "cuda":
            y = _image_kernel_on_device(x, self.mean, self.std, offsets, flips, pad, device)
            if y is not None:
                return y
        y = normalize_augment(x, self.mean, self.std, offsets=offsets, flips=flips, pad=pad)
        return _torch().from_numpy(y)

    def model_defaults(self) -> dict[str, Any]:
        return {"in_channels": self.shape[2], "input_size": self.shape[0]}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"mean": self.mean, "std": self.std} if self.normalize else {}
        return arrays, {
            "field": self.field,
            "shape": list(self.shape),
            "normalize": self.normalize,
            "crop_padding": self.crop_padding,
            "flip": self.flip,
        }

    @classmethod
    def from_state(cls, arrays, s) -> Image:
        return cls(s["field"], s["shape"], arrays.get("mean"), arrays.get("std"), s["crop_padding"], s["flip"])


def stop_word_list(setting) -> tuple[str, ...]:
    """``preprocess.text.stop_words`` as a sorted tuple (``true``: the built-in English list)."""
    if setting is True:
        return tuple(sorted(ktext.ENGLISH_STOP_WORDS))
    return tuple(sorted(setting)) if setting else ()


class Sequence:
    """Text as padded token ids of the fitted vocabulary: ``ids`` int32 (max_len) on disk, int64
    per batch; PAD = 0, UNK = 1, vocabulary column ``k`` is id ``k + 2``."""

    kind = "sequence"

    def __init__(self, field: str, terms, max_len: int, stop_words=()):
        self.field, self.max_len = field, int(max_len)
        self.vocab = ktext.Vocabulary(list(terms))
        self.stop_words = tuple(stop_words)

    @property
    def stored(self) -> tuple[FieldSpec, ...]:
        return (FieldSpec("ids", "int32", (self.max_len,)),)

    def encode(self, batch: Batch) -> dict[str, np.ndarray]:
        ids = ktext.encode(
            list(batch[self.field]), self.vocab, self.max_len, stop_words=self.stop_words or None, parallel=False
        )
        return {"ids": ids.astype(np.int32)}

    def __call__(self, batch: Batch, train: bool = False, rng=None):
        return _torch().from_numpy(batch["ids"].astype(np.int64))

    def model_defaults(self) -> dict[str, Any]:
        size = len(self.vocab) + ktext.RESERVED
        return {"vocab_size": size, "max_len": self.max_len, "block_size": self.max_len}

    def state(self):
        return {"terms": np.array(self.vocab.terms, dtype=object)}, {
            "field": self.field,
            "max_len": self.max_len,
            "stop_words": list(self.stop_words),
        }

    @classmethod
    def from_state(cls, arrays, s) -> Sequence:
        return cls(s["field"], arrays["terms"], s["max_len"], s["stop_words"])


class MiniLM:
    """Text as ids of MiniLM's own WordPiece tokenizer (``[CLS] … [SEP]``, ``[PAD]`` = 0); nothing
    is fitted (the tokenizer ships with the pretrained weights)."""

    kind = "minilm"

    def __init__(self, field: str, max_len: int):
        self.field, self.max_len = field, int(max_len)
        self._tokenize = None

    @property
    def stored(self) -> tuple[FieldSpec, ...]:
        return (FieldSpec("ids", "int32", (self.max_len,)),)

    def encode(self, batch: Batch) -> dict[str, np.ndarray]:
        if self._tokenize is None:
            self._tokenize = minilm_tokenizer(self.max_len)
        return {"ids": self._tokenize(list(batch[self.field])).numpy().astype(np.int32)}

    def __call__(self, batch: Batch, train: bool = False, rng=None):
        return _torch().from_numpy(batch["ids"].astype(np.int64))

    def model_defaults(self) -> dict[str, Any]:
        return {"vocab_size": vocab_size(), "max_len": self.max_len, "block_size": self.max_len}

    def state(self):
        return {}, {"field": self.field, "max_len": self.max_len}

    @classmethod
    def from_state(cls, arrays, s) -> MiniLM:
        return cls(s["field"], s["max_len"])


def bag_of_terms(docs, vocab: ktext.Vocabulary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each document's distinct vocabulary columns (ascending) and their counts, as CSR arrays
    ``(indptr int64, columns int32, counts int32)``; tokens as :mod:`twinhpc.kernels.text`."""
    corpus = ktext.Corpus(list(docs))
    ids, offsets = ktext.lookup_tokens(corpus, vocab.table(), -1, parallel=False)
    doc = np.repeat(np.arange(len(corpus), dtype=np.int64), np.diff(offsets))
    keep = ids >= 0
    keys, counts = np.unique(doc[keep] * max(len(vocab), 1) + ids[keep], return_counts=True)
    rows = keys // max(len(vocab), 1)
    indptr = np.zeros(len(corpus) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(corpus)), out=indptr[1:])
    return indptr, (keys % max(len(vocab), 1)).astype(np.int32), counts.astype(np.int32)


class Tfidf:
    """Text as TF-IDF rows: stored as the document's distinct vocabulary columns ``terms`` (int32,
    ascending, padded with -1) and their ``counts`` (int32), ``width`` per document (the most
    distinct terms of any document of the dataset); per batch the l2-normalised ``tf · idf``
    rows as a float32 ``torch.sparse_csr`` tensor (batch, len(vocabulary)), equal to
    scikit-learn's ``TfidfVectorizer(vocabulary=...)`` with the idf of the training split."""

    kind = "tfidf"

    def __init__(self, field: str, terms, idf, width: int = 1):
        self.field = field
        self.vocab = ktext.Vocabulary(list(terms))
        self.idf = np.asarray(idf, np.float64)
        self.width = max(1, int(width))

    @property
    def stored(self) -> tuple[FieldSpec, ...]:
        return (FieldSpec("terms", "int32", (self.width,)), FieldSpec("counts", "int32", (self.width,)))

    def widest(self, docs) -> int:
        """The most distinct vocabulary terms of any of ``docs`` (the ``width`` they need)."""
        indptr, _, _ = bag_of_terms(docs, self.vocab)
        return int(np.diff(indptr).max(initial=0))

    def encode(self, batch: Batch, grow: bool = False) -> dict[str, np.ndarray]:
        """``terms`` and ``counts`` (n, ``width``). A document with more distinct vocabulary
        terms than ``width`` is an error, unless ``grow``: then the arrays are as wide as the
        batch needs (new data for prediction; :meth:`__call__` takes any width)."""
        indptr, cols, counts = bag_of_terms(batch[self.field], self.vocab)
        n, nnz = len(indptr) - 1, np.diff(indptr)
        width = self.width
        if nnz.max(initial=0) > width:
            if not grow:
                raise ValueError(
                    f"{self.field}: a document has {nnz.max()} distinct vocabulary terms, "
                    f"more than the stored width {self.width}"
                )
            width = int(nnz.max())
        terms = np.full((n, width), -1, np.int32)
        tf = np.zeros((n, width), np.int32)
        slot = np.arange(len(cols)) - np.repeat(indptr[:-1], nnz)
        row = np.repeat(np.arange(n), nnz)
        terms[row, slot], tf[row, slot] = cols, counts
        return {"terms": terms, "counts": tf}

    def csr(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's TF-IDF rows as CSR arrays ``(indptr int64, indices int32, data float64)``."""
        terms, counts = batch["terms"], batch["counts"]
        mask = terms >= 0
        indptr = np.zeros(len(terms) + 1, np.int64)
        np.cumsum(mask.sum(1), out=indptr[1:])
        cols = terms[mask]
        weights = np.where(mask, counts * self.idf[np.where(mask, terms, 0)], 0.0)
        norms = np.sqrt((weights * weights).sum(1))
        data = (weights / np.where(norms > 0, norms, 1.0)[:, None])[mask]
        return indptr, cols.astype(np.int32), data

    def __call__(self, batch: Batch, train: bool = False, rng=None):
        torch = _torch()
        indptr, cols, data = self.csr(batch)
        with warnings.catch_warnings():  # torch's one-time "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(indptr),
                torch.from_numpy(cols.astype(np.int64)),
                torch.from_numpy(data.astype(np.float32)),
                (len(indptr) - 1, len(self.vocab)),
                check_invariants=False,
            )

    def model_defaults(self) -> dict[str, Any]:
        return {"in_features": len(self.vocab)}

    def state(self):
        return {"terms": np.array(self.vocab.terms, dtype=object), "idf": self.idf}, {
            "field": self.field,
            "width": self.width,
        }

    @classmethod
    def from_state(cls, arrays, s) -> Tfidf:
        return cls(s["field"], arrays["terms"], arrays["idf"], s["width"])


class Tabular:
    """Numeric fields (flattened per sample) and categorical codes (one-hot), concatenated into
    ``x`` float32: numeric values standardised with the training mean/std (when
    ``standardize``), a NaN or inf value replaced by the column's training mean (of its finite
    values) first. ``twinhpc preprocess`` refuses such values unless ``--allow-nonfinite``.

    Parameters
    ----------
    numeric : ``(field, per-sample shape)`` of the numeric input fields, in order.
    categorical : ``(field, levels)`` of the categorical code fields (one-hot, ``len(levels)``
        columns each; a code outside the levels gives all zeros).
    mean, std : per numeric column, training statistics of the finite values; a constant column
        has std 1.
    """

    kind = "tabular"

    def __init__(self, numeric, categorical, mean, std, standardize: bool = True):
        self.numeric = tuple((f, tuple(int(s) for s in shape)) for f, shape in numeric)
        self.categorical = tuple((f, tuple(levels)) for f, levels in categorical)
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.standardize = bool(standardize)

    @property
    def width(self) -> int:
        return len(self.mean) + sum(len(levels) for _, levels in self.categorical)

    @property
    def stored(self) -> tuple[FieldSpec, ...]:
        return (FieldSpec("x", "float32", (self.width,)),)

    def numeric_columns(self, batch: Batch) -> np.ndarray:
        """The numeric fields of ``batch`` as one float64 table (n, columns)."""
        n = len(batch[(self.numeric or self.categorical)[0][0]])
        parts = [np.asarray(batch[f], np.float64).reshape(n, -1) for f, _ in self.numeric]
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))

    def encode(self, batch: Batch) -> dict[str, np.ndarray]:
        x = self.numeric_columns(batch)
        x = np.where(np.isfinite(x), x, self.mean)
        if self.standardize:
            x = (x - self.mean) / self.std
        onehot = [np.arange(len(levels)) == np.asarray(batch[f]).reshape(-1, 1) for f, levels in self.categorical]
        return {"x": np.concatenate([x, *onehot], axis=1).astype(np.float32)}

    def __call__(self, batch: Batch, train: bool = False, rng=None):
        return _torch().from_numpy(np.ascontiguousarray(batch["x"], np.float32))

    def model_defaults(self) -> dict[str, Any]:
        return {"in_features": self.width}

    def state(self):
        return {"mean": self.mean, "std": self.std}, {
            "numeric": [[f, list(s)] for f, s in self.numeric],
            "categorical": [[f, list(levels)] for f, levels in self.categorical],
            "standardize": self.standardize,
        }

    @classmethod
    def from_state(cls, arrays, s) -> Tabular:
        return cls(s["numeric"], s["categorical"], arrays["mean"], arrays["std"], s["standardize"])


#: the roles of a field task's fields, in the order of a model's input channels
FIELD_ROLES = ("state", "forcing", "params")


class Field:
    """The fields of a field task (docs/surrogates.md): a scenario's ``state`` trajectory
    (T+1, *grid), its ``forcing`` (T, *grid) and its ``params`` (P,), the last two optional.
    Stored unchanged as float32; per batch each is normalised with its training mean and std.

    Parameters
    ----------
    fields : role (``state``, ``forcing``, ``params``) → ``(field name, per-sample shape)`` of
        the roles the job has.
    stats : ``<role>_mean``, ``<role>_std`` per role (float64; a scalar for the state and the
        forcing, one per parameter for the params), and ``step_mean``, ``step_std``: the mean and
        std of the state's increment over one saved step, ``state[t+1] − state[t]``, in the
        state's physical units (with a ``prior``: of ``state[t+1] − prior(state[t])``, what the
        prior's step misses). A std of 0 is stored as 1. ``held`` (optional, 1/0 over the grid):
        the nodes whose value no step of any training scenario changed, such as a boundary held
        at a set value; the surrogate keeps them at their input value.
    prior : the physics prior of a hybrid twin (``train.prior``): ``{"kind": "plate", ...}``
        with the fields of :class:`~twinhpc.kernels.heat_spectral.PlateConstants`; None: none.
    forcing_window : forcing frames the model reads per step (``train.forcing_window``): 1, the
        step's own, or 3, those of the steps before and after it too.

    Attributes
    ----------
    grid : the spatial grid (the state's per-sample shape without its time axis).
    steps : T, the saved steps of a scenario.
    """

    kind = "field"

    def __init__(self, fields, stats, prior: dict | None = None, forcing_window: int = 1):
        self.fields = {role: (name, tuple(int(s) for s in shape)) for role, (name, shape) in fields.items()}
        self.stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
        self.prior = dict(prior) if prior else None
        self.forcing_window = int(forcing_window)
        shape = self.fields["state"][1]
        self.steps, self.grid = shape[0] - 1, shape[1:]

    @property
    def params_count(self) -> int:
        """P: the scenario parameters (0 without a params field)."""
        return int(np.prod(self.fields["params"][1], dtype=np.int64)) if "params" in self.fields else 0

    @property
    def stored(self) -> tuple[FieldSpec, ...]:
        return tuple(FieldSpec(name, "float32", shape) for name, shape in self.fields.values())

    def encode(self, batch: Batch) -> dict[str, np.ndarray]:
        return {name: np.asarray(batch[name], np.float32) for name, _ in self.fields.values()}

    def normalize(self, role: str, values: np.ndarray) -> np.ndarray:
        """``values`` of ``role`` (physical units, params as (n, P)) normalised, float32."""
        mean, std = self.stats[f"{role}_mean"], self.stats[f"{role}_std"]
        return ((np.asarray(values, np.float64) - mean) / std).astype(np.float32)

    def __call__(self, batch: Batch, train: bool = False, rng=None):
        """``{"state": (n, T+1, *grid), "forcing": (n, T, *grid), "params": (n, P)}`` normalised
        float32 tensors (the roles the job has)."""
        torch = _torch()
        out = {}
        for role, (name, _) in self.fields.items():
            values = np.asarray(batch[name])
            if role == "params":
                values = values.reshape(len(values), -1)
            out[role] = torch.from_numpy(self.normalize(role, values))
        return out

    def model_defaults(self) -> dict[str, Any]:
        """One input channel for the state, ``forcing_window`` for the forcing, one per parameter;
        one output."""
        forcing = self.forcing_window if "forcing" in self.fields else 0
        return {"in_channels": 1 + forcing + self.params_count, "out_channels": 1}

    def state(self):
        settings: dict[str, Any] = {
            "fields": {role: [name, list(shape)] for role, (name, shape) in self.fields.items()}
        }
        if self.prior:
            settings["prior"] = self.prior
        if self.forcing_window != 1:
            settings["forcing_window"] = self.forcing_window
        return dict(self.stats), settings

    @classmethod
    def from_state(cls, arrays, s) -> Field:
        fields = {role: (name, shape) for role, (name, shape) in s["fields"].items()}
        return cls(fields, arrays, s.get("prior"), int(s.get("forcing_window", 1)))


#: kind → transform class (the ``kind`` attribute of state.h5)
KINDS = {cls.kind: cls for cls in (Image, Sequence, MiniLM, Tfidf, Tabular, Field)}
