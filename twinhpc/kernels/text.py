"""Text preprocessing: tokens, term counts that merge across ranks, vocabularies, token-id sequences.

Tokens follow scikit-learn's defaults: the document is lower-cased (``str.lower``) and the tokens
are the matches of :data:`TOKEN_PATTERN` ``(?u)\\b\\w\\w+\\b``, i.e. the maximal runs of two or
more word characters (``str.isalnum()`` or ``_``, Unicode-aware). :func:`tokenize` does this with
Python's ``re``; it is the reference. The kernels tokenise in Numba instead (below).

The flow, per rank and merged by the caller::

    local = count_terms(my_docs, stop_words=ENGLISH_STOP_WORDS)          # TermCounts
    counts = reduce(merge_term_counts, comm.allgather(local))           # same on every rank
    vocab = build_vocabulary(counts, min_freq=5, max_size=30_000)       # by count desc, term asc
    ids = encode(batch_docs, vocab, max_len=256, stop_words=ENGLISH_STOP_WORDS)  # int64 (n, 256)

Sequence ids: :data:`PAD` = 0, :data:`UNK` = 1, the vocabulary's term of column ``k`` is
``k + RESERVED``; :mod:`.tfidf` uses the columns ``k`` directly.

Note: tokenising Python strings one token at a time costs about as much as the rest of a TF-IDF
pipeline together (a regex match object or a ``str`` per token, then a dict lookup). The kernels
therefore never make a Python object per token: the documents are lower-cased and concatenated
(C speed), encoded as one UTF-32 code-point array, and scanned in Numba, which finds the runs of
word characters (ASCII from a table, other code points from a per-corpus table filled by
``str.isalnum``) and looks each run up in an open-addressing hash table of code-point strings
(FNV-1a). Fitting a vocabulary (:func:`count_terms`) inserts into that table and runs on one
thread; looking terms up (:func:`encode`, TF-IDF) runs in parallel over documents. The one loop
left in Python is ``str.lower`` per document (C inside); a C++ version would gain little there.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from . import serial_and_parallel

#: scikit-learn's default token pattern (``CountVectorizer(token_pattern=...)``)
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
#: padding id of :func:`encode`
PAD = 0
#: id of a term outside the vocabulary in :func:`encode`
UNK = 1
#: ids below this are reserved (PAD, UNK); vocabulary column ``k`` has sequence id ``k + RESERVED``
RESERVED = 2

#: A built-in English stop-word list, written for twinhpc: articles, pronouns, auxiliary and modal
#: verbs, prepositions, conjunctions, and common adverbs and determiners. Only tokens of two or
#: more characters are listed (shorter ones are never tokens), and the clitic remnants that the
#: token pattern leaves (``don`` of "don't", ``ll`` of "we'll", ...). It is not scikit-learn's
#: ``ENGLISH_STOP_WORDS``; to compare with scikit-learn, give both the same list.
ENGLISH_STOP_WORDS = frozenset(
    """
