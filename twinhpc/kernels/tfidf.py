"""Sparse TF-IDF equal to scikit-learn's ``TfidfVectorizer`` on the same vocabulary.

For document ``d`` and vocabulary column ``t`` (tokens as in :mod:`.text`, no stop-word removal:
the vocabulary decides which terms count)::

    tf[d, t]  = occurrences of term t in d            (1 + ln(tf) with sublinear_tf=True)
    idf[t]    = ln((1 + n_docs) / (1 + df[t])) + 1    (smooth idf; df: documents containing t)
    x[d, :]   = tf[d, :] * idf / ||tf[d, :] * idf||_2  (rows without vocabulary terms stay empty)

The result is CSR arrays (:class:`Csr`: ``data`` float64 or float32, ``indices`` int32 sorted
within each row, ``indptr`` int64), the layout of ``scipy.sparse.csr_matrix`` and of
``TfidfVectorizer(vocabulary=vocab.index).fit_transform(docs)``; :func:`to_scipy` converts when
scipy is installed. Across ranks, document frequencies add up::

    df = document_frequencies(my_docs, vocab)                   # DocumentFrequencies
    df = reduce(merge_document_frequencies, comm.allgather(df))  # or Allreduce of counts and n_docs
    x = tfidf_transform(my_docs, vocab, idf_from_df(df))

:func:`tfidf_fit_transform` is both on one corpus (one tokenisation). The Python reference is
:func:`tfidf_reference`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import prange

from . import serial_and_parallel
from .text import Corpus, Vocabulary, lookup_tokens, tokenize


class Csr(NamedTuple):
    """A CSR matrix as arrays: row ``r`` has values ``data[indptr[r]:indptr[r+1]]`` in columns
    ``indices[...]`` (ascending)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]


class DocumentFrequencies(NamedTuple):
    """Documents containing each vocabulary column (int64), and the documents counted."""

    df: np.ndarray
    n_docs: int


def merge_document_frequencies(a: DocumentFrequencies, b: DocumentFrequencies) -> DocumentFrequencies:
    """The frequencies of the union of two disjoint document sets (a pure function).

    Raises
    ------
    ValueError
        ``a`` and ``b`` count different numbers of columns.
    """
    if np.shape(a.df) != np.shape(b.df):
        raise ValueError(f"b: {np.size(b.df)} columns, a has {np.size(a.df)}")
    return DocumentFrequencies(np.asarray(a.df, np.int64) + np.asarray(b.df, np.int64), a.n_docs + b.n_docs)


def idf_from_df(df: DocumentFrequencies) -> np.ndarray:
    """Smooth idf, float64: ``ln((1 + n_docs) / (1 + df)) + 1`` (scikit-learn's ``smooth_idf``)."""
    return np.log((1.0 + df.n_docs) / (1.0 + np.asarray(df.df, np.float64))) + 1.0


def _row_terms(ids, offsets):
    """Each document's distinct columns (ascending) and their counts, at the document's token
    offsets; ``nnz[d + 1]`` of them (ids < 0, terms outside the vocabulary, are skipped)."""
    n = offsets.shape[0] - 1
    cols = np.full(ids.shape[0], -1, np.int32)  # -1: a slot no distinct term filled
    counts = np.empty(ids.shape[0], np.float64)
    nnz = np.zeros(n + 1, np.int64)
    for d in prange(n):
        lo = offsets[d]
        row = np.sort(ids[lo : offsets[d + 1]])
        k, prev = lo, -1
        for t in row:
            if t < 0:
                continue
            if t != prev:
                cols[k] = t
                counts[k] = 1.0
                k += 1
                prev = t
            else:
                counts[k - 1] += 1.0
        nnz[d + 1] = k - lo
    return cols, counts, nnz


def _weights(cols, counts, offsets, indptr, idf, sublinear, indices, data):
    for d in prange(offsets.shape[0] - 1):
        lo, out, m = offsets[d], indptr[d], indptr[d + 1] - indptr[d]
        total = 0.0
        for k in range(m):
            tf = counts[lo + k]
            if sublinear:
                tf = 1.0 + math.log(tf)
            v = tf * idf[cols[lo + k]]
            indices[out + k] = cols[lo + k]
            data[out + k] = v
            total += v * v
        if total > 0.0:
            norm = math.sqrt(total)
            for k in range(m):
                data[out + k] /= norm


_row_terms_serial, _row_terms_parallel = serial_and_parallel(_row_terms)
_weights_serial, _weights_parallel = serial_and_parallel(_weights)


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype}")
    return dtype


def _rows(docs, vocab: Vocabulary, parallel: bool):
    corpus = Corpus(docs)
    ids, offsets = lookup_tokens(corpus, vocab.table(), -1, parallel=parallel)
    cols, counts, nnz = (_row_terms_parallel if parallel else _row_terms_serial)(ids, offsets)
    return offsets, cols, counts, np.cumsum(nnz)


