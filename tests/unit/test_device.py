"""``[train] device``: resolving it, and moving batches (CPU-only machines: cuda is an error)."""

import pytest
import torch

from twinhpc.config import JobFileError
from twinhpc.train.device import resolve_device, to_device


def test_cpu_and_auto_without_a_gpu_are_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_names_the_key_and_host():
    with pytest.raises(JobFileError, match=r"train\.device.*'cuda'.*no CUDA device on host"):
        resolve_device("cuda")


def test_unknown_device_names_the_key():
    with pytest.raises(JobFileError, match=r"train\.device.*'tpu'"):
        resolve_device("tpu")


def test_to_device_keeps_none_dense_and_sparse_tensors():
    cpu = torch.device("cpu")
    assert to_device(None, cpu) is None
    t = torch.ones(3)
    assert to_device(t, cpu) is t
    s = torch.eye(3).to_sparse_csr()
    assert to_device(s, cpu) is s


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_selects_the_local_rank_gpu(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    device = resolve_device("cuda")
    assert device.type == "cuda" and device.index == 1 % torch.cuda.device_count()
    assert to_device(torch.ones(2), device).device == device