about above after again against all almost also although am among an and another any anyone
anything are around as at be because been before being below between both but by can cannot could
did do does doing done down during each either else enough even ever every few for from further
had has have having he her here hers herself him himself his how however if in into is it its
itself just least less many may me might mine more most much must my myself neither no nor not now
of off often on once only onto or other others otherwise our ours ourselves out over own per
perhaps rather same several shall she should since so some such than that the their theirs them
themselves then there therefore these they this those though through throughout thus to too
toward towards under until up upon us very via was we well were what whatever when whenever where
whereas wherever whether which while who whoever whom whose why will with within without would
yet you your yours yourself yourselves
ll ve re don doesn didn isn aren wasn weren hasn haven hadn won wouldn shouldn couldn
""".split()
)


def tokenize(doc: str, stop_words: Iterable[str] | None = None) -> list[str]:
    """The tokens of one document with Python's ``re`` (the reference of the Numba tokeniser).

    Raises
    ------
    ValueError
        ``doc`` is not a ``str``.
    """
    if not isinstance(doc, str):
        raise ValueError(f"doc: expected a str, got {type(doc).__name__}")
    tokens = _TOKEN_RE.findall(doc.lower())
    if stop_words:
        stop = stop_words if isinstance(stop_words, (set, frozenset)) else frozenset(stop_words)
        tokens = [t for t in tokens if t not in stop]
    return tokens


# -- code points and word characters -----------------------------------------------------------
_ASCII_WORD = np.array([chr(c).isalnum() or c == 0x5F for c in range(128)], np.uint8)


class Corpus:
    """Documents lower-cased into one UTF-32 code-point array: ``codepoints[starts[d]:starts[d+1]]``
    is document ``d``; ``extra`` lists the non-ASCII code points of the corpus that are word
    characters (sorted)."""

    def __init__(self, docs: Sequence[str]):
        docs = _check_docs(docs)
        lowered = [d.lower() for d in docs]
        self.starts = np.zeros(len(docs) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, lowered), np.int64, len(docs)), out=self.starts[1:])
        self.codepoints = np.frombuffer("".join(lowered).encode("utf-32-le"), np.uint32)
        other = np.unique(self.codepoints[self.codepoints >= 128])
        self.extra = np.array([c for c in other.tolist() if chr(c).isalnum()], np.uint32)

    def __len__(self) -> int:
        return len(self.starts) - 1


def _check_docs(docs) -> list[str]:
    if isinstance(docs, str):
        raise ValueError("docs: expected a sequence of str, got one str")
    docs = list(docs)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise ValueError(f"docs[{i}]: expected a str, got {type(d).__name__}")
    return docs


@njit(cache=True, nogil=True)
def _is_word(c, extra):
    if c < 128:
        return _ASCII_WORD[c] != 0
    lo, hi = 0, extra.shape[0]  # binary search of the sorted non-ASCII word characters
    while lo < hi:
        mid = (lo + hi) >> 1
        if extra[mid] < c:
            lo = mid + 1
        else:
            hi = mid
    return lo < extra.shape[0] and extra[lo] == c


@njit(cache=True, nogil=True)
def _doc_spans(cp, start, end, extra):
    """(tokens, 2) int64: [start, stop) of each token of cp[start:end] (a one-pass state machine:
    a token is a run of >= 2 word characters)."""
    spans = np.empty(((end - start + 1) // 3 + 1, 2), np.int64)  # a token and a separator: >= 3
    n, run = 0, 0
    for i in range(start, end):
        if _is_word(cp[i], extra):
            run += 1
        else:
            if run >= 2:
                spans[n, 0], spans[n, 1] = i - run, i
                n += 1
            run = 0
    if run >= 2:
        spans[n, 0], spans[n, 1] = end - run, end
        n += 1
    return spans[:n]


def _count_tokens(cp, starts, extra):
    n = starts.shape[0] - 1
    counts = np.zeros(n + 1, np.int64)
    for d in prange(n):
        counts[d + 1] = _doc_spans(cp, starts[d], starts[d + 1], extra).shape[0]
    return counts


_count_tokens_serial, _count_tokens_parallel = serial_and_parallel(_count_tokens)


def token_offsets(corpus: Corpus, *, parallel: bool = True) -> np.ndarray:
    """int64 (n_docs + 1): document ``d``'s tokens are ``offsets[d]:offsets[d+1]`` of the flat
    token arrays of the other functions."""
    counts = (_count_tokens_parallel if parallel else _count_tokens_serial)(
        corpus.codepoints, corpus.starts, corpus.extra
    )
    return np.cumsum(counts)


# -- the hash table of code-point strings -----------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _hash(cp, s, e):
    h = np.uint64(14695981039346656037)
    for i in range(s, e):
        h = (h ^ np.uint64(cp[i])) * np.uint64(1099511628211)
    return h


@njit(cache=True, nogil=True)
def _find(slots, store, term_starts, cp, s, e):
    """Index of the term cp[s:e] in the table, or -(slot + 1) of the empty slot where it belongs."""
    mask = slots.shape[0] - 1
    slot = np.int64(_hash(cp, s, e) & np.uint64(mask))
    n = e - s
    while True:
        t = slots[slot]
        if t < 0:
            return -(slot + 1)
        a = term_starts[t]
        if term_starts[t + 1] - a == n:
            same = True
            for i in range(n):
                if store[a + i] != cp[s + i]:
                    same = False
                    break
            if same:
                return t
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def _build_slots(store, term_starts, size):
    slots = np.full(size, -1, np.int64)
    for t in range(term_starts.shape[0] - 1):
        r = _find(slots, store, term_starts, store, term_starts[t], term_starts[t + 1])
        if r < 0:  # a repeated term keeps its first index
            slots[-r - 1] = t
    return slots


def _table_size(n_terms: int) -> int:
    return 1 << max(4, int(2 * max(n_terms, 1) - 1).bit_length())  # load factor <= 1/2


class TermTable:
    """Terms (str) → int values, as a Numba hash table over code points (built once, read-only).

    Raises
    ------
    ValueError
        A term is not a str.
    """

    def __init__(self, terms: Sequence[str], values):
        terms = _check_docs(terms)
        self.values = np.ascontiguousarray(values, np.int64)
        if self.values.shape != (len(terms),):
            raise ValueError(f"values: expected {len(terms)} integers, got shape {self.values.shape}")
        self.term_starts = np.zeros(len(terms) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, terms), np.int64, len(terms)), out=self.term_starts[1:])
        self.store = np.frombuffer("".join(terms).encode("utf-32-le"), np.uint32)
        self.slots = _build_slots(self.store, self.term_starts, _table_size(len(terms)))


def _lookup(cp, starts, extra, offsets, slots, store, term_starts, values, default, out):
    for d in prange(starts.shape[0] - 1):
        spans = _doc_spans(cp, starts[d], starts[d + 1], extra)
        for j in range(spans.shape[0]):
            t = _find(slots, store, term_starts, cp, spans[j, 0], spans[j, 1])
            out[offsets[d] + j] = values[t] if t >= 0 else default
    return out


_lookup_serial, _lookup_parallel = serial_and_parallel(_lookup)


def lookup_tokens(
    corpus: Corpus, table: TermTable, default: int, *, parallel: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Every token's value in ``table`` (``default`` if absent), flat, in document order.

    Returns
    -------
    ids : numpy.ndarray of int64, shape (n_tokens,)
    offsets : numpy.ndarray of int64, shape (n_docs + 1,)
        Document ``d``'s tokens are ``ids[offsets[d]:offsets[d+1]]``.
    """
    offsets = token_offsets(corpus, parallel=parallel)
    ids = np.empty(offsets[-1], np.int64)
    kernel = _lookup_parallel if parallel else _lookup_serial
    kernel(
        corpus.codepoints,
        corpus.starts,
        corpus.extra,
        offsets,
        table.slots,
        table.store,
        table.term_starts,
        table.values,
        np.int64(default),
        ids,
    )
    return ids, offsets


