"""The engine's parts on one process: reduction kernels against numpy, the tuning cache, and
the engine over MPI.COMM_SELF (a world of one)."""

import gc
import json
import warnings

import numpy as np
import pytest
import torch

from twinhpc import ops

if not ops.available():
    pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)

from mpi4py import MPI  # noqa: E402

from twinhpc.comm import tuning  # noqa: E402
from twinhpc.comm.engine import Engine  # noqa: E402
from twinhpc.comm.tuning import ALL_SIZES  # noqa: E402

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPES = FLOATS + (torch.int32, torch.int64)
N = 5003  # odd, more than one block of reduce_many


def make(dtype, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype in FLOATS:
        return (torch.randn(N, generator=g, dtype=torch.float64) * 100).to(dtype)
    return torch.randint(-(10**6), 10**6, (N,), generator=g, dtype=dtype)


def rounded(x: np.ndarray, dtype) -> torch.Tensor:
    """float32 (or wider) values rounded once to ``dtype``, as the kernels round."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(ops._round_bfloat16(x.astype(np.float32))).to(torch.bfloat16)
    if dtype == torch.float16:
        return torch.from_numpy(x.astype(np.float32).astype(np.float16))
    return torch.from_numpy(x).to(dtype)


def wide(t: torch.Tensor) -> np.ndarray:
    """The values as numpy in the kernels' accumulator type (float32 for 16-bit floats)."""
    return ops._to_numpy(t).astype(np.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reduce_into_adds_in_the_accumulator_type(dtype):
    a, b = make(dtype, 1), make(dtype, 2)
    expected = rounded(wide(a) + wide(b), dtype)
    ops._load().reduce_into(a, b)
    torch.testing.assert_close(a, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reduce_many_rounds_16_bit_floats_once(dtype):
    srcs = [make(dtype, s) for s in range(5)]
    acc = wide(srcs[0]).copy()
    for s in srcs[1:]:
        acc += wide(s)
    dst = torch.empty_like(srcs[0])
    ops._load().reduce_many(dst, srcs)
    torch.testing.assert_close(dst, rounded(acc, dtype), rtol=0, atol=0)


def test_widening_keeps_small_addends_that_16_bit_sums_lose():
    big = torch.full((3,), 2048.0, dtype=torch.float16)  # fp16 spacing at 2048 is 2
    ones = torch.ones(3, dtype=torch.float16)
    dst = torch.empty_like(big)
    ops._load().reduce_many(dst, [big, ones, ones])
    assert torch.equal(dst, torch.full((3,), 2050.0, dtype=torch.float16))


# -- the tuning cache -------------------------------------------------------------------------
def test_cache_path_follows_the_environment(tmp_path):
    assert tuning.cache_path({tuning.CACHE_ENV: str(tmp_path)}) == tmp_path / tuning.CACHE_FILE
    assert tuning.cache_path({}).parts[-3:] == (".cache", "twinhpc", tuning.CACHE_FILE)


def test_store_then_load_round_trips_and_keeps_other_keys(tmp_path):
    path = tmp_path / "sub" / tuning.CACHE_FILE
    assert tuning.load(path) == {}
    tuning.store(path, "a", {"table": [[10, "ring"]]})
    tuning.store(path, "b", {"table": [[20, "mpi"]]})
    assert tuning.load(path) == {"a": {"table": [[10, "ring"]]}, "b": {"table": [[20, "mpi"]]}}
    assert [p.name for p in path.parent.iterdir()] == [tuning.CACHE_FILE]  # no temporary left


def test_a_corrupt_cache_is_ignored(tmp_path):
    path = tmp_path / tuning.CACHE_FILE
    path.write_text("{not json")
    assert tuning.load(path) == {}
    tuning.store(path, "k", {"table": []})
    assert json.loads(path.read_text()) == {"k": {"table": []}}


def test_table_takes_the_fastest_per_size_and_merges_neighbours():
    times = {4096: {"mpi": 1.0, "ring": 2.0}, 65536: {"mpi": 1.0, "ring": 3.0}, 1 << 20: {"mpi": 2.0, "ring": 1.0}}
    assert tuning.table_from_times(times) == [(int((65536 * (1 << 20)) ** 0.5), "mpi"), (ALL_SIZES, "ring")]


def test_tuning_key_names_what_changes_the_answer():
    key = tuning.tuning_key("Open MPI v4.1.4", "AMD EPYC", 3, 1, 1 << 20)
    for part in ("Open MPI v4.1.4", "AMD EPYC", "ranks=3", "nodes=1", f"segment={1 << 20}", f"v{tuning.FORMAT}"):
        assert part in key


# -- the engine on one process ----------------------------------------------------------------
def test_engine_of_one_rank_leaves_sums_and_averages_unchanged():
    with Engine(MPI.COMM_SELF) as eng:
        assert (eng.rank, eng.size) == (0, 1)
        assert eng.table() == [(ALL_SIZES, "mpi")]
        t = torch.arange(7, dtype=torch.float32)
        assert torch.equal(eng.allreduce_(t, op="avg"), torch.arange(7, dtype=torch.float32))
        h = eng.allreduce_async_(torch.ones(3), wire_dtype=torch.bfloat16, name="b0")
        assert torch.equal(h.wait(), torch.ones(3)) and h.done() and h.name == "b0"
        times = h.timings()
        assert list(times) == ["enqueue", "start", "pack_done", "reduce_done", "unpack_done"]
        assert 0 < times["enqueue"] <= times["start"] <= times["pack_done"] <= times["unpack_done"]


def test_one_rank_returns_the_input_itself_without_a_wire_cast():
    """A world of one exchanges nothing: no cast to the wire dtype (no rounding), no copies, for
    single tensors, fused lists and broadcasts alike; argument errors are still raised."""
    x = torch.randn(10_001, generator=torch.Generator().manual_seed(5)) * 1000  # not bfloat16-exact
    with Engine(MPI.COMM_SELF) as eng:
        for wire in (None, torch.bfloat16, torch.float16):
            t = x.clone()
            eng.allreduce_async_(t, op="avg", wire_dtype=wire).wait()
            assert torch.equal(t, x), wire
        parts = [x[:7].clone(), x[7:].clone()]
        eng.allreduce_many_async_(parts, op="avg", wire_dtype=torch.bfloat16).wait()
        assert torch.equal(torch.cat(parts), x)
        assert torch.equal(eng.broadcast_(x.clone(), root=0), x)
        with pytest.raises(TypeError, match="unsupported dtype"):
            eng.allreduce_(torch.ones(2, dtype=torch.uint8))


def test_engine_rejects_bad_communicators_and_names():
    with pytest.raises(ValueError, match="COMM_NULL"):
        Engine(MPI.COMM_NULL)
    with pytest.raises(TypeError, match="mpi4py communicator"):
        Engine("world")
    with pytest.raises(ValueError, match="unknown algorithm 'fastest'"):
        Engine(MPI.COMM_SELF, algorithm="fastest")
    with Engine(MPI.COMM_SELF) as eng:
        with pytest.raises(ValueError, match="op must be one of"):
            eng.allreduce_(torch.ones(2), op="max")
        with pytest.raises(TypeError, match="expected a torch.Tensor"):
            eng.allreduce_(np.ones(2))


def test_cuda_aware_switch_is_checked_and_can_only_turn_device_pointers_off(monkeypatch):
    """``$TWINHPC_MPI_CUDA_AWARE``: 0 forces staging through host memory; anything but 0/1 is
    an error naming the variable (the GPU check runs tests/gpu/test_mpi_cuda.py both ways)."""
    monkeypatch.setenv("TWINHPC_MPI_CUDA_AWARE", "yes")
    with pytest.raises(ValueError, match=r"\$TWINHPC_MPI_CUDA_AWARE must be 0 or 1, not 'yes'"):
        Engine(MPI.COMM_SELF)
    monkeypatch.setenv("TWINHPC_MPI_CUDA_AWARE", "0")
    with Engine(MPI.COMM_SELF) as eng:
        assert eng.cuda_aware is False
    monkeypatch.delenv("TWINHPC_MPI_CUDA_AWARE")
    with Engine(MPI.COMM_SELF) as eng:  # whatever this MPI reports; a bool either way
        assert isinstance(eng.cuda_aware, bool)


def test_closed_engine_refuses_work_and_closes_twice():
    eng = Engine(MPI.COMM_SELF)
    eng.close()
    eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        eng.allreduce_(torch.ones(2))


class CoreSpy:
    """The compiled engine, recording which of close() and abandon() is called."""

    def __init__(self, core, calls: list):
        self._core, self._calls = core, calls

    def __getattr__(self, name):
        if name in ("close", "abandon"):
            self._calls.append(name)
        return getattr(self._core, name)


def test_a_leaked_engine_warns_and_frees_nothing_collectively():
    """Ranks collect garbage in different orders, so an engine collected unclosed must not
    free its communicators and shared memory (collective): it warns, naming itself, and
    releases only this process's part (abandon), never close()."""
    calls = []
    eng = Engine(MPI.COMM_SELF, algorithm="mpi")
    eng._core = CoreSpy(eng._core, calls)
    with pytest.warns(ResourceWarning, match=r"unclosed <twinhpc.Engine rank 0 of 1, algorithm 'mpi', open>"):
        del eng
        gc.collect()
    assert calls == ["abandon"]


def test_a_closed_engine_is_collected_silently():
    calls = []
    with Engine(MPI.COMM_SELF, algorithm="mpi") as eng:
        eng._core = CoreSpy(eng._core, calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del eng
        gc.collect()
    assert calls == ["close"]


def test_abandoning_fails_what_is_still_queued_and_refuses_new_work():
    """abandon() (garbage collection of an unclosed engine) runs nothing more: each queued
    operation either ran before it or fails without running; none is left waiting."""
    eng = Engine(MPI.COMM_SELF, algorithm="mpi")
    handles = [eng.allreduce_async_(torch.ones(100), name=f"op{k}") for k in range(200)]
    eng._core.abandon()
    for h in handles:
        try:
            assert torch.equal(h.wait(), torch.ones(100))
        except RuntimeError as e:
            assert f"'{h.name}' (#{h.index}): not run: the engine was destroyed without close()" in str(e)
    with pytest.raises(RuntimeError, match="closed"):
        eng.allreduce_(torch.ones(2))
    eng.close()  # nothing left to do
