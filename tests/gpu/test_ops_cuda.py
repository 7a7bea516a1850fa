"""Every op on CUDA tensors gives the CPU result, bit for bit (skipped without a CUDA device)."""

import pytest
import torch

from tests.gpu import skip_unless_cuda_extension
from twinhpc import ops

skip_unless_cuda_extension()

pytestmark = pytest.mark.gpu

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)
SIZES = (0, 1, 7, 1_000_003)
SHAPES = ((3, 4), (2, 1, 5), (0, 3))


def make(shape, dtype, seed=0) -> torch.Tensor:
    """Random CPU values of ``dtype``: normal * 100 for floats, integers in [-1000, 1000) otherwise."""
    g = torch.Generator().manual_seed(seed)
    if dtype in INTS:
        return torch.randint(-1000, 1000, shape, generator=g, dtype=dtype)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)


def tensors_of(n, dtype) -> list[torch.Tensor]:
    return [make((n,), dtype, seed=1)] + [make(s, dtype, seed=2 + i) for i, s in enumerate(SHAPES)]


def cuda(tensors):
    return [t.cuda() for t in tensors]


def assert_same_as_cpu(on_gpu: torch.Tensor, on_cpu: torch.Tensor) -> None:
    assert on_gpu.is_cuda and on_gpu.dtype == on_cpu.dtype
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=0)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wire", (None,) + FLOATS, ids=str)
@pytest.mark.parametrize("dtype", FLOATS + INTS, ids=str)
def test_pack(dtype, wire, n):
    if wire is not None and dtype in INTS:
        pytest.skip("wire casts are between floating-point dtypes")
    tensors = tensors_of(n, dtype)
    assert_same_as_cpu(ops.pack(cuda(tensors), wire), ops.pack(tensors, wire))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("out_dtype", FLOATS + INTS, ids=str)
@pytest.mark.parametrize("flat_dtype", FLOATS + INTS, ids=str)
def test_unpack(flat_dtype, out_dtype, n):
    if flat_dtype != out_dtype and (flat_dtype in INTS or out_dtype in INTS):
        pytest.skip("casts are between floating-point dtypes")
    scale = 1.0 if out_dtype in INTS else 1 / 3
    shapes = [t.shape for t in tensors_of(n, flat_dtype)]
    flat = make((sum(s.numel() for s in shapes),), flat_dtype, seed=9)
    cpu_outs = [torch.empty(s, dtype=out_dtype) for s in shapes]
    gpu_outs = [torch.empty(s, dtype=out_dtype, device="cuda") for s in shapes]
    ops.unpack(flat, cpu_outs, scale)
    ops.unpack(flat.cuda(), gpu_outs, scale)
    for g, c in zip(gpu_outs, cpu_outs):
        assert_same_as_cpu(g, c)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_scale(dtype, n):
    t = make((n,), dtype)
    on_gpu = t.cuda()
    ops.scale_(t, 1 / 3)
    ops.scale_(on_gpu, 1 / 3)
    assert_same_as_cpu(on_gpu, t)


def test_pack_rejects_mixed_devices():
    with pytest.raises(ValueError, match=r"tensors\[1\] is on cpu but tensors\[0\] is on cuda:0"):
        ops.pack([torch.ones(2, device="cuda"), torch.ones(2)])


def test_unpack_rejects_outs_on_another_device():
    with pytest.raises(ValueError, match=r"outs\[0\] is on cpu but flat is on cuda:0"):
        ops.unpack(torch.ones(2, device="cuda"), [torch.empty(2)])


def test_scale_rejects_ints_on_cuda():
    with pytest.raises(TypeError, match="cannot scale a tensor of dtype int32"):
        ops.scale_(torch.ones(2, dtype=torch.int32, device="cuda"), 2.0)
