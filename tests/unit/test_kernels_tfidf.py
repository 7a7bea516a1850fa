"""twinhpc.kernels.tfidf against its Python reference and scikit-learn's TfidfVectorizer."""

from functools import reduce

import numpy as np
import pytest

from twinhpc.kernels import text, tfidf


@pytest.fixture(scope="module")
def corpus():
    return text.synthetic_corpus(500, 80, 2000, seed=7) + ["", "zz qq only unknown words", "Café CAFÉ café café"]


@pytest.fixture(scope="module")
def vocab(corpus):
    return text.build_vocabulary(text.count_terms(corpus), min_freq=2, max_size=1500)


def assert_csr(x: tfidf.Csr, indices, indptr, data, shape) -> None:
    assert x.indices.dtype == np.int32 and x.indptr.dtype == np.int64 and x.shape == tuple(shape)
    np.testing.assert_array_equal(x.indptr, indptr)
    np.testing.assert_array_equal(x.indices, indices)
    np.testing.assert_allclose(x.data, data, rtol=1e-6 if x.data.dtype == np.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("sublinear_tf", [False, True])
@pytest.mark.parametrize("parallel", [True, False])
def test_fit_transform_equals_reference(corpus, vocab, sublinear_tf, parallel):
    x, idf = tfidf.tfidf_fit_transform(corpus, vocab, sublinear_tf=sublinear_tf, parallel=parallel)
    ref, ref_idf = tfidf.tfidf_reference(corpus, vocab, sublinear_tf=sublinear_tf)
    np.testing.assert_allclose(idf, ref_idf, rtol=1e-15)
    assert_csr(x, ref.indices, ref.indptr, ref.data, ref.shape)
    assert x.indptr[-4] == x.indptr[-3]  # the empty document: an empty row


@pytest.mark.parametrize("sublinear_tf", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_scikit_learn(corpus, vocab, sublinear_tf, dtype):
    sklearn_text = pytest.importorskip(
        "sklearn.feature_extraction.text", reason="scikit-learn is not installed (the comparison needs it)"
    )
    vectorizer = sklearn_text.TfidfVectorizer(
        vocabulary=vocab.index, lowercase=True, token_pattern=text.TOKEN_PATTERN, sublinear_tf=sublinear_tf, dtype=dtype
    )
    want = vectorizer.fit_transform(corpus)
    x, idf = tfidf.tfidf_fit_transform(corpus, vocab, sublinear_tf=sublinear_tf, dtype=dtype)
    np.testing.assert_allclose(idf, vectorizer.idf_, rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert x.data.dtype == want.dtype
    assert_csr(x, want.indices, want.indptr, want.data, want.shape)


def test_rank_parts_merge_to_the_whole(corpus, vocab):
    """Frequencies of parts (one empty) merged, then each part transformed, equal the whole."""
    parts = np.split(np.array(corpus, dtype=object), [0, 120, 300])
    dfs = [tfidf.document_frequencies(list(p), vocab) for p in parts]
    merged = reduce(tfidf.merge_document_frequencies, dfs)
    whole = tfidf.document_frequencies(corpus, vocab)
    np.testing.assert_array_equal(merged.df, whole.df)
    assert merged.n_docs == whole.n_docs == len(corpus)
    idf = tfidf.idf_from_df(merged)
    ref, _ = tfidf.tfidf_reference(corpus, vocab)
    rows = [tfidf.tfidf_transform(list(p), vocab, idf) for p in parts]
    np.testing.assert_allclose(np.concatenate([r.data for r in rows]), ref.data, rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([r.indices for r in rows]), ref.indices)


def test_to_scipy(corpus, vocab):
    pytest.importorskip("scipy.sparse", reason="scipy is not installed")
    x, _ = tfidf.tfidf_fit_transform(corpus[:20], vocab)
    m = tfidf.to_scipy(x)
    assert m.shape == x.shape and m.nnz == len(x.data)
    np.testing.assert_allclose(np.sqrt(np.asarray(m.multiply(m).sum(1))).ravel()[np.diff(x.indptr) > 0], 1.0)


def test_bad_arguments_are_named(vocab):
    with pytest.raises(ValueError, match="^idf:"):
        tfidf.tfidf_transform(["aa"], vocab, np.ones(3))
    with pytest.raises(ValueError, match="^dtype:"):
        tfidf.tfidf_transform(["aa"], vocab, np.ones(len(vocab)), dtype=np.int32)
    with pytest.raises(ValueError, match="^b:"):
        tfidf.merge_document_frequencies(
            tfidf.DocumentFrequencies(np.zeros(2, np.int64), 1), tfidf.DocumentFrequencies(np.zeros(3, np.int64), 1)
        )
