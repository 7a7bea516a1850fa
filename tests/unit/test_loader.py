"""The rank-aware loader, one process: ranks are played through the ``rank``/``size`` arguments."""

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from twinhpc.data.format import FieldSpec, Manifest, SplitInfo, shard_name
from twinhpc.data.loader import ShardedLoader
from twinhpc.data.shards import write_shard
from twinhpc.errors import DatasetError, TwinError

N_SAMPLES, N_SHARDS = 600, 3
X_SHAPE = (32, 40)  # 5 KiB float32 samples: read block by block; "id" is small, kept in memory
WINDOW = 2


def sample_x(ids: np.ndarray) -> np.ndarray:
    return (ids[:, None, None] + np.arange(np.prod(X_SHAPE)).reshape(X_SHAPE) / 1e4).astype(np.float32)


def make_dataset(
    root: Path, n: int = N_SAMPLES, shards: int = N_SHARDS, text: bool = False, compression: str = "none"
) -> Path:
    """A dataset whose sample ``i`` has ``id == i`` (stored in a shuffled order, as ingest does)."""
    fields = (FieldSpec("id", "int64"), FieldSpec("x", "float32", X_SHAPE)) + (
        (FieldSpec("text", "str"),) if text else ()
    )

    def read(idx):
        out = {"id": idx.astype(np.int64), "x": sample_x(idx)}
        if text:
            out["text"] = np.array([f"sample {i} é" for i in idx], dtype=object)
        return out

    order = np.random.default_rng(1).permutation(n)
    bounds = [n * i // shards for i in range(shards + 1)]
    root.mkdir(parents=True)
    infos = tuple(
        write_shard(root / shard_name("train", i, shards), fields, order[bounds[i] : bounds[i + 1]], read, compression)
        for i in range(shards)
    )
    Manifest(fields=fields, splits=(SplitInfo("train", n, infos),)).save(root)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("loader") / "ds")


def stored_ids(directory: Path) -> np.ndarray:
    """The ``id`` of each global index (the split's shards concatenated)."""
    m = Manifest.load(directory)
    return np.concatenate([h5py.File(directory / sh.file, "r")["id"][:] for sh in m.split("train").shards])


def loader(directory, **kw) -> ShardedLoader:
    kw.setdefault("rank", 0)
    kw.setdefault("size", 1)
    kw.setdefault("window", WINDOW)
    return ShardedLoader(directory, "train", kw.pop("batch_size", 16), **kw)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "twinhpc-loader"]


# -- the permutation ------------------------------------------------------------------------
def test_permutation_is_a_permutation_and_deterministic(dataset):
    p = loader(dataset).permutation(0)
    assert sorted(p) == list(range(N_SAMPLES))
    assert np.array_equal(p, loader(dataset).permutation(0))
    assert not np.array_equal(p, loader(dataset).permutation(1))
    assert not np.array_equal(p, loader(dataset, seed=1).permutation(0))


@pytest.mark.parametrize("policy", ["drop", "pad"])
def test_rank_slices_concatenate_to_the_permutation_for_any_size(dataset, policy):
    batch, epoch = 16, 3
    p = loader(dataset).permutation(epoch)
    for size in range(1, 5):
        parts = [loader(dataset, batch_size=batch, rank=r, size=size, policy=policy) for r in range(size)]
        assert all(np.array_equal(ld.permutation(epoch), p) for ld in parts)
        got = np.concatenate([ld.indices(epoch) for ld in parts])
        m = parts[0].samples_per_rank
        assert np.array_equal(got, p[np.arange(size * m) % N_SAMPLES])


@pytest.mark.parametrize("size,batch", [(1, 16), (2, 7), (3, 50), (4, 150)])
def test_drop_policy_counts(dataset, size, batch):
    per_rank_batches = N_SAMPLES // (size * batch)
    seen = []
    for r in range(size):
        ld = loader(dataset, batch_size=batch, rank=r, size=size, prefetch=0)
        batches = list(ld.epoch(0))
        assert len(batches) == len(ld) == per_rank_batches
        assert all(len(b["id"]) == batch for b in batches)
        seen.append(np.concatenate([b["id"] for b in batches]))
    seen = np.concatenate(seen)
    assert len(seen) == size * per_rank_batches * batch
    assert len(np.unique(seen)) == len(seen)  # no sample twice in an epoch


