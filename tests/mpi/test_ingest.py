"""Ingest under N ranks (1, 2, 3, ...): same dataset for every N, errors on every rank, no debris.

Run unchanged with plain pytest (1 rank) and ``mpirun -n N python tests/run_mpi.py tests/mpi``.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from tests.mpi.collective import collective, on_root
from twinhpc.comm.world import World
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.data.inspect import verify_dataset
from twinhpc.data.split import assign_splits
from twinhpc.errors import TwinError

N_SAMPLES = 257  # odd, so shards and ranks divide it unevenly


def make_source(world, tmp, n=N_SAMPLES):
    """A deterministic npz source with a unique ``id`` per sample, written by rank 0."""
    path = tmp / "src.npz"

    def write():
        rng = np.random.default_rng(7)
        np.savez(
            path,
            id=np.arange(n, dtype=np.int64),
            x=rng.random((n, 5, 3), dtype=np.float32),
            y=(np.arange(n) % 4).astype(np.int64),
        )

    on_root(world, write)
    return path


def read_split(directory, manifest, split):
    parts = {f.name: [] for f in manifest.fields}
    for sh in manifest.split(split).shards:
        with h5py.File(directory / sh.file, "r") as f:
            for name in parts:
                parts[name].append(f[name][:])
    return {k: np.concatenate(v) for k, v in parts.items()}


def leftovers(tmp):
    return sorted(n for n in os.listdir(tmp) if ".tmp-" in n or n.endswith(".part"))


def test_same_dataset_for_any_rank_count(world, shared_tmp):
    """The N-rank dataset equals the 1-rank dataset byte for byte, and holds each sample once."""
    src = make_source(world, shared_tmp)
    out_n = shared_tmp / f"ds-n{world.size}"
    m = collective(
        world, lambda: ingest("npz", src, out_n, shards=4, val_fraction=0.2, test_fraction=0.1, seed=3, world=world)
    )
    # the same ingest by rank 0 alone, on a one-rank communicator
    on_root(
        world,
        lambda: ingest(
            "npz",
            src,
            shared_tmp / "ds-ref",
            shards=4,
            val_fraction=0.2,
            test_fraction=0.1,
            seed=3,
            world=World(world.MPI.COMM_SELF),
        ),
    )

    def body():
        source = np.load(src)
        expect = assign_splits(N_SAMPLES, 0.2, 0.1, 3)
        assert m.split_names == tuple(expect)
        seen = []
        for split, idx in expect.items():
            got = read_split(out_n, m, split)
            np.testing.assert_array_equal(got["id"], idx)  # stored order = planned order
            np.testing.assert_array_equal(got["x"], source["x"][idx])
            np.testing.assert_array_equal(got["y"], source["y"][idx])
            seen.append(got["id"])
        seen = np.concatenate(seen)
        assert len(seen) == N_SAMPLES and len(np.unique(seen)) == N_SAMPLES
        if world.rank == 0:
            ref = Manifest.load(shared_tmp / "ds-ref")
            for a, b in zip(ref.splits, m.splits):
                assert a.shards == b.shards, f"split {a.name}: shards differ between 1 and {world.size} ranks"
        assert m.provenance["ranks"] == world.size
        assert leftovers(shared_tmp) == []

    collective(world, body)


def test_bad_options_fail_on_every_rank(world, shared_tmp):
    src = make_source(world, shared_tmp, n=10)
    cases = [
        (dict(shards=11), "--shards 11 is larger than the sample count (10)"),
        (dict(val_fraction=1.5), "--val-fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "--test-fraction must be < 1"),
    ]
    for kwargs, needle in cases:

        def body(kwargs=kwargs, needle=needle):
            with pytest.raises(TwinError) as err:
                ingest("npz", src, shared_tmp / "out", world=world, **kwargs)
            assert needle in str(err.value), f"{needle!r} not in {err.value}"

        collective(world, body)
    collective(
        world,
        lambda: _check(
            not (shared_tmp / "out").exists() and leftovers(shared_tmp) == [], f"debris left: {os.listdir(shared_tmp)}"
        ),
    )


def _check(ok, msg):
    assert ok, msg


def test_unwritable_output_names_the_path(world, shared_tmp):
    src = make_source(world, shared_tmp, n=10)
    blocker = shared_tmp / "a-file"
    on_root(world, lambda: blocker.write_text("not a directory"))
    out = blocker / "dataset"  # parent is a regular file: cannot be created (even as root)

    def body():
        with pytest.raises(TwinError) as err:
            ingest("npz", src, out, world=world)
        assert str(out) in str(err.value), str(err.value)

    collective(world, body)


def test_existing_output_needs_overwrite(world, shared_tmp):
    src = make_source(world, shared_tmp, n=20)
    out = shared_tmp / "ds"

    def body():
        ingest("npz", src, out, world=world)
        with pytest.raises(TwinError, match="already exists"):
            ingest("npz", src, out, world=world)
        return Manifest.load(out)

    before = collective(world, body)
    m = collective(world, lambda: ingest("npz", src, out, world=world, overwrite=True, seed=5))
    collective(
        world,
        lambda: _check(
            m.provenance["seed"] == 5 and before.provenance["seed"] == 0 and leftovers(shared_tmp) == [],
            "overwrite did not replace",
        ),
    )


def test_overwrite_refuses_a_directory_that_is_no_dataset(world, shared_tmp):
    """--overwrite pointed at a home or project folder by mistake: refused, named, left intact."""
    src = make_source(world, shared_tmp, n=20)
    precious = shared_tmp / "thesis"
    on_root(world, lambda: (precious.mkdir(), (precious / "chapter1.tex").write_text("years of work")))

    def body():
        with pytest.raises(TwinError, match=f"--out {precious}: is a directory without manifest.json"):
            ingest("npz", src, precious, world=world, overwrite=True)
        _check((precious / "chapter1.tex").read_text() == "years of work", "the directory was touched")
        _check(leftovers(shared_tmp) == [], f"debris {leftovers(shared_tmp)}")

    collective(world, body)


def test_failure_on_one_rank_fails_all_and_leaves_nothing(world, shared_tmp, monkeypatch):
    """A read error on the last rank only: every rank raises, naming that rank; no dataset left."""
    from twinhpc.data.readers.npz import NpzSource

    src = make_source(world, shared_tmp, n=40)
    bad_rank = world.size - 1
    if world.rank == bad_rank:

        def broken(self, indices):
            raise OSError(f"simulated read failure in {self.path}")

        monkeypatch.setattr(NpzSource, "read", broken)
    out = shared_tmp / "ds"

    def body():
        with pytest.raises(TwinError) as err:
            ingest("npz", src, out, shards=world.size, world=world)
        msg = str(err.value)
        assert "simulated read failure" in msg, msg
        if world.size > 1:
            assert f"rank {bad_rank}" in msg, msg
        assert not out.exists(), "a dataset was left under the final name"
        assert leftovers(shared_tmp) == [], f"temporary files left: {leftovers(shared_tmp)}"

    collective(world, body)


def test_verify_names_each_bad_shard_on_every_rank(world, shared_tmp):
    src = make_source(world, shared_tmp, n=60)
    out = shared_tmp / "ds"

    def fresh():
        ingest("npz", src, out, shards=3, world=world)
        _, problems, _ = verify_dataset(out, world)
        assert problems == [], f"fresh dataset has problems: {problems}"

    collective(world, fresh)

    def damage():
        with open(out / "train-1-of-3.h5", "r+b") as f:  # flip one byte in the middle
            f.seek(f.seek(0, 2) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
        (out / "val-0-of-3.h5").unlink()

    on_root(world, damage)

    def body():
        _, problems, _ = verify_dataset(out, world)
        text = "\n".join(problems)
        assert len(problems) == 2, text
        assert "train-1-of-3.h5: checksum mismatch" in text, text
        assert "val-0-of-3.h5: missing" in text, text

    collective(world, body)


def test_manifest_records_schema_and_provenance(world, shared_tmp):
    src = make_source(world, shared_tmp, n=30)
    out = shared_tmp / "ds"
    collective(world, lambda: ingest("npz", src, out, shards=2, world=world, command="twinhpc ingest npz src --out ds"))

    def body():
        d = json.loads((out / "manifest.json").read_text())
        fields = {f["name"]: (f["dtype"], f["shape"]) for f in d["fields"]}
        assert fields == {"id": ("int64", []), "x": ("float32", [5, 3]), "y": ("int64", [])}
        assert d["label_field"] == "y" and d["classes"] == ["0", "1", "2", "3"]
        assert sum(s["count"] for s in d["splits"].values()) == 30
        for s in d["splits"].values():
            for sh in s["shards"]:
                assert len(sh["sha256"]) == 64
        p = d["provenance"]
        assert p["kind"] == "npz" and p["source"] == str(src) and p["command"].startswith("twinhpc ingest")
        assert p["twinhpc_version"] and p["created"]
        with h5py.File(out / d["splits"]["train"]["shards"][0]["file"]) as f:
            assert f["x"].chunks[1:] == (5, 3)  # chunked along the sample axis only

    collective(world, body)


def _write_every_kind(tmp):
    """One small source of every KIND (tests/fixtures.py writes the real formats)."""
    from tests import fixtures

    sources = {
        "npz": (tmp / "src.npz", {}),
        "csv": (tmp / "src.csv", {}),
        "parquet": (tmp / "parquet", {}),
        "jsonl": (tmp / "reviews.jsonl", {}),
        "cifar10": (tmp / "cifar", {}),
        "imdb": (tmp / "aclImdb", {"keep_unsup": True}),
        "image-folder": (tmp / "images", {"image_size": "8"}),
    }
    fixtures.write_npz(sources["npz"][0], n=40)
    fixtures.write_csv(sources["csv"][0], n=40)
    fixtures.write_parquet(sources["parquet"][0], n=40, parts=3)
    fixtures.write_jsonl(sources["jsonl"][0], n=40)
    fixtures.write_cifar10(sources["cifar10"][0], n_train_per_batch=6, n_test=8)
    fixtures.write_imdb(sources["imdb"][0], n_per_class=5, n_unsup=3)
    fixtures.write_image_folder(sources["image-folder"][0], n_per_class=4)
    return sources


@pytest.mark.parametrize("kind", ["npz", "csv", "parquet", "jsonl", "cifar10", "imdb", "image-folder"])
def test_every_kind_is_rank_count_invariant(world, shared_tmp, kind):
    """Each KIND ingested on all ranks equals the same ingest on rank 0 alone (shard checksums)."""
    sources = on_root(world, lambda: _write_every_kind(shared_tmp))
    src, options = sources[kind]
    m = collective(world, lambda: ingest(kind, src, shared_tmp / "ds", shards=2, options=options, world=world))
    ref = on_root(
        world,
        lambda: ingest(kind, src, shared_tmp / "ref", shards=2, options=options, world=World(world.MPI.COMM_SELF)),
    )
    collective(
        world,
        lambda: _check(
            [s.shards for s in m.splits] == [s.shards for s in ref.splits] and m.statistics == ref.statistics,
            f"{kind}: shards or statistics differ between 1 and {world.size} ranks",
        ),
    )


# Labels equal in value but written differently: every spelling must land in one class, and
# every rank must store them under the class list the manifest records.
SPELLINGS = {1: ["1", "1.0", "1e0"], 2: ["2", "2.00", "20e-1"], 3: ["3", "3.0"], 4: ["4", "4.0", "4.000"], 5: ["5.0"]}


def _spelled_sources(tmp):
    """jsonl, csv and parquet sources whose label column spells 1..5 in several ways; returns the
    true label of each row id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(v, s) for v, spellings in SPELLINGS.items() for s in spellings] * 3  # 45 rows
    truth = {i: v for i, (v, _) in enumerate(rows)}
    (tmp / "spelled.jsonl").write_text(
        "".join(f'{{"text": "row {i}", "stars": {s}}}\n' for i, (_, s) in enumerate(rows))
    )
    (tmp / "spelled.csv").write_text("id,label\n" + "".join(f"{i},{s}\n" for i, (_, s) in enumerate(rows)))
    pq.write_table(
        pa.table({"id": list(range(len(rows))), "label": [float(s) for _, s in rows]}), tmp / "spelled.parquet"
    )
    return truth