@njit(cache=True, nogil=True)
def _insert_terms(cp, starts, extra, n_tokens):
    """Term index (first-occurrence order) of every token; the table grows as terms appear."""
    ids = np.empty(n_tokens, np.int64)
    store = np.empty(cp.shape[0], np.uint32)  # the terms' code points, concatenated
    term_starts = np.zeros(n_tokens + 1, np.int64)
    slots = np.full(1 << 16, -1, np.int64)
    n_terms, k = 0, 0
    for d in range(starts.shape[0] - 1):
        spans = _doc_spans(cp, starts[d], starts[d + 1], extra)
        for j in range(spans.shape[0]):
            s, e = spans[j, 0], spans[j, 1]
            t = _find(slots, store, term_starts, cp, s, e)
            if t < 0:
                a = term_starts[n_terms]
                store[a : a + e - s] = cp[s:e]
                term_starts[n_terms + 1] = a + e - s
                slots[-t - 1] = n_terms
                t = n_terms
                n_terms += 1
                if 2 * n_terms > slots.shape[0]:
                    slots = _build_slots(store, term_starts[: n_terms + 1], 2 * slots.shape[0])
            ids[k] = t
            k += 1
    return ids, store[: term_starts[n_terms]].copy(), term_starts[: n_terms + 1].copy()


@njit(cache=True, nogil=True)
def _tf_df(ids, offsets, n_terms):
    """Occurrences and documents containing each term (negative ids skipped)."""
    tf = np.zeros(n_terms, np.int64)
    df = np.zeros(n_terms, np.int64)
    last = np.full(n_terms, -1, np.int64)
    for d in range(offsets.shape[0] - 1):
        for k in range(offsets[d], offsets[d + 1]):
            t = ids[k]
            if t < 0:
                continue
            tf[t] += 1
            if last[t] != d:
                last[t] = d
                df[t] += 1
    return tf, df


def _decode_terms(store: np.ndarray, term_starts: np.ndarray) -> list[str]:
    text = store.tobytes().decode("utf-32-le")
    return [text[a:b] for a, b in zip(term_starts[:-1].tolist(), term_starts[1:].tolist())]


