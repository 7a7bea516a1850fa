"""twinhpc.kernels.stats against np.mean / np.var of the concatenated data, and the merge."""

from functools import reduce

import numpy as np
import pytest

from twinhpc.kernels import stats
from twinhpc.kernels.image import synthetic_batch


def assert_moments(actual: stats.Moments, expected: stats.Moments) -> None:
    np.testing.assert_array_equal(actual.count, expected.count)
    np.testing.assert_allclose(actual.mean, expected.mean, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(actual.m2, expected.m2, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 5, 70])  # 70 CIFAR images: more than one chunk
@pytest.mark.parametrize("parallel", [True, False])
def test_image_moments_match_numpy(n, parallel):
    x = synthetic_batch(n, 32, 32, 3, seed=n)
    assert_moments(stats.image_moments(x, parallel=parallel), stats.image_moments_reference(x))


def test_image_moments_of_a_non_contiguous_view():
    x = synthetic_batch(8, 16, 16, 4, seed=1)[:, ::2, :, 1:]
    assert_moments(stats.image_moments(x), stats.image_moments_reference(np.ascontiguousarray(x)))


@pytest.mark.parametrize("n", [0, 1, 7, 10_000])  # 10,000 rows: three chunks
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tabular_moments_skip_nans(n, dtype):
    x = stats.synthetic_table(n, 5, seed=n).astype(dtype)
    if n:
        x[:, 2] = np.nan  # a feature without any value
    m = stats.tabular_moments(x)
    assert_moments(m, stats.tabular_moments_reference(x))
    assert m.count[2] == 0 and np.isnan(m.variance()[2])


def test_tabular_moments_of_integers():
    x = np.arange(24, dtype=np.int32).reshape(6, 4)
    m = stats.tabular_moments(x)
    np.testing.assert_allclose(m.mean, x.mean(0))
    np.testing.assert_allclose(m.variance(ddof=1), x.var(0, ddof=1))
    np.testing.assert_allclose(m.std, x.std(0))


@pytest.mark.parametrize("cuts", [(0, 0, 3, 3, 9), (1, 2, 4), (), (0, 9, 9)])
def test_merging_parts_equals_the_whole(cuts):
    """Rank-like parts, including empty ones, merged in order give the moments of the whole."""
    x = stats.synthetic_table(9, 3, seed=2)
    parts = [stats.tabular_moments(p) for p in np.split(x, cuts)]
    merged = reduce(stats.merge_moments, parts, stats.empty_moments(3))
    assert_moments(merged, stats.tabular_moments_reference(x))


def test_image_parts_merge_in_any_order():
    x = synthetic_batch(12, 8, 8, 3, seed=3)
    parts = [stats.image_moments(p) for p in np.split(x, [0, 5, 5, 11])]
    whole = stats.image_moments_reference(x)
    assert_moments(reduce(stats.merge_moments, parts), whole)
    assert_moments(reduce(stats.merge_moments, parts[::-1]), whole)


def test_merge_of_different_lengths_is_an_error():
    with pytest.raises(ValueError, match="b:"):
        stats.merge_moments(stats.empty_moments(3), stats.empty_moments(2))


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4, 3), np.float32), np.zeros((4, 4, 3), np.uint8), [1, 2]])
def test_image_moments_reject_bad_input(bad):
    with pytest.raises(ValueError, match="^x:"):
        stats.image_moments(bad)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 2), bool), np.array([["a"]])])
def test_tabular_moments_reject_bad_input(bad):
    with pytest.raises(ValueError, match="^x:"):
        stats.tabular_moments(bad)
