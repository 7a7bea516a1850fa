"""twinhpc.kernels.text: the Numba tokeniser, counts, vocabulary and sequences against ``re``."""

from functools import reduce

import numpy as np
import pytest

from twinhpc.kernels import text

TRICKY = [
    "",
    "a b c",
    "Don't STOP—believing!",
    "İstanbul ΣΑΣ x_y __ 12 ½½ e\u0301e",
    "tab\there\nnew_line",
    "snake_case and CamelCase",
    "日本語のテキスト ١٢٣ digits",
    "ǅemal ǈ ﬁne",
]


@pytest.fixture(scope="module")
def corpus():
    return text.synthetic_corpus(400, 60, 800, seed=5) + TRICKY


def assert_counts(a: text.TermCounts, b: text.TermCounts) -> None:
    assert a.terms == b.terms and a.n_docs == b.n_docs
    np.testing.assert_array_equal(a.tf, b.tf)
    np.testing.assert_array_equal(a.df, b.df)


def test_every_code_point_is_classified_as_re_does():
    """Each character doubled (so that word characters make tokens), in documents of 999."""
    chars = [chr(c) * 2 for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    docs = [" ".join(chars[i : i + 999]) for i in range(0, len(chars), 999)]
    assert_counts(text.count_terms(docs), text.count_terms_reference(docs))


@pytest.mark.parametrize("stop_words", [None, text.ENGLISH_STOP_WORDS])
def test_count_terms_equals_reference(corpus, stop_words):
    counts = text.count_terms(corpus, stop_words=stop_words)
    assert_counts(counts, text.count_terms_reference(corpus, stop_words=stop_words))
    assert (stop_words is None) == ("and" in counts.terms)  # from TRICKY


def test_table_grows_past_its_first_size():
    """More distinct terms than the initial 2**16 slots hold at load 1/2."""
    docs = [" ".join(f"w{i}x{j}" for j in range(50)) for i in range(800)]
    counts = text.count_terms(docs)
    assert len(counts.terms) == 40_000
    assert_counts(counts, text.count_terms_reference(docs))


def test_tokenize_is_scikit_learns_default_pattern():
    assert text.tokenize("Don't STOP—believing, a_b!", stop_words=text.ENGLISH_STOP_WORDS) == [
        "stop",
        "believing",
        "a_b",
    ]
    assert text.tokenize("I am a café") == ["am", "café"]


@pytest.mark.parametrize("cuts", [(0, 0, 100), (1, 2, 3, 200), ()])
def test_merged_parts_equal_the_whole(corpus, cuts):
    parts = [text.count_terms(list(p)) for p in np.split(np.array(corpus, dtype=object), cuts)]
    empty = text.TermCounts((), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    assert_counts(reduce(text.merge_term_counts, parts, empty), text.count_terms(corpus))


def test_vocabulary_order_min_freq_and_cap():
    counts = text.TermCounts(("aa", "bb", "cc", "dd", "ee"), np.array([3, 5, 3, 1, 3]), np.array([1, 2, 3, 1, 1]), 4)
    assert text.build_vocabulary(counts).terms == ("bb", "aa", "cc", "ee", "dd")
    assert text.build_vocabulary(counts, min_freq=3, max_size=3).terms == ("bb", "aa", "cc")
    assert text.build_vocabulary(counts, by="df", min_freq=2).terms == ("cc", "bb")
    assert text.build_vocabulary(counts, max_size=0).terms == ()


@pytest.mark.parametrize(
    "kwargs, name", [(dict(by="idf"), "by"), (dict(min_freq=0), "min_freq"), (dict(max_size=-1), "max_size")]
)
def test_vocabulary_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        text.build_vocabulary(text.count_terms(["aa"]), **kwargs)


@pytest.mark.parametrize("max_len", [1, 8, 300])
@pytest.mark.parametrize("stop_words", [None, text.ENGLISH_STOP_WORDS])
@pytest.mark.parametrize("parallel", [True, False])
def test_encode_equals_reference(corpus, max_len, stop_words, parallel):
    vocab = text.build_vocabulary(text.count_terms(corpus), min_freq=3, max_size=300)
    got = text.encode(corpus, vocab, max_len, stop_words=stop_words, parallel=parallel)
    np.testing.assert_array_equal(got, text.encode_reference(corpus, vocab, max_len, stop_words=stop_words))
    assert got.shape == (len(corpus), max_len) and got.dtype == np.int64


def test_encode_conventions():
    vocab = text.Vocabulary(["bb", "aa"])
    ids = text.encode(["aa zz the bb", ""], vocab, 5, stop_words={"the"})
    np.testing.assert_array_equal(
        ids, [[1 + text.RESERVED, text.UNK, 0 + text.RESERVED, text.PAD, text.PAD], [text.PAD] * 5]
    )


@pytest.mark.parametrize("docs, name", [("one string", "docs"), (["ok", 3], r"docs\[1\]"), ([b"bytes"], r"docs\[0\]")])
def test_bad_documents_are_named(docs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        text.count_terms(docs)


def test_encode_rejects_bad_max_len():
    with pytest.raises(ValueError, match="^max_len:"):
        text.encode(["aa"], text.Vocabulary(["aa"]), 0)


def test_vocabulary_rejects_repeated_terms():
    with pytest.raises(ValueError, match="^terms:"):
        text.Vocabulary(["aa", "aa"])
