"""twinhpc.ops against its numpy references: every op, dtype and size class, and each bad input."""

import pytest
import torch

from twinhpc import ops

if not ops.available():
    pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)
#: empty, one element, odd, and ~1e6 (many parallel chunks)
SIZES = (0, 1, 7, 1_000_003)
#: the other tensors packed beside the one of a SIZES size: different shapes, one of them empty
SHAPES = ((3, 4), (2, 1, 5), (0, 3))


def make(shape, dtype, seed=0) -> torch.Tensor:
    """Random values of ``dtype``: normal * 100 for floats, integers in [-1000, 1000) otherwise."""
    g = torch.Generator().manual_seed(seed)
    if dtype in INTS:
        return torch.randint(-1000, 1000, shape, generator=g, dtype=dtype)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)


def tensors_of(n, dtype) -> list[torch.Tensor]:
    return [make((n,), dtype, seed=1)] + [make(s, dtype, seed=2 + i) for i, s in enumerate(SHAPES)]


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype, shape and bits (the ops and references do the same arithmetic)."""
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# -- pack --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", ops.SUPPORTED_DTYPES, ids=str)
def test_pack_concatenates(dtype, n):
    tensors = tensors_of(n, dtype)
    flat = ops.pack(tensors)
    assert flat.dim() == 1 and flat.is_contiguous()
    assert_same(flat, ops.pack_reference(tensors))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wire", FLOATS, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_pack_casts_to_wire_dtype(dtype, wire, n):
    tensors = tensors_of(n, dtype)
    assert_same(ops.pack(tensors, wire), ops.pack_reference(tensors, wire))


def test_pack_reads_non_contiguous_tensors():
    tensors = [make((4, 6), torch.float32).t(), make((5, 8), torch.float32)[:, ::3]]
    assert not any(t.is_contiguous() for t in tensors)
    assert_same(ops.pack(tensors), torch.cat([t.reshape(-1) for t in tensors]))


def test_pack_leaves_inputs_alone():
    tensors = tensors_of(7, torch.float32)
    before = [t.clone() for t in tensors]
    ops.pack(tensors, torch.float16)
    for t, b in zip(tensors, before):
        assert_same(t, b)


# -- unpack ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", ops.SUPPORTED_DTYPES, ids=str)
def test_unpack_copies_slices_back(dtype, n):
    outs = [torch.empty_like(t) for t in tensors_of(n, dtype)]
    flat = make((sum(o.numel() for o in outs),), dtype, seed=9)
    expected = ops.unpack_reference(flat, outs)
    ops.unpack(flat, outs)
    for out, exp in zip(outs, expected):
        assert_same(out, exp)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("flat_dtype", FLOATS, ids=str)
def test_unpack_casts_and_scales(flat_dtype, out_dtype, n):
    outs = [torch.empty(t.shape, dtype=out_dtype) for t in tensors_of(n, flat_dtype)]
    flat = make((sum(o.numel() for o in outs),), flat_dtype, seed=9)
    expected = ops.unpack_reference(flat, outs, scale=1 / 3)
    ops.unpack(flat, outs, scale=1 / 3)
    for out, exp in zip(outs, expected):
        assert_same(out, exp)


@pytest.mark.parametrize("wire, rtol", [(torch.float16, 2**-11), (torch.bfloat16, 2**-8)], ids=str)
def test_wire_round_trip_stays_within_wire_precision(wire, rtol):
    grads = tensors_of(1_000_003, torch.float32)
    outs = [torch.empty_like(g) for g in grads]
    ops.unpack(ops.pack(grads, wire), outs)
    for out, g in zip(outs, grads):
        torch.testing.assert_close(out, g, rtol=rtol, atol=0)


def test_pack_then_unpack_with_scale_averages():
    world_size = 3
    grads = tensors_of(1000, torch.float32)
    flat = ops.pack(grads)
    summed = flat * world_size  # what an all-reduce of identical buffers would give
    outs = [torch.empty_like(g) for g in grads]
    ops.unpack(summed, outs, scale=1 / world_size)
    for out, g in zip(outs, grads):
        torch.testing.assert_close(out, g)


# -- scale_ ------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", (0.25, 1 / 3, -2.0))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_scale_in_place(dtype, n, factor):
    t = make((n,), dtype)
    expected = ops.scale_reference(t, factor)
    assert ops.scale_(t, factor) is t
    assert_same(t, expected)


def test_scale_keeps_shape():
    t = make((3, 5), torch.float32)
    expected = ops.scale_reference(t, 0.5)
    ops.scale_(t, 0.5)
    assert_same(t, expected)


# -- torch.library registration ----------------------------------------------------------------
def test_ops_pass_opcheck():
    tensors = tensors_of(7, torch.float32)
    torch.library.opcheck(torch.ops.twinhpc.pack.default, (tensors, torch.bfloat16))
    flat = make((sum(t.numel() for t in tensors),), torch.float16)
    torch.library.opcheck(torch.ops.twinhpc.unpack.default, (flat, [torch.empty_like(t) for t in tensors], 0.5))
    torch.library.opcheck(torch.ops.twinhpc.scale_.default, (make((9,), torch.float64), 0.5))


# -- bad input ---------------------------------------------------------------------------------
def test_pack_rejects_no_tensors():
    with pytest.raises(ValueError, match="no tensors given"):
        ops.pack([])


def test_pack_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match=r"tensors\[2\] has dtype float64 but tensors\[0\] has float32"):
        ops.pack([torch.ones(2), torch.ones(3), torch.ones(2, dtype=torch.float64)])


def test_pack_rejects_unsupported_dtype():
    with pytest.raises(TypeError, match=r"tensors\[0\] has unsupported dtype uint8"):
        ops.pack([torch.ones(2, dtype=torch.uint8)])


@pytest.mark.parametrize("dtype, wire", [(torch.int32, torch.float16), (torch.float32, torch.int64)], ids=str)
def test_pack_rejects_int_float_casts(dtype, wire):
    with pytest.raises(TypeError, match="wire casts are between floating-point dtypes only"):
        ops.pack([torch.ones(2, dtype=dtype)], wire)


def test_unpack_rejects_too_many_elements_naming_the_index():
    outs = [torch.empty(3), torch.empty(4), torch.empty(1)]
    with pytest.raises(ValueError, match=r"outs\[0..1\] hold 7 elements but flat has only 5"):
        ops.unpack(torch.ones(5), outs)


def test_unpack_rejects_too_few_elements():
    with pytest.raises(ValueError, match="outs hold 3 elements in total but flat has 5"):
        ops.unpack(torch.ones(5), [torch.empty(3)])


def test_unpack_rejects_non_contiguous_out_and_writes_nothing():
    first = torch.zeros(4)
    bad = torch.zeros(3, 2).t()
    with pytest.raises(ValueError, match=r"outs\[1\] is not contiguous"):
        ops.unpack(torch.ones(10), [first, bad])
    assert not first.any()


def test_unpack_rejects_scaling_ints():
    with pytest.raises(TypeError, match=r"cannot scale outs\[0\] of integer dtype int64 by 0.5"):
        ops.unpack(
            torch.ones(5, dtype=torch.int64),
            [torch.empty(2, dtype=torch.int64), torch.empty(3, dtype=torch.int64)],
            scale=0.5,
        )


def test_unpack_rejects_int_float_casts():
    with pytest.raises(TypeError, match=r"cannot cast flat of dtype int32 into outs\[0\] of dtype float32"):
        ops.unpack(torch.ones(2, dtype=torch.int32), [torch.empty(2)])


def test_unpack_rejects_2d_flat():
    with pytest.raises(ValueError, match="flat must be 1-D"):
        ops.unpack(torch.ones(2, 2), [torch.empty(4)])


@pytest.mark.parametrize("dtype", INTS, ids=str)
def test_scale_rejects_ints(dtype):
    with pytest.raises(TypeError, match=f"cannot scale a tensor of dtype {str(dtype)[6:]}"):
        ops.scale_(torch.ones(3, dtype=dtype), 2.0)


def test_scale_rejects_non_contiguous():
    with pytest.raises(ValueError, match="must be contiguous"):
        ops.scale_(torch.ones(3, 2).t(), 2.0)
