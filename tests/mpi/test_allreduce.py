"""The all-reduce engine at any world size: results equal numpy's sum of every rank's input.

Every rank's input is a function of its rank, so every rank computes the expected sum itself.
Runs unchanged under plain pytest (1 rank) and ``mpirun -n N python tests/run_mpi.py``.
"""

import gc

import numpy as np
import pytest
import torch

from tests.mpi.collective import collective
from twinhpc import ops

if not ops.available():
    pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)

from twinhpc.comm import tuning  # noqa: E402
from twinhpc.comm.engine import ALGORITHMS, Engine  # noqa: E402
from twinhpc.comm.tuning import ALL_SIZES  # noqa: E402

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPES = FLOATS + (torch.int32, torch.int64)
#: empty, one element, odd, and a few segments of the ring / rounds of shared memory
SIZES = (0, 1, 7, 100_003)
#: wire dtype -> its unit roundoff (relative spacing of representable numbers / 2)
WIRE_EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.fixture(scope="module")
def engine(world):
    eng = collective(world, lambda: Engine(world.comm, stall_timeout=120, algorithm="mpi", segment_bytes=64 << 10))
    yield eng
    eng.close()


def skip_unless_available(engine, algorithm: str) -> None:
    """The Open MPI variants exist only with Open MPI's dynamic rules enabled at MPI_Init (which
    ``import twinhpc`` arranges; tests/unit/test_engine.py checks that it does)."""
    if algorithm not in engine.available_algorithms():
        pytest.skip(f"algorithm {algorithm} is not available here (not Open MPI, or MPI started before twinhpc)")


def rank_input(n: int, dtype: torch.dtype, rank: int) -> torch.Tensor:
    """Small multiples of 1/4 (exact in every dtype, and so are their sums over a few ranks)."""
    i = torch.arange(n, dtype=torch.float64)
    values = (torch.remainder(i * 7 + rank * 3, 13) - 6) + (0.25 * rank if dtype in FLOATS else rank)
    return values.to(dtype)


def expected_sum(n: int, dtype: torch.dtype, size: int) -> np.ndarray:
    return np.sum([rank_input(n, dtype, r).double().numpy() for r in range(size)], axis=0).reshape(n)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sum_and_average_equal_numpy(world, engine, dtype, algorithm):
    skip_unless_available(engine, algorithm)

    def body():
        # every collective first, the checks after: a rank failing a check part-way would
        # otherwise skip the next all-reduce and leave the other ranks waiting in it
        sums, means = {}, {}
        for n in SIZES:
            t = rank_input(n, dtype, world.rank)
            sums[n] = (t, engine.allreduce_(t, op="sum", algorithm=algorithm))
            if dtype in FLOATS:
                means[n] = rank_input(n, dtype, world.rank)
                engine.allreduce_async_(means[n], op="avg", algorithm=algorithm).wait()
        for n, (t, returned) in sums.items():
            assert returned is t
            np.testing.assert_array_equal(t.double().numpy(), expected_sum(n, dtype, world.size), err_msg=f"n={n}")
        for n, t in means.items():
            mean = expected_sum(n, dtype, world.size) / world.size
            np.testing.assert_allclose(t.double().numpy(), mean, rtol=WIRE_EPS.get(dtype, 1e-7) * 2)

    collective(world, body)