# -- term counts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TermCounts:
    """Per-term statistics of a set of documents, mergeable with :func:`merge_term_counts`.

    Attributes
    ----------
    terms : tuple of str
        Sorted (by code point), distinct.
    tf : numpy.ndarray of int64
        Occurrences of each term.
    df : numpy.ndarray of int64
        Documents containing each term.
    n_docs : int
        Documents counted (including those without tokens).
    """

    terms: tuple[str, ...]
    tf: np.ndarray = field(repr=False)
    df: np.ndarray = field(repr=False)
    n_docs: int

    @classmethod
    def from_unsorted(cls, terms: Sequence[str], tf, df, n_docs: int) -> TermCounts:
        order = sorted(range(len(terms)), key=terms.__getitem__)
        return cls(
            tuple(terms[i] for i in order),
            np.asarray(tf, np.int64)[order],
            np.asarray(df, np.int64)[order],
            int(n_docs),
        )


def merge_term_counts(a: TermCounts, b: TermCounts) -> TermCounts:
    """The counts of the union of two disjoint document sets (a pure function; an empty
    ``TermCounts((), [], [], 0)`` is its identity)."""
    terms = np.array(a.terms + b.terms, dtype=str)
    unique, inverse = np.unique(terms, return_inverse=True)
    tf = np.zeros(len(unique), np.int64)
    df = np.zeros(len(unique), np.int64)
    np.add.at(tf, inverse, np.concatenate([a.tf, b.tf]).astype(np.int64))
    np.add.at(df, inverse, np.concatenate([a.df, b.df]).astype(np.int64))
    return TermCounts(tuple(unique.tolist()), tf, df, a.n_docs + b.n_docs)


def count_terms(docs: Sequence[str], *, stop_words: Iterable[str] | None = None) -> TermCounts:
    """Occurrences and document frequencies of every token of ``docs`` (Numba; the hash-table
    inserts run on one thread).

    Raises
    ------
    ValueError
        ``docs`` is not a sequence of str (the message names the first bad element).
    """
    corpus = Corpus(docs)
    offsets = token_offsets(corpus)
    ids, store, term_starts = _insert_terms(corpus.codepoints, corpus.starts, corpus.extra, offsets[-1])
    terms = _decode_terms(store, term_starts)
    tf, df = _tf_df(ids, offsets, len(terms))
    if stop_words:
        stop = frozenset(stop_words)
        keep = [i for i, t in enumerate(terms) if t not in stop]
        terms, tf, df = [terms[i] for i in keep], tf[keep], df[keep]
    return TermCounts.from_unsorted(terms, tf, df, len(corpus))


def count_terms_reference(docs: Sequence[str], *, stop_words: Iterable[str] | None = None) -> TermCounts:
    """The Python reference of :func:`count_terms` (``re`` and ``collections.Counter``)."""
    docs = _check_docs(docs)
    tf, df = Counter(), Counter()
    for doc in docs:
        tokens = tokenize(doc, stop_words)
        tf.update(tokens)
        df.update(set(tokens))
    terms = sorted(tf)
    return TermCounts(
        tuple(terms), np.array([tf[t] for t in terms], np.int64), np.array([df[t] for t in terms], np.int64), len(docs)
    )


# -- vocabulary and sequences ------------------------------------------------------------------
class Vocabulary:
    """Terms in column order: ``terms[k]`` is TF-IDF column ``k`` and sequence id ``k + RESERVED``.

    ``index`` (term → column) is what scikit-learn takes as ``vocabulary=``.
    """

    def __init__(self, terms: Sequence[str]):
        self.terms = tuple(_check_docs(terms))
        self.index = {t: k for k, t in enumerate(self.terms)}
        if len(self.index) != len(self.terms):
            raise ValueError("terms: contains a repeated term")
        self._tables: dict = {}

    def __len__(self) -> int:
        return len(self.terms)

    def table(self, offset: int = 0, stop_words: Iterable[str] | None = None) -> TermTable:
        """The hash table term → column + ``offset`` (stop words → -1), built once and kept."""
        stop = frozenset(stop_words or ())
        key = (offset, stop)
        if key not in self._tables:
            extra = sorted(stop - self.index.keys())
            values = [-1 if t in stop else k + offset for k, t in enumerate(self.terms)] + [-1] * len(extra)
            self._tables[key] = TermTable(list(self.terms) + extra, values)
        return self._tables[key]


