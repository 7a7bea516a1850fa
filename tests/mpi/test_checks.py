"""Labels outside the classes stop `train` at set-up, on every rank with the same error.

Runs unchanged at 1, 2 and 3 ranks: the bad labels sit in one shard (so only some ranks read
them) and the ranks must still agree before any of them starts a step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tests.fixtures import small_cnn_job
from tests.mpi.collective import collective
from twinhpc.config import load_job
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.errors import DatasetError
from twinhpc.preprocess import preprocess
from twinhpc.train import train


def _dataset(world, tmp, labels):
    """8×8 grey images with ``labels``, in 3 shards per split, preprocessed for a CNN job."""
    if world.rank == 0:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (len(labels), 8, 8, 1), dtype=np.uint8)
        np.savez(tmp / "a.npz", image=images, label=np.asarray(labels))
    world.barrier()
    ingest("npz", tmp / "a.npz", tmp / "data", options={"label": "label"}, shards=3, test_fraction=0, world=world)
    if world.rank == 0:
        (tmp / "job.toml").write_text(small_cnn_job(tmp / "data") + f'[preprocess]\nout = "{tmp / "pre"}"\n')
    world.barrier()
    return load_job(tmp / "job.toml")


def _train_error(world, job, out) -> list:
    """Train ``job`` expecting a DatasetError: every rank's message (None where none was raised)."""
    try:
        train(job, out=out, world=world)
        message = None
    except DatasetError as e:
        message = str(e)
    return world.allgather(message)


def _where(tmp, split, value):
    """Samples of ``split`` of the dataset at ``tmp/data`` whose label is ``value``."""
    from twinhpc.preprocess.fit import read_rows

    m = Manifest.load(tmp / "data")
    spec = m.field("label")
    return sum(
        int(np.count_nonzero(read_rows(tmp / "data", sh.file, (spec,), 0, sh.count)["label"] == value))
        for sh in m.split(split).shards
    )


def test_a_label_of_minus_one_stops_every_rank_before_training(world, shared_tmp):
    labels = [i % 3 for i in range(60)]
    labels[7] = labels[40] = labels[41] = -1  # "no label" in a labelled split
    job = _dataset(world, shared_tmp, labels)
    preprocess(job, world=world)
    counts = {s: _where(shared_tmp, s, -1) for s in ("train", "val")}
    messages = _train_error(world, job, shared_tmp / "run")
    message = messages[0]

    def check():
        assert message and len(set(messages)) == 1, messages  # the same error on every rank
        assert message.startswith(f"dataset {shared_tmp / 'data'}: labels outside the 3 classes")
        for split, n in counts.items():
            if n:
                assert f"split {split!r}: label -1 in {n} sample(s)" in message, message
        assert "rank" not in message and "\n" not in message
        assert not (shared_tmp / "run" / "results.h5").exists()  # stopped before the first step

    collective(world, check)


def test_a_label_beyond_the_class_list_is_named_with_its_count(world, shared_tmp):
    labels = [i % 3 for i in range(60)]
    job = _dataset(world, shared_tmp, labels)
    if world.rank == 0:  # a class list that lacks class 2 (as a --classes list of two would)
        m = Manifest.load(shared_tmp / "data")
        dataclasses.replace(m, classes=("0", "1")).save(shared_tmp / "data")
    world.barrier()
    preprocess(job, world=world)
    counts = {s: _where(shared_tmp, s, 2) for s in ("train", "val")}
    messages = _train_error(world, job, shared_tmp / "run")

    def check():
        assert messages[0] and len(set(messages)) == 1, messages
        want = "; ".join(f"split {s!r}: label 2 in {n} sample(s)" for s, n in counts.items())
        assert f"labels outside the 2 classes (class indices 0..1): {want};" in messages[0]

    collective(world, check)