@pytest.mark.parametrize("size,batch", [(2, 7), (3, 50), (4, 150)])
def test_pad_policy_sees_every_sample(dataset, size, batch):
    per_rank_batches = -(-N_SAMPLES // (size * batch))
    ids = np.concatenate(
        [
            b["id"]
            for r in range(size)
            for b in loader(dataset, batch_size=batch, rank=r, size=size, policy="pad").epoch(0)
        ]
    )
    assert len(ids) == size * per_rank_batches * batch
    assert set(ids) == set(range(N_SAMPLES))
    assert len(ids) - len(np.unique(ids)) == size * per_rank_batches * batch - N_SAMPLES


# -- what is read ---------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_hold_the_permuted_samples(dataset, prefetch):
    ld = loader(dataset, batch_size=32, rank=1, size=2, prefetch=prefetch)
    batches = list(ld.epoch(5))  # all held at once: reused arrays would show up here
    want = stored_ids(dataset)[ld.indices(5)]
    ids = np.concatenate([b["id"] for b in batches])
    assert np.array_equal(ids, want)
    assert np.array_equal(np.concatenate([b["x"] for b in batches]), sample_x(want))
    assert batches[0]["x"].dtype == np.float32 and batches[0]["x"].shape == (32, *X_SHAPE)


def test_compressed_dataset_gives_the_same_batches(dataset, tmp_path):
    gz = make_dataset(tmp_path / "gz", compression="gzip")
    for a, b in zip(loader(dataset, batch_size=32).epoch(2), loader(gz, batch_size=32).epoch(2), strict=True):
        assert np.array_equal(a["id"], b["id"]) and np.array_equal(a["x"], b["x"])


def test_text_fields(tmp_path):
    ds = make_dataset(tmp_path / "text", text=True)
    batches = list(loader(ds, batch_size=32, fields=["text", "id"]).epoch(0))
    assert set(batches[0]) == {"text", "id"}
    text = np.concatenate([b["text"] for b in batches])
    assert text.dtype == object and all(isinstance(t, str) for t in text)
    assert list(text) == [f"sample {i} é" for i in np.concatenate([b["id"] for b in batches])]


# -- resume ---------------------------------------------------------------------------------
def test_resume_mid_epoch_continues_exactly_across_the_epoch_boundary(dataset):
    a = loader(dataset, batch_size=32, rank=1, size=2)
    it = iter(a.epoch(4))
    k = len(a) // 2
    for _ in range(k):
        next(it)
    state = a.state_dict()
    assert (state["epoch"], state["batches_consumed"]) == (4, k)
    rest = list(it) + list(a.epoch(5))

    b = loader(dataset, batch_size=32, rank=1, size=2)
    b.load_state_dict(state)
    b.set_epoch(4)  # what a training loop does: keeps the resumed position
    resumed = list(b) + list(b.epoch(5))
    assert len(resumed) == len(rest) == 2 * len(a) - k
    for x, y in zip(rest, resumed):
        assert np.array_equal(x["id"], y["id"]) and np.array_equal(x["x"], y["x"])
    assert (b.current_epoch, b.batches_consumed) == (6, 0)


@pytest.mark.parametrize(
    "change,key",
    [
        ({"size": 2}, "world_size"),
        ({"batch_size": 8}, "batch_size"),
        ({"seed": 3}, "seed"),
        ({"policy": "pad"}, "policy"),
    ],
)
def test_state_from_another_setup_is_refused(dataset, change, key):
    state = loader(dataset).state_dict()
    with pytest.raises(TwinError, match=f"'{key}'"):
        loader(dataset, **change).load_state_dict(state)


def test_state_of_another_dataset_or_without_a_key_is_refused(dataset, tmp_path):
    other = make_dataset(tmp_path / "other", n=N_SAMPLES + 1)
    with pytest.raises(TwinError, match="'dataset'"):
        loader(other).load_state_dict(loader(dataset).state_dict())
    state = loader(dataset).state_dict()
    del state["epoch"]
    with pytest.raises(TwinError, match="'epoch' is missing"):
        loader(dataset).load_state_dict(state)


# -- errors ---------------------------------------------------------------------------------
def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def first_shard(directory: Path) -> Path:
    return directory / Manifest.load(directory).split("train").shards[0].file


@pytest.mark.parametrize("prefetch", [0, 2])
def test_missing_shard_names_the_file(dataset, tmp_path, prefetch):
    ds = copy_dataset(dataset, tmp_path / "ds")
    first_shard(ds).unlink()
    with pytest.raises(DatasetError, match=f"{first_shard(ds)}: shard file is missing"):
        list(loader(ds, prefetch=prefetch).epoch(0))
    assert not loader_threads()


def test_truncated_shard_names_the_file(dataset, tmp_path):
    ds = copy_dataset(dataset, tmp_path / "ds")
    path = first_shard(ds)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(DatasetError, match=str(path)):
        list(loader(ds).epoch(0))


def test_shard_truncated_while_open_gives_a_short_read_naming_file_and_field(dataset, tmp_path):
    """The direct ``preadv`` path: a shard cut short after the loader opened it."""
    ds = copy_dataset(dataset, tmp_path / "ds")
    ld = loader(ds, batch_size=8)
    next(iter(ld.epoch(0)))
    assert ld._reader.shards, "the first batch opened a shard"
    for shard in ld._reader.shards.values():  # opened and validated: now cut their data short
        with open(shard.path, "r+b") as f:
            f.truncate(shard.path.stat().st_size // 4)
    with pytest.raises(
        DatasetError, match=r"field 'x' rows \d+:\d+: short read \(\d+ of \d+ bytes\); is the file truncated"
    ):
        list(ld.epoch(1))  # every block again, those of the truncated shards too
    ld.close()


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("size", [1, 3])
def test_every_rank_reads_exactly_its_samples_whatever_the_window(dataset, window, size):
    """Blocks that a rank needs only in part: the rows it does not want land in scratch, never in
    a batch (the last rank's slice ends mid-block)."""
    for rank in range(size):
        ld = loader(dataset, batch_size=24, rank=rank, size=size, window=window, prefetch=0)
        batches = list(ld.epoch(3))
        want = stored_ids(dataset)[ld.indices(3)]
        assert np.array_equal(np.concatenate([b["id"] for b in batches]), want)
        assert np.array_equal(np.concatenate([b["x"] for b in batches]), sample_x(want))


def test_shard_not_matching_the_manifest_names_the_file_and_field(dataset, tmp_path):
    ds = copy_dataset(dataset, tmp_path / "ds")
    path = first_shard(ds)
    with h5py.File(path, "r+") as f:
        n = f["x"].shape[0]
        del f["x"]
        f.create_dataset("x", data=np.zeros((n, 3), np.float64))
    with pytest.raises(DatasetError, match=f"{path}: field 'x' has shape"):
        list(loader(ds).epoch(0))


@pytest.mark.parametrize("policy,share", [("drop", N_SAMPLES // 4), ("pad", -(-N_SAMPLES // 4))])
def test_batch_larger_than_a_share_names_the_option(dataset, policy, share):
    loader(dataset, batch_size=share, size=4, policy=policy)
    with pytest.raises(TwinError, match=f"batch_size={share + 1} is larger than a rank's share"):
        loader(dataset, batch_size=share + 1, size=4, policy=policy)


def test_prefetch_thread_error_reaches_the_consumer_with_the_path(dataset, tmp_path):
    ds = copy_dataset(dataset, tmp_path / "ds")
    ld = loader(ds, batch_size=8, prefetch=2)
    it = iter(ld.epoch(0))
    next(it)  # the thread has started and opened the shards it needed so far
    doomed = [
        ds / sh.file
        for sh in Manifest.load(ds).split("train").shards
        if sh.file not in {s.path.name for s in ld._reader.shards.values()}
    ]
    assert doomed, "a shard the first batch did not need"
    for path in doomed:
        path.unlink()
    with pytest.raises(DatasetError, match="shard file is missing") as err:
        list(it)
    assert any(str(p) in str(err.value) for p in doomed)
    ld.close()
    assert not loader_threads()


# -- threads and files ----------------------------------------------------------------------
def test_no_thread_left_after_abandoning_or_closing(dataset):
    with loader(dataset, batch_size=8, prefetch=2) as ld:
        for i, _ in enumerate(ld.epoch(0)):
            if i == 2:
                break  # the abandoned iterator stops its thread
        assert not loader_threads()
        it = iter(ld.epoch(1))
        next(it)
        assert len(loader_threads()) == 1
        assert ld._reader.shards
    assert not loader_threads()  # close() at the end of the with block
    assert not ld._reader.shards
    with pytest.raises(TwinError, match="closed"):
        next(it)
