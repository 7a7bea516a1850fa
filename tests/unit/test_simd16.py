"""The float32 <-> float16/bfloat16 conversions (csrc/simd16.cpp) against their numpy references,
on both paths: AVX2/F16C vectors (where the CPU has them) and the scalar c10 conversions.

They run inside ``ops.pack`` / ``ops.unpack`` / ``ops.scale_`` (the wire casts) and the engine's
16-bit sums (``reduce_into``, ``reduce_many``); each is checked here on every float32 bit
pattern class (random 32-bit patterns: normals, subnormals, infinities, NaNs), on every 16-bit
pattern, and at lengths around the 8-element vectors and the 2048-element blocks.
"""

import numpy as np
import pytest
import torch

from twinhpc import ops

if not ops.available():
    pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)

HALVES = (torch.float16, torch.bfloat16)
#: empty, below/at/above one vector of 8, around one block of 2048, many blocks with a tail
LENGTHS = (0, 1, 7, 8, 9, 2047, 2048, 2049, 100_003)


@pytest.fixture(params=["vector", "scalar"])
def path(request):
    core = ops._load()
    if request.param == "vector" and not core.simd16_available():
        pytest.skip("this CPU lacks AVX2 or F16C: only the scalar path exists")
    before = core.set_simd16(request.param == "vector")
    yield request.param
    core.set_simd16(before)


def float32_patterns(n: int, seed: int = 0) -> np.ndarray:
    """n float32 values from random bit patterns (every class), plus the edge cases up front."""
    edges = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1 + 2**-8,
            1 + 3 * 2**-8,
            1 + 2**-11,
            1 + 3 * 2**-11,
            65504.0,
            65519.0,
            65520.0,
            2.0**-24,
            2.0**-25,
            3 * 2.0**-26,
            1e-45,
            3.3895e38,
            3.4028235e38,
            np.inf,
            -np.inf,
            np.nan,
        ],
        dtype=np.float32,
    )
    bits = np.random.default_rng(seed).integers(0, 2**32, max(n - len(edges), 0), dtype=np.uint64)
    return np.concatenate([edges, bits.astype(np.uint32).view(np.float32)])[:n]


def half_bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().view(np.uint16)


def reference_narrow(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The 16-bit patterns of round-to-nearest-even (numpy's float16; ops' bfloat16 reference)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == torch.float16:
            return x.astype(np.float16).view(np.uint16)
        return (ops._round_bfloat16(x).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def widen_bits(bits: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The float32 values of 16-bit patterns (numpy's float16; bfloat16 = the high half)."""
    if dtype == torch.float16:
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def assert_same_bits_or_both_nan(got: np.ndarray, want: np.ndarray, dtype: torch.dtype, source: np.ndarray) -> None:
    """Equal 16-bit patterns, except that a NaN of ``source`` need only stay a NaN (payloads may
    differ, and the bfloat16 reference, which only adds the rounding bias, is not meant for
    NaNs: it can carry one into infinity)."""
    nan = np.isnan(source)
    assert np.array_equal(np.isnan(widen_bits(got, dtype)), nan)
    assert np.array_equal(got[~nan], want[~nan])


def test_availability_matches_the_cpu_flags():
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert ops._load().simd16_available() == ({"avx2", "f16c"} <= set(flags))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_narrow_rounds_to_nearest_even_like_the_reference(path, dtype, n):
    x = float32_patterns(n)
    got = half_bits(ops.pack([torch.from_numpy(x)], dtype=dtype))
    assert_same_bits_or_both_nan(got, reference_narrow(x, dtype), dtype, source=x)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_widen_is_exact_for_every_16_bit_pattern(path, dtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    flat = torch.from_numpy(bits.view(np.int16)).view(dtype)
    out = torch.empty(1 << 16, dtype=torch.float32)
    ops.unpack(flat, [out])
    want = widen_bits(bits, dtype)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out.numpy()), nan)
    assert np.array_equal(out.numpy()[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_unpack_with_scale_multiplies_in_float32(path, dtype, n):
    bits = np.random.default_rng(1).integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    bits = bits[~np.isnan(widen_bits(bits, dtype))]
    out = torch.empty(len(bits), dtype=torch.float32)
    ops.unpack(torch.from_numpy(bits.view(np.int16)).view(dtype), [out], scale=1 / 3)
    with np.errstate(over="ignore", invalid="ignore"):
        want = widen_bits(bits, dtype) * np.float32(1 / 3)
    assert np.array_equal(out.numpy().view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_scale_in_place_rounds_the_float32_product_once(path, dtype, n):
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32) * 1000
    t = torch.from_numpy(x).to(dtype)
    start = half_bits(t.clone())
    ops.scale_(t, 0.3)
    product = widen_bits(start, dtype) * np.float32(0.3)
    assert_same_bits_or_both_nan(half_bits(t), reference_narrow(product, dtype), dtype, source=product)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_16_bit_sums_widen_add_in_float32_and_round_once(path, dtype, n):
    rng = np.random.default_rng(3)
    srcs = [torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 100).to(dtype) for _ in range(3)]
    wide = [widen_bits(half_bits(s), dtype) for s in srcs]
    dst = torch.empty_like(srcs[0])
    ops._load().reduce_many(dst, srcs)
    assert np.array_equal(half_bits(dst), reference_narrow(wide[0] + wide[1] + wide[2], dtype))
    a = srcs[0].clone()
    ops._load().reduce_into(a, srcs[1])
    assert np.array_equal(half_bits(a), reference_narrow(wide[0] + wide[1], dtype))
