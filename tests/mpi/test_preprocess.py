"""Preprocess under N ranks (1, 2, 3, ...): the fitted state and the preprocessed dataset are the
same as on one rank.

Rank 0 also preprocesses alone (on ``MPI.COMM_SELF``) as the reference. Fitting blocks are made
small so that every rank merges several blocks. Run unchanged with plain pytest (1 rank) and
``mpirun -n N python tests/run_mpi.py tests/mpi``.
"""

from __future__ import annotations

import pytest

from tests.fixtures import write_cifar10, write_csv, write_imdb
from tests.mpi.collective import collective
from twinhpc.comm.world import World
from twinhpc.config import Job
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.errors import TwinError
from twinhpc.preprocess import fit, open_prepared, preprocess
from twinhpc.preprocess.prepared import STATE, read_state

SOURCES = {
    "cifar10": (lambda d: write_cifar10(d, n_train_per_batch=7, n_test=5), {"model": {"name": "cnn"}}),
    "imdb": (lambda d: write_imdb(d, n_per_class=7), {"model": {"name": "mlp"}, "data": {"inputs": "text"}}),
    "imdb-seq": (
        lambda d: write_imdb(d, n_per_class=7),
        {
            "model": {"name": "lstm"},
            "data": {"inputs": "text"},
            "preprocess": {"text": {"representation": "sequence", "max_len": 6}},
        },
    ),
    "csv": (lambda d: write_csv(d / "t.csv", n=50), {"model": {"name": "mlp"}}),
}


def job_for(dataset, out, tables) -> Job:
    tables = {k: dict(v) for k, v in tables.items()}
    return Job.from_dict(
        {
            **tables,
            "data": {"dataset": str(dataset), **tables.get("data", {})},
            "preprocess": {"out": str(out), **tables.get("preprocess", {})},
        }
    )


def _same(got, want):
    assert got == want


@pytest.mark.parametrize("name", SOURCES)
def test_same_state_and_dataset_for_any_rank_count(world, shared_tmp, monkeypatch, name):
    monkeypatch.setattr(fit, "FIT_BLOCK", 4)
    write, tables = SOURCES[name]
    kind = name.split("-")[0]
    src = shared_tmp / "src"
    if world.rank == 0:
        src.mkdir()
        write(src)
    world.barrier()
    ingest(kind, src / "t.csv" if kind == "csv" else src, shared_tmp / "data", shards=3, world=world)
    job = job_for(shared_tmp / "data", shared_tmp / "pre", tables)
    reference = job_for(shared_tmp / "data", shared_tmp / "ref", tables)
    # the CSV has missing numbers: refused with the same message (first sample) on any rank count,
    # then imputed with the same mean
    refused = None
    if world.rank == 0:
        from mpi4py import MPI

        if kind == "csv":
            with pytest.raises(TwinError, match="the first in sample") as e:
                preprocess(reference, world=World(MPI.COMM_SELF))
            refused = str(e.value)
        preprocess(reference, world=World(MPI.COMM_SELF), allow_nonfinite=True)
    refused = world.bcast(refused)
    if refused:
        with pytest.raises(TwinError) as e:
            preprocess(job, world=world)
        collective(world, lambda: _same(str(e.value), refused))
    result = preprocess(job, world=world, allow_nonfinite=True)

    def body():
        assert result["status"] == "written"
        got, ref = Manifest.load(shared_tmp / "pre"), Manifest.load(shared_tmp / "ref")
        assert got.splits == ref.splits  # the same files, counts and checksums
        state, _ = read_state(shared_tmp / "pre" / STATE)
        ref_state, _ = read_state(shared_tmp / "ref" / STATE)
        arrays, settings = state.state()
        ref_arrays, ref_settings = ref_state.state()
        assert settings == ref_settings and arrays.keys() == ref_arrays.keys() and arrays
        for k in arrays:
            assert arrays[k].tolist() == ref_arrays[k].tolist(), k  # bit for bit
        assert open_prepared(job).fields == open_prepared(reference).fields

    collective(world, body)
    assert preprocess(job, world=world)["status"] == "up to date"  # not scanned again


def test_a_failure_on_one_rank_ends_every_rank(world, shared_tmp):
    src = shared_tmp / "src"
    if world.rank == 0:
        write_cifar10(src, n_train_per_batch=4, n_test=4)
    world.barrier()
    ingest("cifar10", src, shared_tmp / "data", shards=3, world=world)
    manifest = Manifest.load(shared_tmp / "data")
    last = manifest.split("test").shards[-1].file
    world.barrier()
    if world.rank == 0:
        (shared_tmp / "data" / last).write_bytes(b"damaged")
    world.barrier()
    job = job_for(shared_tmp / "data", shared_tmp / "pre", {"model": {"name": "cnn"}})
    with pytest.raises(TwinError, match=last):
        preprocess(job, world=world)

    def body():
        assert not (shared_tmp / "pre").exists()
        assert not [p for p in shared_tmp.iterdir() if ".tmp-" in p.name]

    collective(world, body)
