"""The rank-aware loader and ``bench loader`` at the launcher's world size (1, 2 or 3 ranks)."""

import json

import h5py
import numpy as np
import pytest

from tests.mpi.collective import collective
from twinhpc.bench.loader import bench_loader
from twinhpc.data.ingest import ingest
from twinhpc.data.loader import ShardedLoader

N_SAMPLES = 1000
VAL_FRACTION = 0.2
BATCH = 24


@pytest.fixture
def dataset(world, shared_tmp):
    """Built collectively: ``id`` is unique per sample, ``x`` large enough to be read block-wise."""
    src = shared_tmp / "src.npz"
    if world.rank == 0:
        rng = np.random.default_rng(0)
        np.savez(
            src,
            id=np.arange(N_SAMPLES, dtype=np.int64),
            x=rng.standard_normal((N_SAMPLES, 16, 64)).astype(np.float32),
            y=rng.integers(0, 10, N_SAMPLES),
        )
    world.barrier()
    out = shared_tmp / "ds"
    manifest = ingest("npz", src, out, shards=3, val_fraction=VAL_FRACTION, test_fraction=0.0, world=world)
    return out, manifest.split("train").count


@pytest.mark.parametrize("policy", ["drop", "pad"])
def test_ranks_cover_the_split_disjointly(world, dataset, policy):
    directory, n = dataset
    ld = ShardedLoader(directory, "train", BATCH, policy=policy, window=2, world=world)
    batches = [b["id"] for b in ld.epoch(0)]
    gathered = world.allgather(batches)

    def check():
        per_batch = -(-n // (world.size * BATCH)) if policy == "pad" else n // (world.size * BATCH)
        assert [len(g) for g in gathered] == [per_batch] * world.size
        ids = np.concatenate([b for g in gathered for b in g])
        assert len(ids) == world.size * per_batch * BATCH
        if policy == "drop":
            assert len(np.unique(ids)) == len(ids)
        else:
            assert len(np.unique(ids)) == n  # every sample of the split at least once

    collective(world, check)


def test_resume_mid_epoch_at_this_world_size(world, dataset):
    directory, _ = dataset

    def make():
        return ShardedLoader(directory, "train", BATCH, window=2, world=world)

    a = make()
    it = iter(a.epoch(1))
    k = len(a) // 2 + 1
    for _ in range(k):
        next(it)
    state = a.state_dict()
    rest = list(it) + list(a.epoch(2))
    b = make()
    b.load_state_dict(state)
    resumed = list(b) + list(b.epoch(2))
    states = world.allgather(state)

    def check():
        assert all(s == states[0] for s in states)  # one state serves every rank
        assert state["world_size"] == world.size and state["batches_consumed"] == k
        assert len(resumed) == len(rest) == 2 * len(a) - k
        for x, y in zip(rest, resumed):
            assert np.array_equal(x["id"], y["id"]) and np.array_equal(x["x"], y["x"])

    collective(world, check)


def test_bench_loader_at_this_world_size(world, dataset, shared_tmp):
    directory, n = dataset
    figures = bench_loader(directory, batch_size=BATCH, rounds=2, results=shared_tmp / "res", world=world)
    text = json.dumps(figures)

    def check():
        got = json.loads(text)
        assert got["world_size"] == world.size and len(got["ranks"]) == world.size
        assert [r["rank"] for r in got["ranks"]] == list(range(world.size))
        for row in got["ranks"] + [got["total"]]:
            assert row["loader_MB_per_s"] > 0 and row["raw_MB_per_s"] > 0
        assert got["pass"] == (got["ratio"] >= got["target"])
        assert got["samples_per_rank"] == (n // (world.size * BATCH)) * BATCH
        if world.rank == 0:
            with h5py.File(got["results_file"], "r") as f:
                assert len(f["ranks"]) == world.size and len(f["total"]) == 1 and len(f["rounds"]) == 2
                assert f.attrs["world_size"] == world.size and f.attrs["batch_size"] == BATCH
                assert f.attrs["ratio"] == pytest.approx(got["ratio"])

    collective(world, check)
