"""Tests that need a CUDA device (skipped without one)."""

import pytest


def skip_unless_cuda_extension() -> None:
    """Skip the calling test module (at import) unless a CUDA device is visible and twinhpc._C
    was built with CUDA; each reason says what is missing."""
    import torch

    from twinhpc import ops

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device", allow_module_level=True)
    if not ops.available():
        pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)
    if not ops.build_info()["cuda"]:
        pytest.skip("twinhpc._C was built without CUDA: rebuild with TWINHPC_CUDA=1", allow_module_level=True)
