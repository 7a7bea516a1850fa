"""Where a rank's model runs: ``[train] device`` resolved to a ``torch.device``.

``cpu`` keeps everything on the host. ``cuda`` gives rank ``r`` of a node the GPU
``local rank % visible GPUs`` (the local rank from the launcher's environment: Open MPI, MPICH,
PMIx or Slurm), so one process per GPU is the layout to launch. ``auto`` is ``cuda`` when a GPU
is visible, else ``cpu``.

On a GPU the model, the batches and the gradients live on the device: the loader runs on the
host; image batches are normalised and augmented on the device (numba.cuda), other batches are
made on the host and copied to the device before the forward pass; the gradient all-reduce stages device buckets
through pinned host memory unless MPI is CUDA-aware (docs/allreduce.md).

Note:
    This path has not yet run on a GPU (no GPU machine was available where it was written); on
    CPU-only machines ``cuda`` is an error naming the key.
"""

from __future__ import annotations

import torch

from ..config import JobFileError
from ..env import process_info

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str, where: str = "train.device") -> torch.device:
    """The ``torch.device`` this rank uses for ``[train] device = name``; selects the GPU.

    Raises
    ------
    JobFileError
        For ``cuda`` when torch sees no CUDA device on this host (naming the key and the host).
    """
    if name not in DEVICES:
        raise JobFileError(where, f"is {name!r}; use one of {', '.join(map(repr, DEVICES))}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        info = process_info()
        raise JobFileError(
            where,
            f"is 'cuda', but torch {torch.__version__} sees no CUDA device on "
            f"host {info.host} (rank {info.rank}); use 'cpu' or 'auto'",
        )
    index = process_info().local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def to_device(t, device: torch.device):
    """``t`` (a tensor, sparse included, a dict of tensors, or ``None``) on ``device``; a no-op on
    its own device. A dense host tensor goes to a GPU through pinned memory (torch's caching host
    allocator), so that the copy is queued without waiting."""
    if isinstance(t, dict):
        return {k: to_device(v, device) for k, v in t.items()}
    if t is None or t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu" and t.layout == torch.strided:
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