@pytest.mark.parametrize("algorithm, dtype", [("ring", torch.float32), ("shm", torch.int32)])
def test_ten_million_elements(world, engine, algorithm, dtype):
    n = 10_000_003
    pattern = torch.remainder(torch.arange(n, dtype=torch.int32), 251).to(dtype)  # cheap to build and check

    def body():
        t = pattern + world.rank
        engine.allreduce_(t, algorithm=algorithm)
        assert torch.equal(t, pattern * world.size + sum(range(world.size)))

    collective(world, body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("wire", WIRE_EPS, ids=str)
def test_wire_dtype_within_documented_tolerance(world, engine, wire, algorithm):
    """|result - exact mean| <= (size + 2) * eps(wire) * mean of |x_r|, elementwise (docs/allreduce.md)."""
    skip_unless_available(engine, algorithm)
    n = 10_001

    def inputs(r):
        return torch.randn(n, generator=torch.Generator().manual_seed(100 + r), dtype=torch.float64)

    def body():
        t = inputs(world.rank).float()
        engine.allreduce_async_(t, op="avg", wire_dtype=wire, algorithm=algorithm).wait()
        xs = np.stack([inputs(r).numpy() for r in range(world.size)])
        bound = (world.size + 2) * WIRE_EPS[wire] * np.abs(xs).mean(axis=0)
        assert t.dtype == torch.float32
        assert np.all(np.abs(t.double().numpy() - xs.mean(axis=0)) <= bound)

    collective(world, body)


@pytest.mark.parametrize("wire", (None, torch.bfloat16), ids=str)
def test_allreduce_many_fuses_and_unpacks_in_order(world, engine, wire):
    shapes = ((3, 4), (0,), (5,), (2, 1, 7))

    def body():
        ts = [rank_input(int(np.prod(s)), torch.float32, world.rank).reshape(s) for s in shapes]
        out = engine.allreduce_many_async_(ts, op="avg", wire_dtype=wire, name="bucket").wait()
        assert out == ts
        for t, s in zip(ts, shapes):
            n = int(np.prod(s))
            assert t.shape == s
            mean = expected_sum(n, torch.float32, world.size) / world.size
            np.testing.assert_allclose(t.double().numpy().reshape(n), mean, rtol=1e-6)

    collective(world, body)


def test_async_operations_complete_in_fifo_order(world, engine):
    def body():
        ts = [rank_input(1000 + k, torch.float64, world.rank) + k for k in range(12)]
        handles = [
            engine.allreduce_async_(t, name=f"op{k}", algorithm=list(ALGORITHMS)[k % 3]) for k, t in enumerate(ts)
        ]
        behind = engine.allreduce_(torch.ones(4, dtype=torch.float64), name="blocking")  # queued behind them
        assert all(h.done() for h in handles)
        np.testing.assert_array_equal(behind.numpy(), np.full(4, world.size))
        for h in reversed(handles):
            h.wait()
        assert all(h.done() for h in handles)
        assert [h.index for h in handles] == list(range(handles[0].index, handles[0].index + len(ts)))
        for k, t in enumerate(ts):
            np.testing.assert_array_equal(t.numpy(), expected_sum(1000 + k, torch.float64, world.size) + k * world.size)
        times = [h.timings() for h in handles]
        for a, b in zip(times, times[1:]):
            assert a["unpack_done"] <= b["start"]
        for t in times:
            assert t["enqueue"] <= t["start"] <= t["pack_done"] <= t["reduce_done"] <= t["unpack_done"]

    collective(world, body)


@pytest.mark.parametrize("dtype", (torch.float32, torch.int64, torch.bfloat16), ids=str)
def test_broadcast_copies_the_root(world, engine, dtype):
    root = world.size - 1

    def body():
        t = rank_input(1001, dtype, world.rank)
        assert engine.broadcast_(t, root=root) is t
        np.testing.assert_array_equal(t.double().numpy(), rank_input(1001, dtype, root).double().numpy())

    collective(world, body)


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("non-contiguous", ValueError, "not contiguous"),
        ("complex64", TypeError, "unsupported dtype complex64"),
        ("bool", TypeError, "unsupported dtype bool"),
        ("int average", TypeError, "cannot average int32"),
        ("int wire", TypeError, "wire casts are between floating-point dtypes"),
    ],
)
def test_bad_input_raises_on_every_rank(world, engine, case, error, words):
    def body():
        t = {
            "non-contiguous": torch.zeros(4, 6).t(),
            "complex64": torch.zeros(5, dtype=torch.complex64),
            "bool": torch.zeros(5, dtype=torch.bool),
        }.get(case, torch.zeros(5, dtype=torch.int32))
        op = "avg" if case == "int average" else "sum"
        wire = torch.float16 if case == "int wire" else None
        with pytest.raises(error, match=words):
            engine.allreduce_(t, op=op, wire_dtype=wire, name="bad")
        ok = torch.ones(3)  # the engine carries on
        np.testing.assert_array_equal(engine.allreduce_(ok).numpy(), np.full(3, world.size))

    collective(world, body)


