"""DataParallel in one process against a recording fake engine: when and what it launches.

The fake plays rank 0 of two ranks whose peer computes the same gradients, so an average is
the identity and it can return every tensor as it is; it records every bucket all-reduce (the
bucket's flat buffer), whether handed to the engine's thread (``allreduce_async_``) or run on
the caller's (``allreduce_here_``, the last CPU bucket). At a true world size of one DataParallel
builds no buckets at all (the last tests). Multi-rank behaviour with the real engine is in
tests/mpi/test_ddp.py.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twinhpc.comm.ddp import DataParallel
from twinhpc.comm.timeline import LANES, now_us
from twinhpc.errors import TwinError


class FakeHandle:
    def __init__(self):
        t = now_us()
        self._timings = {"enqueue": t, "start": t, "pack_done": t, "reduce_done": t, "unpack_done": t}

    def wait(self):
        return None

    def done(self):
        return True

    def timings(self):
        return dict(self._timings)


class FakeEngine:
    rank, size = 0, 2

    def __init__(self, cores_per_rank=1.0):
        self.cores = cores_per_rank  # what cores_per_rank() reports
        self.launches = []  # (name, flat buffer, wire_dtype) per bucket all-reduce, in order
        self.here = []  # names of those run on the caller's thread (allreduce_here_)
        self.closed = False

    def cores_per_rank(self):
        return self.cores

    def shared_buffer(self, nbytes):
        return torch.zeros(nbytes, dtype=torch.uint8)

    def allreduce_(self, t, op="sum", wire_dtype=None):
        return t

    def allreduce_async_(self, t, op="avg", wire_dtype=None, name=None):
        assert op == "avg"
        self.launches.append((name, t, wire_dtype))
        return FakeHandle()

    def allreduce_here_(self, t, op="avg", wire_dtype=None, name=None):
        self.here.append(name)
        return self.allreduce_async_(t, op, wire_dtype, name)

    def broadcast_(self, t, root=0):
        return t

    def close(self):
        self.closed = True


class Rank0Differs(FakeEngine):
    """Rank 0's model digest differs from this rank's."""

    def broadcast_(self, t, root=0):
        if t.dtype == torch.int64 and t.numel() == 1:
            t += 1
        return t


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)
        self.last = nn.Linear(8, 3)

    def forward(self, x):
        return self.last(torch.relu(self.first(x)))


def in_buffer(grad, flat) -> bool:
    """Whether ``grad`` is a view inside the bucket buffer ``flat``."""
    lo, hi = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
    return lo <= grad.data_ptr() and grad.data_ptr() + grad.numel() * grad.element_size() <= hi


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def backward(model, seed=0):
    x, y = batch(seed)
    F.cross_entropy(model(x), y).backward()


SMALL_CAP_MB = 600 / (1 << 20)  # 600 bytes: several buckets for these small models


def test_buckets_launch_during_backward_in_order_and_the_last_in_synchronize():
    """Every bucket but the last goes to the engine's thread as backward completes it; the last
    (a CPU bucket) is reduced by synchronize() on the calling thread, after the others."""
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng, bucket_cap_mb=SMALL_CAP_MB, overlap=True)
    assert len(dp.buckets) > 2
    names = [f"bucket{b.index}" for b in dp.buckets]
    backward(dp)
    assert [name for name, _, _ in eng.launches] == names[:-1] and eng.here == []
    assert all(in_buffer(p.grad, dp.buckets[-1].flat) for p in dp.buckets[-1].params)
    assert dp.synchronize() >= 0
    assert [name for name, _, _ in eng.launches] == names and eng.here == names[-1:]
    for bucket, (_, flat, _) in zip(dp.buckets, eng.launches):
        assert flat is bucket.flat
        assert all(in_buffer(p.grad, flat) for p in bucket.params)
    backward(dp, seed=1)  # the next step launches again
    assert len(eng.launches) == 2 * len(dp.buckets) - 1
    dp.synchronize()
    assert eng.here == [names[-1]] * 2


def test_one_bucket_is_reduced_in_synchronize():
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng, overlap=True)
    assert len(dp.buckets) == 1
    backward(dp)
    assert eng.launches == []
    dp.synchronize()
    assert eng.here == ["bucket0"] and len(eng.launches) == 1


def test_without_overlap_every_bucket_is_reduced_on_the_calling_thread_during_backward():
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng, bucket_cap_mb=SMALL_CAP_MB, overlap=False)
    names = [f"bucket{b.index}" for b in dp.buckets]
    assert len(names) > 2
    backward(dp)
    assert [name for name, _, _ in eng.launches] == names and eng.here == names
    dp.synchronize()
    assert len(eng.launches) == len(names)  # nothing left for synchronize()
    plain = mlp()
    backward(plain)
    for p, q in zip(dp.module.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spare", [0, 1])
def test_overlap_by_default_only_with_a_spare_core_per_rank(spare):
    threads = torch.get_num_threads()
    dp = DataParallel(mlp(), engine=FakeEngine(cores_per_rank=threads + spare))
    assert dp.overlap is bool(spare)


def test_buckets_hold_the_trainable_params_in_reverse_order():
    model = mlp()
    model[0].bias.requires_grad_(False)
    dp = DataParallel(model, engine=FakeEngine(), bucket_cap_mb=SMALL_CAP_MB)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [p for b in dp.buckets for p in b.params] == trainable[::-1]


def test_unused_parameter_waits_for_synchronize_and_gets_a_zero_gradient():
    eng = FakeEngine()
    model = WithUnused()
    dp = DataParallel(model, engine=eng, bucket_cap_mb=SMALL_CAP_MB)
    unused = {id(p) for p in model.unused.parameters()}
    first_blocked = next(b.index for b in dp.buckets if any(id(p) in unused for p in b.params))
    backward(dp)
    assert first_blocked < len(dp.buckets) - 1
    assert len(eng.launches) == first_blocked  # later buckets wait behind the incomplete one
    dp.synchronize()
    assert len(eng.launches) == len(dp.buckets)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.unused.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.last.parameters())


def test_backward_twice_without_synchronize_is_an_error():
    dp = DataParallel(mlp(), engine=FakeEngine())
    backward(dp)
    with pytest.raises(TwinError, match="no_sync"):
        backward(dp, seed=1)


def test_no_sync_accumulates_locally_and_the_next_backward_reduces_the_sum():
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng, bucket_cap_mb=SMALL_CAP_MB)
    plain = mlp()
    with dp.no_sync():
        backward(dp, seed=0)
        backward(dp, seed=1)
        with pytest.raises(TwinError, match="inside no_sync"):
            dp.synchronize()
    assert eng.launches == []
    backward(dp, seed=2)
    dp.synchronize()
    for seed in range(3):
        backward(plain, seed)
    for p, q in zip(dp.module.parameters(), plain.parameters()):
        assert any(in_buffer(p.grad, flat) for _, flat, _ in eng.launches)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


def test_no_sync_after_a_synced_backward_is_an_error():
    dp = DataParallel(mlp(), engine=FakeEngine())
    backward(dp)
    with pytest.raises(TwinError, match="synchronize"):
        with dp.no_sync():
            pass


def test_wire_dtype_goes_with_every_launch():
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng, bucket_cap_mb=SMALL_CAP_MB, wire_dtype=torch.bfloat16)
    backward(dp)
    dp.synchronize()
    assert {w for _, _, w in eng.launches} == {torch.bfloat16}


def test_a_model_differing_from_rank_0_is_an_error_naming_the_rank():
    with pytest.raises(TwinError, match=r"rank\(s\) 0 differs"):
        DataParallel(mlp(), engine=Rank0Differs())


def test_timeline_has_every_bucket_of_every_step(tmp_path):
    dp = DataParallel(mlp(), engine=FakeEngine(), bucket_cap_mb=SMALL_CAP_MB, timeline=tmp_path)
    steps = 2
    for step in range(steps):
        backward(dp, step)
        dp.synchronize()
    dp.close()
    events = json.loads((tmp_path / "trace.rank0.json").read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    allreduces = sorted(
        (e["args"]["step"], e["args"]["bucket"])
        for e in spans
        if e["name"].startswith("bucket") and LANES[e["tid"]] == "allreduce"
    )
    assert allreduces == [(s, b.index) for s in range(steps) for b in dp.buckets]
    assert sum(e["name"] == "synchronize" for e in spans) == steps


def test_close_unhooks_the_model_and_keeps_a_borrowed_engine_open():
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng)
    dp.close()
    backward(dp.module)
    assert eng.launches == [] and not eng.closed


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradients_are_bucket_views_whatever_zero_grad_does(set_to_none):
    """After each synced backward every .grad is a view into its bucket, holding the same values
    as a plain model's grads, whether zero_grad() dropped them (copied in once) or zeroed them
    in place (accumulated there directly)."""
    eng = FakeEngine()
    dp = DataParallel(mlp(), engine=eng, bucket_cap_mb=SMALL_CAP_MB)
    plain = mlp()
    for seed in range(3):
        for m in (dp.module, plain):
            for p in m.parameters():
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.zero_()
        backward(dp, seed)
        dp.synchronize()
        backward(plain, seed)
        for bucket in dp.buckets:
            for p, view in zip(bucket.params, bucket.views):
                assert p.grad.data_ptr() == view.data_ptr()
        for p, q in zip(dp.module.parameters(), plain.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)


def test_close_moves_gradients_out_of_the_engines_memory():
    dp = DataParallel(mlp(), engine=FakeEngine(), bucket_cap_mb=SMALL_CAP_MB)
    backward(dp)
    dp.synchronize()
    flats = [b.flat for b in dp.buckets]
    before = [p.grad.clone() for p in dp.module.parameters()]
    dp.close()
    for p, g in zip(dp.module.parameters(), before):
        assert not any(in_buffer(p.grad, flat) for flat in flats)
        assert torch.equal(p.grad, g)


class OneRank(FakeEngine):
    size = 1


def test_one_rank_has_no_buckets_no_hooks_and_plain_gradients(tmp_path):
    """World size 1: backward is the plain model's (no hook runs, .grad is autograd's own
    tensor, nothing launched), synchronize() only counts the step, and training equals the
    plain model's, with no_sync() accumulation too."""
    eng = OneRank()
    dp = DataParallel(mlp(), engine=eng, bucket_cap_mb=SMALL_CAP_MB, timeline=tmp_path)
    plain = mlp()
    assert dp.buckets == [] and dp._hooks == []
    for seed in range(3):
        with dp.no_sync():
            backward(dp, seed)
        backward(dp, seed + 10)
        assert dp.synchronize() >= 0
        backward(plain, seed)
        backward(plain, seed + 10)
        for p, q in zip(dp.module.parameters(), plain.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
            p.grad = q.grad = None
    assert eng.launches == [] and dp.steps == 3
    dp.close()
    events = json.loads((tmp_path / "trace.rank0.json").read_text())["traceEvents"]
    assert sum(e.get("name") == "synchronize" for e in events) == 3
