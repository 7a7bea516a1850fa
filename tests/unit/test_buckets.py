"""Bucket assignment: reverse registration order, the cap, one kind per bucket."""

import random

import pytest

from twinhpc.comm.buckets import assign_buckets


def test_worked_example():
    # reverse order: 40 alone (40+30 > 50), then 30+20 = 50 fits, then 10 starts a new bucket
    assert assign_buckets([10, 20, 30, 40], cap_bytes=50) == [[3], [2, 1], [0]]


def test_one_bucket_holds_everything_in_reverse_order_when_the_cap_is_large():
    assert assign_buckets([4, 8, 4, 16, 4], cap_bytes=1 << 20) == [[4, 3, 2, 1, 0]]


def test_a_tensor_larger_than_the_cap_gets_its_own_bucket():
    assert assign_buckets([8, 100, 8, 8], cap_bytes=16) == [[3, 2], [1], [0]]


@pytest.mark.parametrize("seed", range(5))
def test_random_sizes_respect_the_cap_and_keep_reverse_order(seed):
    rng = random.Random(seed)
    sizes = [rng.choice([4, 64, 1000, 4096, 50_000]) for _ in range(60)]
    cap = 10_000
    buckets = assign_buckets(sizes, cap)
    flat = [i for bucket in buckets for i in bucket]
    assert flat == list(reversed(range(len(sizes))))  # one kind: consecutive runs, reverse order
    for bucket in buckets:
        assert len(bucket) == 1 or sum(sizes[i] for i in bucket) <= cap
    for a, b in zip(buckets, buckets[1:]):  # a bucket closes only when the next tensor would not fit
        assert sum(sizes[i] for i in a) + sizes[b[0]] > cap
    assert assign_buckets(sizes, cap) == buckets  # deterministic


def test_kinds_never_share_a_bucket_and_each_kind_keeps_its_order():
    kinds = ["f32", "f16", "f32", "f32", "f16", "f32"]
    buckets = assign_buckets([10] * 6, cap_bytes=20, kinds=kinds)
    assert all(len({kinds[i] for i in b}) == 1 for b in buckets)
    assert sorted(i for b in buckets for i in b) == list(range(6))
    assert buckets == [[5, 3], [4, 1], [2, 0]]  # per kind: f32 5,3 | 2,0 and f16 4,1; by first index
    for b in buckets:
        assert b == sorted(b, reverse=True)


def test_no_tensors_no_buckets():
    assert assign_buckets([], cap_bytes=1) == []


@pytest.mark.parametrize("cap", [0, -5])
def test_cap_must_be_positive(cap):
    with pytest.raises(ValueError, match="positive"):
        assign_buckets([4], cap_bytes=cap)


def test_kinds_must_match_the_tensors():
    with pytest.raises(ValueError, match="2 kinds for 3 tensors"):
        assign_buckets([4, 4, 4], cap_bytes=8, kinds=["a", "b"])