@pytest.mark.parametrize("what", ("size", "dtype"))
def test_ranks_that_disagree_get_a_clear_error(world, engine, what):
    if world.size == 1:
        pytest.skip("needs two ranks to disagree")

    def body():
        last = world.rank == world.size - 1
        t = torch.zeros(
            10 + (1 if last and what == "size" else 0),
            dtype=torch.float64 if last and what == "dtype" else torch.float32,
        )
        with pytest.raises(ValueError, match=f"ranks disagree.*rank {world.size - 1}: "):
            engine.allreduce_(t, name="mismatch")
        np.testing.assert_array_equal(engine.allreduce_(torch.ones(3)).numpy(), np.full(3, world.size))

    collective(world, body)


def test_auto_measures_once_then_reads_the_cache(world, shared_tmp, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_ENV, str(shared_tmp))
    monkeypatch.delenv("TWINHPC_ALLREDUCE_ALGO", raising=False)

    def body():
        with Engine(world.comm, algorithm="auto") as first:
            table = first.table()
        assert table[-1][0] == ALL_SIZES and all(a in first.available_algorithms() for _, a in table)
        path = tuning.cache_path()
        if world.size > 1 and world.rank == 0:
            [entry] = tuning.load(path).values()
            assert [tuple(e) for e in entry["table"]] == table
        with Engine(world.comm, algorithm="auto") as second:
            assert second.table() == table

    collective(world, body)


def test_env_overrides_auto(world, monkeypatch):
    monkeypatch.setenv("TWINHPC_ALLREDUCE_ALGO", "ring")

    def body():
        with Engine(world.comm) as eng:
            assert eng.table() == [(ALL_SIZES, "ring")]
            np.testing.assert_array_equal(eng.allreduce_(torch.ones(5)).numpy(), np.full(5, world.size))

    collective(world, body)


# -- tensors in the engine's shared memory: summed where they are ------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shared_buffer_sums_in_place_equal_numpy(world, engine, dtype):
    """Views of Engine.shared_buffer at the same offset on every rank (the zero-copy path), at
    odd sizes and offsets, equal numpy's sum and mean; the rest of the buffer is untouched."""
    es = torch.empty(0, dtype=dtype).element_size()

    def body():
        buf = engine.shared_buffer(8 + 100_003 * es + 40)  # collective
        fresh = buf.dtype == torch.uint8 and buf.numel() == 8 + 100_003 * es + 40 and not buf.any()
        # every collective first (copies of what each left), the checks after: a rank failing a
        # check part-way would otherwise leave the others waiting in its next all-reduce
        sums, means = {}, {}
        for n in SIZES:
            view = buf[8 : 8 + n * es].view(dtype)
            view.copy_(rank_input(n, dtype, world.rank))
            buf[8 + n * es :].fill_(7)
            returned = engine.allreduce_(view, op="sum")
            outside = bool(buf[:8].eq(0).all() and buf[8 + n * es :].eq(7).all())
            sums[n] = (returned is view, view.clone(), outside)
            if dtype in FLOATS:
                view.copy_(rank_input(n, dtype, world.rank))
                engine.allreduce_async_(view, op="avg").wait()
                means[n] = view.clone()
        assert fresh
        for n, (same, total, outside) in sums.items():
            assert same
            np.testing.assert_array_equal(total.double().numpy(), expected_sum(n, dtype, world.size), err_msg=f"n={n}")
            assert outside, "bytes outside the view changed"
        for n, t in means.items():
            mean = expected_sum(n, dtype, world.size) / world.size
            np.testing.assert_allclose(t.double().numpy(), mean, rtol=WIRE_EPS.get(dtype, 1e-7) * 2)

    collective(world, body)


