"""Schedules, optimizers, losses and metrics of twinhpc.train, against their definitions."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch

from twinhpc.config import OptimConfig
from twinhpc.train.losses import batch_stats, make_loss, metric_from_stats, metric_value, stats_size
from twinhpc.train.optim import Schedule, clip_gradients, make_optimizer
from twinhpc.train.signals import StopSignal


def test_warmup_cosine_rises_linearly_then_decays_to_min_lr():
    cfg = OptimConfig(lr=0.1, schedule="warmup_cosine", warmup_steps=4, min_lr=0.01)
    s = Schedule(cfg, steps_per_epoch=10, total_steps=20)
    rates = [s.lr(step, step // 10) for step in range(20)]
    assert rates[:4] == pytest.approx([cfg.lr * (k + 1) / 4 for k in range(4)])
    after = rates[4:]
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly decreasing
    assert s.lr(20, 2) == pytest.approx(cfg.min_lr)  # the end of the run
    middle = 4 + (20 - 4) // 2
    assert s.lr(middle, 1) == pytest.approx((cfg.lr + cfg.min_lr) / 2)


def test_step_schedule_decays_every_step_size_epochs():
    cfg = OptimConfig(lr=1.0, schedule="step", step_size=2, gamma=0.5)
    s = Schedule(cfg, steps_per_epoch=3, total_steps=30)
    assert [s.lr(0, e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_plateau_decays_after_patience_epochs_without_improvement_and_round_trips():
    cfg = OptimConfig(lr=1.0, schedule="plateau", patience=1, factor=0.5)
    s = Schedule(cfg, 1, 10)
    for value in (1.0, 0.9, 0.95, 0.95):  # improves, then two epochs without improvement
        s.end_epoch(value, "min")
    assert s.lr(0, 0) == 0.5
    clone = Schedule(cfg, 1, 10)
    clone.load_state_dict(s.state_dict())
    s.end_epoch(0.99, "min"), clone.end_epoch(0.99, "min")
    assert clone.state_dict() == s.state_dict()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_weight_decay_is_an_l2_gradient_for_sgd_and_adam_and_decoupled_for_adamw(name):
    """With a zero loss gradient, an L2 penalty still moves p (SGD: by lr·wd·p); AdamW's decay
    is applied to the weights directly, p ← p·(1 − lr·wd)."""
    for opt_name in (name, "adamw"):
        p = torch.nn.Parameter(torch.full((3,), 2.0))
        cfg = OptimConfig(name=opt_name, lr=0.1, momentum=0.0, weight_decay=0.5)
        opt = make_optimizer([p], cfg)
        p.grad = torch.zeros_like(p)
        opt.step()
        if opt_name == "sgd":
            assert torch.allclose(p, torch.full((3,), 2.0 - 0.1 * 0.5 * 2.0))
        elif opt_name == "adamw":
            assert torch.allclose(p, torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))
        else:  # adam: the penalty goes through the normalised update: a step of about lr
            assert torch.allclose(p, torch.full((3,), 2.0 - 0.1), atol=1e-6)


def test_clip_gradients_bounds_the_global_norm():
    ps = [torch.nn.Parameter(torch.zeros(4)) for _ in range(2)]
    ps[0].grad, ps[1].grad = torch.full((4,), 3.0), torch.full((4,), 4.0)
    before = clip_gradients(ps, 1.0)
    assert before.item() == pytest.approx(math.sqrt(4 * 9 + 4 * 16))
    assert torch.linalg.vector_norm(torch.cat([p.grad for p in ps])).item() == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(ps, None) is None


@pytest.mark.parametrize(
    "task,metrics,classes", [("classification", ("accuracy", "f1"), 5), ("regression", ("mae", "rmse", "r2"), 3)]
)
def test_summed_batch_statistics_give_the_metric_of_the_whole_set(task, metrics, classes):
    rng = np.random.default_rng(0)
    n = 97
    outputs = torch.from_numpy(rng.normal(size=(n, classes)).astype(np.float32))
    if task == "classification":
        targets = torch.from_numpy(rng.integers(0, classes, n))
        pred = outputs.argmax(1).numpy()
    else:
        targets = outputs + torch.from_numpy(rng.normal(size=(n, classes)).astype(np.float32))
        pred = outputs.numpy()
    stats = np.zeros(stats_size(task, classes))
    for lo in range(0, n, 10):  # batches of 10 (the last one smaller)
        stats += batch_stats(task, outputs[lo : lo + 10], targets[lo : lo + 10], classes).numpy()
    for name in metrics:
        assert metric_from_stats(name, stats, classes) == pytest.approx(
            metric_value(name, pred, targets.numpy(), classes), rel=1e-9
        )


def test_losses_are_per_sample():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    ce = make_loss("cross_entropy")(out, y)
    assert ce.shape == (3,) and torch.allclose(ce, torch.nn.functional.cross_entropy(out, y, reduction="none"))
    mse = make_loss("mse")(out, out.flip(1))
    assert torch.allclose(mse, ((out - out.flip(1)) ** 2).mean(1))


def test_a_signal_only_sets_the_flag_and_restore_puts_the_old_handler_back():
    before = signal.getsignal(signal.SIGUSR2)
    stop = StopSignal.install()
    try:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.received == signal.SIGUSR2
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR2) == before
