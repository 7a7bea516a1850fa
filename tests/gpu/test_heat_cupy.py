"""The CuPy plate kernel on a CUDA device equals the numpy reference, and its ensemble reaches
torch through DLPack without leaving the device (skipped without a CUDA device or CuPy)."""

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
cupy = pytest.importorskip("cupy", reason="CuPy (the [gpu] extra) is not installed")

from tests.unit.test_kernels_heat import random_batch  # noqa: E402
from twinhpc.kernels.heat import heat_run_reference  # noqa: E402
from twinhpc.kernels.heat_cupy import heat_run_cupy, heat_run_torch  # noqa: E402

pytestmark = pytest.mark.gpu


def test_cupy_kernel_equals_the_numpy_reference():
    args = random_batch(b=4, h=17, w=13, s=3, saves=5, every=7)
    got = heat_run_cupy(*args)
    assert isinstance(got, cupy.ndarray) and got.dtype == np.float64 and got.shape == (4, 6, 17, 13)
    np.testing.assert_allclose(cupy.asnumpy(got), heat_run_reference(*args), rtol=1e-14, atol=0)


def test_the_ensemble_reaches_torch_on_the_device_without_a_copy():
    args = random_batch(b=3, h=9, w=7, s=2, saves=4, every=5)
    out = heat_run_cupy(*args)
    shared = torch.from_dlpack(out)
    assert shared.is_cuda and shared.data_ptr() == out.data.ptr  # the same device memory
    t = heat_run_torch(*args)
    assert t.is_cuda and t.dtype == torch.float32
    want = torch.from_numpy(heat_run_reference(*args).astype(np.float32))
    torch.testing.assert_close(t.cpu(), want, rtol=1e-6, atol=1e-4)


def test_a_large_ensemble_on_the_gpu_matches_the_numba_kernel():
    """512 scenarios of a 64×64 plate in one call (one thread per node)."""
    from twinhpc.kernels.heat import heat_run

    args = random_batch(b=512, h=64, w=64, s=3, saves=3, every=10, seed=3)
    np.testing.assert_allclose(cupy.asnumpy(heat_run_cupy(*args)), heat_run(*args, parallel=True), rtol=1e-13)


def test_simulate_on_the_gpu_writes_the_cpu_dataset(tmp_path):
    """``simulate.device = "cuda"`` runs the CuPy kernel: the dataset's fields are the Numba
    kernel's to float32 rounding (the float64 solutions agree to 1e-14)."""
    from pathlib import Path

    import h5py

    from twinhpc.config import load_job
    from twinhpc.data.format import Manifest
    from twinhpc.sim.ensemble import simulate

    job = Path(__file__).resolve().parents[2] / "jobs" / "plate.toml"
    sets = ["simulate.scenarios=6", "simulate.grid=[12, 10]", "simulate.steps=4", "simulate.shards=1"]
    for device in ("cpu", "cuda"):
        simulate(load_job(job, [*sets, f"simulate.device='{device}'"]), tmp_path / device)
    shards = [sh.file for split in Manifest.load(tmp_path / "cpu").splits for sh in split.shards]
    assert shards
    for file in shards:
        with h5py.File(tmp_path / "cpu" / file) as cpu, h5py.File(tmp_path / "cuda" / file) as gpu:
            for name in ("params", "field", "forcing", "sensors"):
                np.testing.assert_allclose(gpu[name][()], cpu[name][()], rtol=2e-7, atol=0, err_msg=f"{file}/{name}")
