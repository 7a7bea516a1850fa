"""The epoch plan (twinhpc.data.plan): blocks, the per-epoch permutation, the ranks' slices.

Pure numpy, no files: every world size, split size and shard layout is played out directly.
"""

import numpy as np
import pytest

from twinhpc.data.plan import POLICIES, BlockLayout, EpochPlan, rank_share, samples_per_rank

#: (samples per shard, block rows per shard): one shard, equal shards, ragged shards with
#: blocks larger than a shard, one-sample blocks
LAYOUTS = [([600], [64]), ([200, 200, 200], [64, 64, 64]), ([7, 1, 130, 45], [16, 16, 3, 50]), ([500, 499], [1, 1000])]


def make_plan(counts, rows, seed=0, epoch=0, window=2) -> EpochPlan:
    return EpochPlan(BlockLayout(counts, rows), seed, epoch, window)


@pytest.mark.parametrize("counts,rows", LAYOUTS)
def test_blocks_tile_the_split_without_crossing_a_shard(counts, rows):
    lay = BlockLayout(counts, rows)
    assert lay.n == sum(counts)
    assert lay.starts[0] == 0 and lay.stops[-1] == lay.n
    assert np.array_equal(lay.starts[1:], lay.stops[:-1])  # contiguous, in order
    assert np.all(lay.stops > lay.starts)
    for b, s in enumerate(lay.shard_of):
        assert lay.shard_starts[s] <= lay.starts[b] < lay.stops[b] <= lay.shard_starts[s + 1]
        assert lay.stops[b] - lay.starts[b] <= rows[s]
    assert np.array_equal(np.bincount(lay.shard_of, minlength=len(counts)), [-(-c // r) for c, r in zip(counts, rows)])


@pytest.mark.parametrize("window", [1, 2, 5, 1000])
@pytest.mark.parametrize("counts,rows", LAYOUTS)
def test_permutation_is_windows_of_whole_blocks_shuffled_inside(counts, rows, window):
    plan = make_plan(counts, rows, seed=3, epoch=1, window=window)
    lay = plan.layout
    p = plan.permutation()
    assert np.array_equal(np.sort(p), np.arange(lay.n))
    for k in range(len(plan.bounds) - 1):
        w = plan.window(k)
        assert len(w.blocks) <= window
        stored = np.concatenate([np.arange(lay.starts[b], lay.stops[b]) for b in w.blocks])
        assert np.array_equal(w.samples[w.position], stored)  # position maps stored order into P
        assert np.array_equal(p[plan.bounds[k] : plan.bounds[k + 1]], w.samples)


def test_permutation_is_deterministic_and_depends_on_seed_and_epoch():
    counts, rows = LAYOUTS[2]
    p = make_plan(counts, rows).permutation()
    assert np.array_equal(p, make_plan(counts, rows).permutation())
    assert not np.array_equal(p, make_plan(counts, rows, epoch=1).permutation())
    assert not np.array_equal(p, make_plan(counts, rows, seed=1).permutation())


@pytest.mark.parametrize("a,b", [(0, 1), (5, 200), (150, 383), (380, 383), (300, 900), (0, 1149)])
def test_indices_wrap_around_the_permutation(a, b):
    plan = make_plan(*LAYOUTS[2], window=3)  # 183 samples
    p = plan.permutation()
    assert np.array_equal(plan.indices(a, b), p[np.arange(a, b) % len(p)])


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("counts,rows", [([1], [1]), ([7], [3]), *LAYOUTS])
def test_rank_slices_are_equal_and_cut_the_same_permutation_for_any_world_size(counts, rows, policy):
    """For every rank count: each rank gets the same whole number of batches, and the ranks'
    slices, in rank order, are the first ``N*m`` positions of one permutation that does not
    depend on ``N`` (``drop``: disjoint, less than one batch per rank left out; ``pad``: every
    sample, less than one batch per rank seen twice)."""
    plan = make_plan(counts, rows, seed=7, epoch=2, window=3)
    n, p = plan.layout.n, plan.permutation()
    for size in range(1, 9):
        share = rank_share(n, size, policy)
        assert share == (n // size if policy == "drop" else -(-n // size))
        for batch in sorted({1, 2, 3, 7, 32, share} & set(range(1, share + 1))):
            m = samples_per_rank(n, size, batch, policy)
            assert m > 0 and m % batch == 0
            slices = [plan.indices(r * m, (r + 1) * m) for r in range(size)]
            assert [len(s) for s in slices] == [m] * size
            got = np.concatenate(slices)
            assert np.array_equal(got, p[np.arange(size * m) % n])
            if policy == "drop":
                assert len(np.unique(got)) == size * m
                assert 0 <= n - size * m < size * batch
            else:
                assert len(np.unique(got)) == n
                assert 0 <= size * m - n < size * batch


@pytest.mark.parametrize(
    "n,size,batch,drop,pad",
    [(600, 1, 16, 592, 608), (600, 4, 150, 150, 150), (600, 4, 149, 149, 298), (10, 3, 3, 3, 6)],
)
def test_samples_per_rank(n, size, batch, drop, pad):
    assert samples_per_rank(n, size, batch, "drop") == drop
    assert samples_per_rank(n, size, batch, "pad") == pad