def _csr(rows, vocab, idf, sublinear_tf, dtype, parallel) -> Csr:
    offsets, cols, counts, indptr = rows
    idf = np.ascontiguousarray(idf, np.float64)
    if idf.shape != (len(vocab),):
        raise ValueError(f"idf: expected {len(vocab)} values (one per vocabulary term), got shape {idf.shape}")
    indices = np.empty(indptr[-1], np.int32)
    data = np.empty(indptr[-1], np.float64)
    (_weights_parallel if parallel else _weights_serial)(
        cols, counts, offsets, indptr, idf, bool(sublinear_tf), indices, data
    )
    return Csr(data.astype(dtype, copy=False), indices, indptr, (len(offsets) - 1, len(vocab)))


def document_frequencies(docs: Sequence[str], vocab: Vocabulary, *, parallel: bool = True) -> DocumentFrequencies:
    """Documents of ``docs`` containing each vocabulary term.

    Raises
    ------
    ValueError
        ``docs`` is not a sequence of str.
    """
    return _df_of(_rows(docs, vocab, parallel), len(vocab))


def _df_of(rows, n_terms: int) -> DocumentFrequencies:
    offsets, cols, _, _ = rows
    df = np.bincount(cols[cols >= 0], minlength=n_terms).astype(np.int64)
    return DocumentFrequencies(df, len(offsets) - 1)


def tfidf_transform(
    docs: Sequence[str],
    vocab: Vocabulary,
    idf: np.ndarray,
    *,
    sublinear_tf: bool = False,
    dtype=np.float64,
    parallel: bool = True,
) -> Csr:
    """TF-IDF rows of ``docs`` with a fitted ``idf`` (see the module docstring).

    Parameters
    ----------
    idf : float array (len(vocab),)
        From :func:`idf_from_df` (or scikit-learn's ``idf_``).
    dtype : float32 or float64
        Of ``data`` (computed in float64).
    parallel : bool
        Use Numba's thread pool (True) or only the calling thread (False).

    Raises
    ------
    ValueError
        ``docs`` is not a sequence of str, ``idf`` has the wrong length, or ``dtype`` is not a float.
    """
    dtype = _check_dtype(dtype)
    return _csr(_rows(docs, vocab, parallel), vocab, idf, sublinear_tf, dtype, parallel)


def tfidf_fit_transform(
    docs: Sequence[str], vocab: Vocabulary, *, sublinear_tf: bool = False, dtype=np.float64, parallel: bool = True
) -> tuple[Csr, np.ndarray]:
    """Document frequencies, idf and TF-IDF rows of one corpus, tokenised once: ``(x, idf)``,
    what ``TfidfVectorizer(vocabulary=vocab.index).fit_transform(docs)`` and its ``idf_`` give.

    Raises
    ------
    ValueError
        As :func:`tfidf_transform`.
    """
    dtype = _check_dtype(dtype)
    rows = _rows(docs, vocab, parallel)
    idf = idf_from_df(_df_of(rows, len(vocab)))
    return _csr(rows, vocab, idf, sublinear_tf, dtype, parallel), idf


def tfidf_reference(
    docs: Sequence[str], vocab: Vocabulary, idf: np.ndarray | None = None, *, sublinear_tf: bool = False
) -> tuple[Csr, np.ndarray]:
    """The Python reference: ``re`` tokens, ``Counter`` per document, idf fitted on ``docs``
    unless given; float64."""
    rows = [Counter(vocab.index[t] for t in tokenize(doc) if t in vocab.index) for doc in docs]
    if idf is None:
        df = np.zeros(len(vocab), np.int64)
        for row in rows:
            df[list(row)] += 1
        idf = idf_from_df(DocumentFrequencies(df, len(docs)))
    data, indices, indptr = [], [], [0]
    for row in rows:
        cols = sorted(row)
        v = np.array([(1 + math.log(row[c]) if sublinear_tf else row[c]) * idf[c] for c in cols], np.float64)
        norm = np.sqrt((v * v).sum())
        data.extend((v / norm if norm > 0 else v).tolist())
        indices.extend(cols)
        indptr.append(len(indices))
    return Csr(
        np.array(data, np.float64), np.array(indices, np.int32), np.array(indptr, np.int64), (len(docs), len(vocab))
    ), idf


def to_scipy(x: Csr):
    """``scipy.sparse.csr_matrix`` of ``x`` (shares the arrays). Raises ImportError without scipy."""
    from scipy.sparse import csr_matrix

    return csr_matrix((x.data, x.indices, x.indptr), shape=x.shape)