def build_vocabulary(
    counts: TermCounts, *, min_freq: int = 1, max_size: int | None = None, by: str = "tf"
) -> Vocabulary:
    """The terms with frequency >= ``min_freq``, most frequent first (ties: term ascending), at
    most ``max_size`` of them.

    Parameters
    ----------
    by : {"tf", "df"}
        Frequency = occurrences (``tf``) or documents containing the term (``df``).

    Raises
    ------
    ValueError
        ``by`` is not "tf" or "df", ``min_freq`` < 1 or ``max_size`` < 0.
    """
    if by not in ("tf", "df"):
        raise ValueError(f"by: expected 'tf' or 'df', got {by!r}")
    if min_freq < 1:
        raise ValueError(f"min_freq: must be >= 1, got {min_freq}")
    if max_size is not None and max_size < 0:
        raise ValueError(f"max_size: must be >= 0 or None, got {max_size}")
    freq = counts.tf if by == "tf" else counts.df
    order = np.argsort(-freq, kind="stable")  # terms are sorted: ties stay term-ascending
    order = order[freq[order] >= min_freq][:max_size]
    return Vocabulary([counts.terms[i] for i in order.tolist()])


def _pad_truncate(ids, offsets, max_len, out):
    for d in prange(offsets.shape[0] - 1):
        j = 0
        for k in range(offsets[d], offsets[d + 1]):
            if j == max_len:
                break
            if ids[k] >= 0:
                out[d, j] = ids[k]
                j += 1
        out[d, j:] = PAD
    return out


_pad_serial, _pad_parallel = serial_and_parallel(_pad_truncate)


def encode(
    docs: Sequence[str],
    vocab: Vocabulary,
    max_len: int,
    *,
    stop_words: Iterable[str] | None = None,
    parallel: bool = True,
) -> np.ndarray:
    """Token-id sequences, int64 (n_docs, max_len): the first ``max_len`` tokens that are not stop
    words, as ids (column + RESERVED, UNK for a term outside ``vocab``), then PAD.

    Raises
    ------
    ValueError
        ``max_len`` < 1, or ``docs`` is not a sequence of str.
    """
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    corpus = Corpus(docs)
    ids, offsets = lookup_tokens(corpus, vocab.table(RESERVED, stop_words), UNK, parallel=parallel)
    out = np.empty((len(corpus), max_len), np.int64)
    return (_pad_parallel if parallel else _pad_serial)(ids, offsets, int(max_len), out)


def encode_reference(
    docs: Sequence[str], vocab: Vocabulary, max_len: int, *, stop_words: Iterable[str] | None = None
) -> np.ndarray:
    """The Python reference of :func:`encode`."""
    out = np.full((len(docs), max_len), PAD, np.int64)
    for d, doc in enumerate(docs):
        tokens = tokenize(doc, stop_words)[:max_len]
        out[d, : len(tokens)] = [vocab.index.get(t, UNK - RESERVED) + RESERVED for t in tokens]
    return out


def synthetic_corpus(
    n_docs: int = 25_000, words_per_doc: int = 230, vocab_size: int = 50_000, *, zipf: float = 1.07, seed: int = 0
) -> list[str]:
    """Test and benchmark input: IMDB-like documents (about ``words_per_doc`` words, from 0.5× to
    1.5×) drawn from a Zipf distribution over ``vocab_size`` random words, with capitals,
    punctuation, ``<br />`` breaks, one-letter words, digits, ``don't``-style clitics and a few
    non-ASCII words (``café``, ``straße``, ``naïve``), so that tokenisation has work to do."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    special = ["café", "straße", "naïve", "don't", "it's", "a", "I", "x2", "2024", "snake_case", "Ωmega"]
    words: set[str] = set()
    while len(words) < vocab_size:
        words.update("".join(rng.choice(letters, n)) for n in rng.integers(2, 11, size=vocab_size).tolist())
    words = np.array((special + sorted(words - set(special)))[:vocab_size], dtype=object)
    rng.shuffle(words)
    p = 1.0 / np.arange(1, vocab_size + 1) ** zipf
    lengths = rng.integers(words_per_doc // 2, words_per_doc * 3 // 2 + 1, size=n_docs)
    tokens = words[rng.choice(vocab_size, size=int(lengths.sum()), p=p / p.sum())]
    style = rng.random(tokens.shape[0])
    tokens[style < 0.05] = [w.capitalize() for w in tokens[style < 0.05]]
    tokens[(style >= 0.05) & (style < 0.1)] += "."
    tokens[(style >= 0.1) & (style < 0.12)] += ","
    tokens[(style >= 0.12) & (style < 0.125)] += " <br /><br />"
    ends = np.cumsum(lengths)
    return [" ".join(tokens[e - n : e]) for e, n in zip(ends.tolist(), lengths.tolist())]