@pytest.mark.parametrize(
    "kind,src,options",
    [
        ("jsonl", "spelled.jsonl", {}),
        ("jsonl", "spelled.jsonl", {"classes": "1.0,2,3,4,5"}),
        ("csv", "spelled.csv", {"classes": "1,2,3,4,5"}),
        ("parquet", "spelled.parquet", {"classes": "1,2,3,4,5.0"}),
    ],
)
def test_equal_labels_written_differently_are_one_class_on_every_rank(world, shared_tmp, kind, src, options):
    truth = on_root(world, lambda: _spelled_sources(shared_tmp))
    out = shared_tmp / "ds"
    m = collective(world, lambda: ingest(kind, shared_tmp / src, out, shards=3, options=options, world=world))

    def check():
        values = [float(c) for c in m.classes]
        assert values == [1, 2, 3, 4, 5], m.classes
        seen = 0
        for split in m.splits:
            got = read_split(out, m, split.name)
            ids = [int(t.decode().split()[1]) for t in got["text"]] if kind == "jsonl" else got["x"][:, 0].astype(int)
            wrong = [(int(i), m.classes[y]) for i, y in zip(ids, got["label"]) if values[y] != truth[int(i)]]
            assert not wrong, f"{split.name}: rows stored under the wrong class: {wrong}"
            seen += len(ids)
        assert seen == len(truth)

    collective(world, check)
