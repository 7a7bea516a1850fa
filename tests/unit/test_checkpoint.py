"""Checkpoints: an interrupted run continued from a checkpoint equals the uninterrupted run bit for
bit (SGD with momentum, Adam, AdamW); dtypes and RNG states survive; a checkpoint that does not
fit, or a damaged file, is an error naming the file; writing is atomic and old ones are pruned."""

from __future__ import annotations

import os
import random

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from twinhpc.io import checkpoint as ckpt_mod
from twinhpc.io.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
}


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train(model: nn.Module, opt, steps: int, augment: np.random.Generator) -> None:
    """Steps whose data and dropout come from every RNG a resume must restore."""
    for _ in range(steps):
        noise = torch.from_numpy(augment.normal(size=(8, 6)).astype(np.float32))
        x = torch.randn(8, 6) + noise + float(np.random.rand()) + random.random()
        y = torch.randint(0, 3, (8,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_state_equal(a, b, where: str = "state") -> None:
    """``a`` and ``b`` hold the same structure (tuples stay tuples) and bit-equal tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_continues_bit_identically(tmp_path, name):
    seed_all(0)
    augment = np.random.default_rng(1)
    model = make_model(0)
    opt = OPTIMIZERS[name](model.parameters())
    train(model, opt, 3, augment)
    save_checkpoint(
        tmp_path,
        step=3,
        epoch=0,
        model=model,
        optimizer=opt,
        rng=rng_state({"augment": augment}),
        loader={"epoch": 0, "batches": 3},
    )
    train(model, opt, 4, augment)  # the uninterrupted run

    seed_all(123)  # "another process": other RNG states, another initialisation, fresh optimizer
    augment2 = np.random.default_rng(99)
    model2 = make_model(7)
    opt2 = OPTIMIZERS[name](model2.parameters())
    info = load_checkpoint(latest(tmp_path), model2, opt2, generators={"augment": augment2})
    assert (info["step"], info["epoch"], info["loader"], info["rng_restored"]) == (
        3,
        0,
        {"epoch": 0, "batches": 3},
        True,
    )
    train(model2, opt2, 4, augment2)

    assert_state_equal(model.state_dict(), model2.state_dict())
    assert_state_equal(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_round_trips_exactly(tmp_path, name):
    model = make_model(0)
    opt = OPTIMIZERS[name](model.parameters())
    train(model, opt, 2, np.random.default_rng(0))
    path = save_checkpoint(tmp_path, step=2, epoch=0, model=model, optimizer=opt)
    model2 = make_model(5)
    opt2 = OPTIMIZERS[name](model2.parameters())
    load_checkpoint(path, model2, opt2)
    assert_state_equal(opt.state_dict(), opt2.state_dict())  # betas stay a tuple


class Odd(nn.Module):
    """Tensors of every kind a state_dict holds: bfloat16, float16, float64, int64, bool, 0-d, empty."""

    def __init__(self):
        super().__init__()
        self.bf = nn.Parameter(torch.randn(3, 5).to(torch.bfloat16))
        self.fp16 = nn.Parameter(torch.randn(4).half())
        self.register_buffer("f64", torch.randn(2, 2, 2, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(7))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("empty", torch.zeros(0, 4))


def test_dtypes_and_shapes_are_kept_exactly(tmp_path):
    torch.manual_seed(0)
    model = Odd()
    path = save_checkpoint(tmp_path, step=1, epoch=0, model=model)
    with h5py.File(path, "r") as f:  # bfloat16 as its bits
        assert f["model/bf"].dtype == np.uint16 and f["model/bf"].attrs["torch_dtype"] == "torch.bfloat16"
    torch.manual_seed(1)
    model2 = Odd()
    load_checkpoint(path, model2)
    assert_state_equal(model.state_dict(), model2.state_dict())


def test_rng_states_are_restored(tmp_path):
    seed_all(5)
    augment = np.random.default_rng(3)
    path = save_checkpoint(tmp_path, step=1, epoch=0, model=make_model(0), rng=rng_state({"augment": augment}))

    def draw():
        return (
            torch.rand(4).tolist(),
            np.random.rand(4).tolist(),
            [random.random() for _ in range(4)],
            augment.normal(size=4).tolist(),
        )

    first = draw()
    load_checkpoint(path, generators={"augment": augment})
    assert draw() == first
    state = rng_state({"augment": augment})
    again = draw()
    set_rng_state(state, {"augment": augment})
    assert draw() == again


def test_each_rank_gets_its_own_rng_state(tmp_path):
    states = []
    for rank in range(2):
        seed_all(100 + rank)
        states.append(rng_state())
    path = save_checkpoint(tmp_path, step=1, epoch=0, model=make_model(0), rng=states)
    for rank in range(2):
        seed_all(0)
        assert load_checkpoint(path, rank=rank)["rng_restored"]
        seed_all(100 + rank)
        expected = torch.rand(3)
        load_checkpoint(path, rank=rank)
        assert torch.equal(torch.rand(3), expected)
    seed_all(0)
    before = torch.get_rng_state()
    assert load_checkpoint(path, rank=2)["rng_restored"] is False  # written by 2 ranks
    assert torch.equal(torch.get_rng_state(), before)


def test_a_generator_missing_from_the_checkpoint_is_named(tmp_path):
    path = save_checkpoint(tmp_path, step=1, epoch=0, model=make_model(0))
    with pytest.raises(CheckpointError, match=rf"{path}: no state of numpy generator 'augment'"):
        load_checkpoint(path, generators={"augment": np.random.default_rng()})


# -- checkpoints that do not fit --------------------------------------------------------------
def test_a_checkpoint_of_another_model_names_the_parameter(tmp_path):
    path = save_checkpoint(
        tmp_path, step=1, epoch=0, model=make_model(0), optimizer=torch.optim.AdamW(make_model(0).parameters())
    )
    wider = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    with pytest.raises(
        CheckpointError,
        match=rf"{path}: parameter '0.weight' is torch.float32 \[16, 6\] in the "
        rf"checkpoint but torch.float32 \[32, 6\] in the model",
    ):
        load_checkpoint(path, wider)
    deeper = nn.Sequential(*make_model(0), nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match=rf"{path}: parameter '5.weight' of the model is not in the checkpoint"):
        load_checkpoint(path, deeper)
    shallower = nn.Sequential(nn.Linear(6, 16))
    with pytest.raises(CheckpointError, match=rf"{path}: parameter '1\.\w+' of the checkpoint is not in the model"):
        load_checkpoint(path, shallower)
    with pytest.raises(
        CheckpointError, match=r"'0.weight' is torch.float32 \[16, 6\] in the checkpoint but torch.float64"
    ):
        load_checkpoint(path, make_model(0).double())


def test_a_checkpoint_of_another_optimizer_is_an_error(tmp_path):
    model = make_model(0)
    opt = torch.optim.AdamW(model.parameters())
    train(model, opt, 1, np.random.default_rng(0))
    path = save_checkpoint(tmp_path, step=1, epoch=0, model=model, optimizer=opt)
    with pytest.raises(CheckpointError, match=rf"{path}: optimizer state is AdamW's, not SGD's"):
        load_checkpoint(path, make_model(0), torch.optim.SGD(model.parameters(), lr=0.1))
    fewer = torch.optim.AdamW(list(make_model(0).parameters())[:2])
    with pytest.raises(CheckpointError, match=rf"{path}: optimizer state does not fit the optimizer"):
        load_checkpoint(path, None, fewer)
    bare = save_checkpoint(tmp_path, step=2, epoch=0, model=model)
    with pytest.raises(CheckpointError, match=rf"{bare}: holds no optimizer state"):
        load_checkpoint(bare, model, opt)


def test_damaged_files_are_named(tmp_path):
    path = save_checkpoint(tmp_path, step=1, epoch=0, model=make_model(0))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{truncated}: damaged or truncated checkpoint"):
        load_checkpoint(truncated, make_model(0))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=rf"{garbage}: damaged or truncated checkpoint"):
        load_checkpoint(garbage, make_model(0))
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/nope.h5: no such checkpoint"):
        load_checkpoint(tmp_path / "nope.h5", make_model(0))


# -- writing ----------------------------------------------------------------------------------
def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = make_model(0)
    first = save_checkpoint(tmp_path, step=1, epoch=0, model=model)
    calls = []
    real = ckpt_mod._write_tensor

    def failing(group, name, tensor):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        real(group, name, tensor)

    monkeypatch.setattr(ckpt_mod, "_write_tensor", failing)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, step=2, epoch=0, model=make_model(1))
    with pytest.raises(TypeError, match="JSON values only"):
        save_checkpoint(tmp_path, step=3, epoch=0, model=model, extra={"x": object()})
    assert os.listdir(tmp_path / "ckpt") == ["step-1.h5"]
    assert latest(tmp_path) == first
    model2 = make_model(9)
    load_checkpoint(first, model2)
    assert_state_equal(model.state_dict(), model2.state_dict())


def test_keep_prunes_the_oldest_and_latest_is_by_step(tmp_path):
    model = make_model(0)
    for step in (1, 2, 9, 10, 11):
        save_checkpoint(tmp_path, step=step, epoch=0, model=model, keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 10, 11]
    assert latest(tmp_path) == checkpoint_path(tmp_path, 11)
    # continued from step 9: the checkpoints of the abandoned steps 10 and 11 go
    save_checkpoint(tmp_path, step=10, epoch=0, model=model, keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 10]
    assert latest(tmp_path / "no-such-run") is None
