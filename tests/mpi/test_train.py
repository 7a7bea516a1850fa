"""`twinhpc.train.train` on N ranks equals one process training on the whole global batch.

Runs unchanged at 1, 2 and 3 ranks. Every rank computes the one-process reference itself: a
plain PyTorch loop (no DataParallel, no engine) over the same global batches — the union of the
N ranks' shares, which it reads with N loaders of ``rank=r, size=N`` — with the same optimizer,
accumulation and clipping. The global batch (12) divides by 1, 2 and 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.mpi.collective import collective
from twinhpc.config import load_job
from twinhpc.data.ingest import ingest
from twinhpc.data.loader import ShardedLoader
from twinhpc.io.checkpoint import latest, load_checkpoint
from twinhpc.io.results import read_results
from twinhpc.preprocess import open_prepared, preprocess
from twinhpc.train import train
from twinhpc.train.model import build_model

GLOBAL_BATCH, ACCUMULATE, EPOCHS, TRAIN, VAL = 12, 2, 2, 72, 24
JOB = """
[data]
dataset = "{dir}/data"
batch_size = {batch}
prefetch = 1
[model]
name = "cnn"
[model.structure]
channels = 8
hidden = 16
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 1e-3
grad_clip = 0.5
accumulate = {accumulate}
[train]
epochs = {epochs}
log_every = 1
seed = 3
"""


def max_rel_diff(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


@pytest.fixture
def job(world, shared_tmp):
    """A 16×16 RGB image dataset with 4 classes, ingested and preprocessed (collectively)."""
    torch.set_num_threads(1)
    src = shared_tmp / "images.npz"
    if world.rank == 0:
        rng = np.random.default_rng(0)
        n = TRAIN + VAL
        np.savez(src, image=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), label=rng.integers(0, 4, n))
    world.barrier()
    ingest(
        "npz",
        src,
        shared_tmp / "data",
        options={"label": "label"},
        val_fraction=VAL / (TRAIN + VAL),
        test_fraction=0.0,
        world=world,
    )
    path = shared_tmp / "job.toml"
    if world.rank == 0:
        path.write_text(JOB.format(dir=shared_tmp, batch=GLOBAL_BATCH, accumulate=ACCUMULATE, epochs=EPOCHS))
    world.barrier()
    job = load_job(path)
    preprocess(job, world=world)
    return job


def reference(job, prep, size: int) -> dict:
    """One process, plain PyTorch: the parameters after training on the N ranks' global batches."""
    torch.manual_seed(job.train.seed)
    model = build_model(job, prep)
    opt = torch.optim.SGD(
        model.parameters(), lr=job.optim.lr, momentum=job.optim.momentum, weight_decay=job.optim.weight_decay
    )
    loaders = [
        ShardedLoader(
            prep.dataset_dir,
            "train",
            GLOBAL_BATCH // size,
            seed=job.data.seed,
            fields=prep.fields,
            prefetch=0,
            rank=r,
            size=size,
        )
        for r in range(size)
    ]
    for epoch in range(EPOCHS):
        shares = [[prep.transform({k: v.copy() for k, v in b.items()}) for b in ld.epoch(epoch)] for ld in loaders]
        for step in range(len(shares[0]) // ACCUMULATE):
            for micro in range(ACCUMULATE):
                parts = [share[step * ACCUMULATE + micro] for share in shares]
                x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                (F.cross_entropy(model(x), y) / ACCUMULATE).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), job.optim.grad_clip)
            opt.step()
            opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_n_ranks_train_like_one_process_with_the_global_batch(world, shared_tmp, job):
    result = train(job, shared_tmp / "run", world=world, progress=False)

    def check():
        prep = open_prepared(job)
        steps_per_epoch = TRAIN // GLOBAL_BATCH // ACCUMULATE
        assert result.status == "finished" and result.step == EPOCHS * steps_per_epoch
        model = build_model(job, prep)
        load_checkpoint(latest(shared_tmp / "run"), model, restore_rng=False)
        trained = {k: v.detach() for k, v in model.state_dict().items()}
        expected = reference(job, prep, world.size)
        assert max_rel_diff(trained, expected) < 1e-5
        untrained = build_model(job, prep).state_dict()
        assert max_rel_diff(untrained, expected) > 1e-3  # training moved the weights
        if world.rank == 0:
            results = read_results(shared_tmp / "run")
            assert results["epochs"] == EPOCHS and len(results["steps"]["step"]) == EPOCHS * steps_per_epoch
            assert results["report"]["n"] == VAL  # every validation sample once, at any N

    collective(world, check)
