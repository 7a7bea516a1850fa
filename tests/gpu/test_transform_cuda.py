"""The image transform on a CUDA device gives the host's bits (skipped without a CUDA device)."""

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

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
