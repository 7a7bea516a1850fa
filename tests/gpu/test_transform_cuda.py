"""The image transform on a CUDA device gives the host's bits (skipped without a CUDA device, or
where numba.cuda itself cannot be imported: then the transform's host fallback is what runs, and
tests/unit covers it)."""

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
try:
    from numba import cuda  # noqa: F401
except Exception as e:  # noqa: BLE001 -- e.g. numba-cuda 0.x against numpy >= 2.4 (np.row_stack)
    pytest.skip(f"numba.cuda cannot be imported here ({type(e).__name__}: {e})", allow_module_level=True)

from twinhpc.preprocess.transform import Image  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("train", [False, True])
def test_image_transform_on_the_gpu_equals_the_host(train):
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    t = Image("image", (32, 32, 3), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], crop_padding=2, flip=True)
    host = t({"image": x}, train=train, rng=np.random.default_rng(7))
    gpu = t({"image": x}, train=train, rng=np.random.default_rng(7), device=torch.device("cuda"))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32 and gpu.shape == host.shape
    assert torch.equal(gpu.cpu(), host)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_torch_wrapper_on_a_side_stream_from_a_device_batch_equals_the_reference(layout):
    """normalize_augment_torch queues on torch's current stream (here not the default one) and
    takes a uint8 CUDA tensor as well as a host array; the bits are the numpy reference's."""
    from twinhpc.kernels.cuda_image import normalize_augment_torch
    from twinhpc.kernels.image import augment_params, batch_rng, normalize_augment_reference, synthetic_batch

    x = synthetic_batch(64, 32, 32, 3, seed=5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    offsets, flips = augment_params(batch_rng(0, 0, 1, 2), len(x), pad=4)
    want = normalize_augment_reference(x, mean, std, offsets=offsets, flips=flips, pad=4, layout=layout)
    on_device = torch.from_numpy(x).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        from_device = normalize_augment_torch(on_device, mean, std, offsets=offsets, flips=flips, pad=4, layout=layout)
        from_host = normalize_augment_torch(x, mean, std, offsets=offsets, flips=flips, pad=4, layout=layout)
    side.synchronize()
    for got in (from_device, from_host):
        assert got.is_cuda and got.dtype == torch.float32
        assert torch.equal(got.cpu(), torch.from_numpy(want))