def test_shared_buffer_at_different_offsets_or_cast_still_sums(world, engine):
    """When the ranks' views are at different offsets (or one rank's tensor is not shared, or a
    wire cast is asked), the engine falls back to an ordinary in-place all-reduce: same result."""
    n = 1001

    def body():
        buf = engine.shared_buffer(8 * n + 64)
        offset = 4 * (world.rank % 2)  # differs between ranks 0 and 1
        view = buf[offset : offset + 4 * n].view(torch.float32)
        view.copy_(rank_input(n, torch.float32, world.rank))
        engine.allreduce_(view)
        np.testing.assert_array_equal(view.numpy(), expected_sum(n, torch.float32, world.size))
        t = rank_input(n, torch.float32, world.rank)
        mine = buf[: 4 * n].view(torch.float32) if world.rank == 0 else t  # shared on rank 0 only
        mine.copy_(t)
        engine.allreduce_(mine)
        np.testing.assert_array_equal(mine.numpy(), expected_sum(n, torch.float32, world.size))
        view = buf[: 4 * n].view(torch.float32)
        view.copy_(rank_input(n, torch.float32, world.rank))
        engine.allreduce_(view, op="avg", wire_dtype=torch.bfloat16)
        mean = expected_sum(n, torch.float32, world.size) / world.size
        np.testing.assert_allclose(view.numpy(), mean, rtol=2.0**-8 * (world.size + 2))

    collective(world, body)


def test_shared_buffer_ten_million_elements(world, engine):
    n = 10_000_003
    pattern = torch.remainder(torch.arange(n, dtype=torch.int32), 251)

    def body():
        view = engine.shared_buffer(4 * n).view(torch.int32)
        view.copy_(pattern + world.rank)
        engine.allreduce_(view)
        assert torch.equal(view, pattern * world.size + sum(range(world.size)))

    collective(world, body)


def test_a_leaked_engine_frees_nothing_collectively(world):
    """Ranks collect garbage at different moments: an engine collected unclosed warns and frees
    only what its process holds. Each rank in turn drops its engine while the others wait in a
    barrier elsewhere, where a collective free (of its shared memory or communicators) would
    wait for them forever. Its shared memory stays usable."""

    def body():
        eng = Engine(world.comm, stall_timeout=120, algorithm="mpi")
        kept = eng.shared_buffer(4 * 1000).view(torch.float32)
        kept.fill_(world.rank + 1)
        eng.allreduce_(kept)
        for turn in range(world.size):
            if turn == world.rank:
                with pytest.warns(ResourceWarning, match=f"unclosed <twinhpc.Engine rank {world.rank} of {world.size}"):
                    del eng
                    gc.collect()
            world.barrier()
        assert torch.all(kept == world.size * (world.size + 1) / 2)
        kept.add_(1)
        assert torch.all(kept == world.size * (world.size + 1) / 2 + 1)

    collective(world, body)


def test_shared_buffer_kept_past_close_stays_readable(world):
    """Engine.close() frees a shared region only when no rank still uses its tensor; a tensor
    (or view) kept past close() stays mapped, with its values, and writable."""

    def body():
        eng = Engine(world.comm, stall_timeout=120, algorithm="mpi")
        kept = eng.shared_buffer(4 * 1000).view(torch.float32)
        eng.shared_buffer(4 * 1000)  # dropped at once: freed at close
        kept.fill_(world.rank + 1)
        eng.allreduce_(kept)
        eng.close()
        assert torch.all(kept == world.size * (world.size + 1) / 2)
        kept.add_(1)
        assert torch.all(kept == world.size * (world.size + 1) / 2 + 1)

    collective(world, body)
