"""twinhpc.kernels.cuda_image on numba's CUDA simulator, in a subprocess (the variable
NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported), against the numpy reference."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """
import json, numpy as np
from twinhpc.kernels import image
from twinhpc.kernels.cuda_image import normalize_augment_cuda
from numba import cuda
x = image.synthetic_batch(3, 6, 5, 3, seed=2)
mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
results = {}
for pad in (0, 2, 7):
    offsets, flips = image.augment_params(image.batch_rng(0, 1, 2, 3), 3, pad=pad)
    flips[0], flips[1] = True, False
    for layout in image.LAYOUTS:
        got = normalize_augment_cuda(cuda.to_device(x) if pad == 2 else x, mean, std, offsets=offsets,
                                     flips=flips, pad=pad, layout=layout).copy_to_host()
        want = image.normalize_augment_reference(x, mean, std, offsets=offsets, flips=flips, pad=pad,
                                                 layout=layout)
        results[f"{pad}-{layout}"] = bool(got.shape == want.shape and np.array_equal(got, want))
try:
    normalize_augment_cuda(x, mean, std[:2])
except ValueError as e:
    results["error"] = str(e).split(":")[0]
print(json.dumps(results))
"""


def test_cuda_kernel_on_the_simulator_equals_reference():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("error") == "std"
    assert results and all(results.values()), results


def test_torch_wrapper_checks_its_arguments_before_touching_a_gpu():
    import numpy as np
    import pytest

    from twinhpc.kernels.cuda_image import normalize_augment_torch

    x = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="device"):
        normalize_augment_torch(x, (0.5,) * 3, (0.2,) * 3, device="cpu")
    with pytest.raises(ValueError, match="std"):
        normalize_augment_torch(x, (0.5,) * 3, (0.2,) * 2, device="cuda")
    with pytest.raises(ValueError, match="x: expected a uint8"):
        normalize_augment_torch(x.astype(np.float32), (0.5,) * 3, (0.2,) * 3, device="cuda")
