"""Data-parallel training on N ranks equals one process with the whole batch (any N).

Every rank computes the one-process reference itself (a plain model, plain ``loss.backward``,
no engine) and compares it with its own data-parallel replica. The global batch (12) divides
by 1, 2 and 3; rank ``r`` trains on rows ``[12r/N, 12(r+1)/N)``. Closeness is measured per
tensor as max |a - b| / max |b| (:func:`max_rel_diff`).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.mpi.collective import collective
from twinhpc.comm.ddp import DataParallel
from twinhpc.errors import TwinError
from twinhpc.models import build

GLOBAL_BATCH, STEPS, LR = 12, 3, 0.1
SMALL_CAP_MB = 4096 / (1 << 20)  # 4 KiB: several buckets, so the launch order matters


def tolerance(wire_dtype) -> float:
    """float32: the sums differ only in rounding order (relative 1e-5); a 16-bit wire: two
    machine epsilons of the wire dtype (measured: 0.3-0.8 eps; docs/data-parallel.md)."""
    return 1e-5 if wire_dtype is None else 2 * torch.finfo(wire_dtype).eps


@pytest.fixture(scope="module")
def engine(world):
    from twinhpc.comm.engine import Engine

    torch.set_num_threads(1)
    eng = Engine(comm=world.comm, stall_timeout=120)
    yield eng
    eng.close()


class Recorder:
    """The engine, recording the name of every bucket all-reduce in launch order."""

    def __init__(self, engine):
        self.engine, self.names = engine, []
        self.rank, self.size = engine.rank, engine.size

    def allreduce_async_(self, tensor, **kwargs):
        self.names.append(kwargs["name"])
        return self.engine.allreduce_async_(tensor, **kwargs)

    def allreduce_here_(self, tensor, **kwargs):
        self.names.append(kwargs["name"])
        return self.engine.allreduce_here_(tensor, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def global_batches(steps=STEPS, shape=(3, 32, 32), classes=10):
    g = torch.Generator().manual_seed(1234)
    return [
        (torch.randn(GLOBAL_BATCH, *shape, generator=g), torch.randint(0, classes, (GLOBAL_BATCH,), generator=g))
        for _ in range(steps)
    ]


def share(t, rank, size):
    return t[GLOBAL_BATCH * rank // size : GLOBAL_BATCH * (rank + 1) // size]


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a.parameters(), b.parameters()))


def seeded(seed, make):
    torch.manual_seed(seed)
    return make()


@torch.no_grad()
def sgd_step(model):
    """Plain SGD (torch.optim.SGD's first use imports torch._dynamo: seconds per rank)."""
    for p in model.parameters():
        if p.grad is not None:
            p -= LR * p.grad
    model.zero_grad()


def train_reference(model, batches, loss_of=lambda m, x, y: F.cross_entropy(m(x), y)):
    for x, y in batches:
        loss_of(model, x, y).backward()
        sgd_step(model)
    return model


def overlap_of(mode, world):
    """DataParallel's ``overlap`` for a test mode: both settings, and ranks that differ in it."""
    return {"thread": True, "caller": False, "mixed": world.rank % 2 == 0}[mode]


OVERLAP_MODES = ["thread", "caller", "mixed"]


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
@pytest.mark.parametrize("wire", [None, torch.bfloat16, torch.float16], ids=["float32", "bfloat16", "float16"])
def test_training_equals_one_process_with_the_whole_batch(world, engine, wire, overlap):
    def body():
        batches = global_batches()
        reference = train_reference(seeded(0, lambda: build("cnn")), batches)
        # rank-dependent initialisation: the broadcast must make it rank 0's
        dp = DataParallel(
            seeded(world.rank, lambda: build("cnn")),
            engine=engine,
            wire_dtype=wire,
            bucket_cap_mb=SMALL_CAP_MB,
            overlap=overlap_of(overlap, world),
        )
        for x, y in batches:
            F.cross_entropy(dp(share(x, world.rank, world.size)), share(y, world.rank, world.size)).backward()
            dp.synchronize()
            sgd_step(dp)
        dp.close()
        assert max_rel_diff(dp.module, reference) <= tolerance(wire)

    collective(world, body)


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.register_buffer("counter", torch.zeros(3, dtype=torch.int64))

    def forward(self, x):
        return self.norm(x)


def test_parameters_and_buffers_start_as_rank_0s(world, engine):
    def body():
        model = WithBuffers()
        with torch.no_grad():
            for t in (*model.parameters(), *model.buffers()):
                t.fill_(world.rank + 1)
        DataParallel(model).close()  # with an engine of its own, closed by close()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert all(torch.equal(v, torch.ones_like(v)) for v in state.values()), state

    collective(world, body)


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
def test_no_sync_accumulation_equals_one_big_batch(world, engine, overlap):
    def body():
        batches = global_batches()
        reference = train_reference(seeded(0, lambda: build("cnn")), batches)
        dp = DataParallel(
            seeded(0, lambda: build("cnn")),
            engine=engine,
            bucket_cap_mb=SMALL_CAP_MB,
            overlap=overlap_of(overlap, world),
        )
        for x, y in batches:
            x, y = share(x, world.rank, world.size), share(y, world.rank, world.size)
            half = len(x) // 2  # the share (12/N rows) splits into two equal micro-batches
            with dp.no_sync():
                (F.cross_entropy(dp(x[:half]), y[:half]) / 2).backward()
            (F.cross_entropy(dp(x[half:]), y[half:]) / 2).backward()
            dp.synchronize()
            sgd_step(dp)
        dp.close()
        assert max_rel_diff(dp.module, reference) <= tolerance(None)

    collective(world, body)


class Branchy(nn.Module):
    """``unused`` never gets a gradient; ``branch`` only where ``forward`` is told to use it."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(16, 32)
        self.branch = nn.Linear(32, 32)
        self.unused = nn.Linear(32, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x, use_branch):
        h = torch.relu(self.trunk(x))
        return self.head(torch.relu(self.branch(h)) if use_branch else h)


@pytest.mark.parametrize("overlap", OVERLAP_MODES)
def test_unused_parameters_do_not_hang_and_buckets_go_in_the_same_order(world, engine, overlap):
    # the branch runs on rank 0's share only: on the other ranks its bucket is incomplete at
    # the end of backward, and the buckets behind it wait for synchronize()
    def body():
        batches = global_batches(shape=(16,), classes=5)

        def reference_loss(model, x, y):
            return (
                sum(
                    F.cross_entropy(model(share(x, r, world.size), r == 0), share(y, r, world.size))
                    for r in range(world.size)
                )
                / world.size
            )

        reference = train_reference(seeded(0, Branchy), batches, reference_loss)
        recorder = Recorder(engine)
        dp = DataParallel(
            seeded(0, Branchy), engine=recorder, bucket_cap_mb=SMALL_CAP_MB, overlap=overlap_of(overlap, world)
        )
        # one rank: nothing to bucket or launch (the average is the gradient itself)
        assert len(dp.buckets) >= 3 if world.size > 1 else dp.buckets == []
        for x, y in batches:
            F.cross_entropy(
                dp(share(x, world.rank, world.size), world.rank == 0), share(y, world.rank, world.size)
            ).backward()
            dp.synchronize()
            sgd_step(dp)
        dp.close()
        assert recorder.names == [f"bucket{b}" for _ in batches for b in range(len(dp.buckets))]
        assert max_rel_diff(dp.module, reference) <= tolerance(None)
        return [[tuple(p.shape) for p in b.params] for b in dp.buckets]

    layouts = world.allgather(collective(world, body))

    def same_buckets_everywhere():
        assert all(layout == layouts[0] for layout in layouts), layouts

    collective(world, same_buckets_everywhere)


def test_a_rank_with_a_different_model_is_named_on_every_rank(world, engine):
    if world.size == 1:
        pytest.skip("needs a second rank")

    def body():
        hidden = 65 if world.rank == world.size - 1 else 64
        with pytest.raises(TwinError, match=rf"rank\(s\) {world.size - 1} differs"):
            DataParallel(build("cnn", hidden=hidden), engine=engine)

    collective(world, body)
