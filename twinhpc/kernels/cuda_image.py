"""The fused image kernel of :mod:`.image` for NVIDIA GPUs, with numba.cuda.

:func:`normalize_augment_cuda` does what :func:`.image.normalize_augment` does — normalise, random
crop with zero padding, horizontal flip, NHWC → NCHW — with one GPU thread per output pixel, and
gives the same bits (the same float32 table lookup). The batch may be a host numpy array (copied
to the device) or a device array (numba device array, or anything with
``__cuda_array_interface__``, e.g. a torch CUDA tensor); the result is a numba device array that
torch takes without a copy: ``torch.as_tensor(result, device="cuda")``. The random offsets and
flips still come from :func:`.image.augment_params` on the host (a few bytes per image).

In a torch training loop use :func:`normalize_augment_torch`: the same kernel with every buffer
from torch's caching allocator, the batch copied through pinned memory, and the launch queued on
torch's current stream, so that nothing waits for the device and nothing is allocated by numba
(whose allocations and deferred frees would each wait for the GPU).

Without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` (set before numba.cuda is first imported) runs the kernel
on numba's CPU simulator: slow, but the same code path, which is how the tests run it.
Importing this module does not need a GPU; calling the function without one raises numba's
``CudaSupportError``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .image import _check_images, _check_params

#: threads per block
THREADS = 256


@cuda.jit
def _augment_kernel(x, table, offsets, flips, pad, nchw, out):
    idx = cuda.grid(1)
    n, h, w, c = x.shape
    if idx >= n * h * w:
        return
    b = idx // (h * w)
    i = (idx // w) % h
    j = idx % w
    sy = i + offsets[b, 0] - pad
    sx = (w - 1 - j if flips[b] else j) + offsets[b, 1] - pad
    inside = 0 <= sy < h and 0 <= sx < w
    for ch in range(c):
        v = table[ch, x[b, sy, sx, ch]] if inside else table[ch, 0]
        if nchw:
            out[b, ch, i, j] = v
        else:
            out[b, i, j, ch] = v


def normalize_augment_cuda(
    x, mean, std, *, offsets=None, flips=None, pad: int = 0, layout: str = "NCHW", out=None, stream=0
):
    """:func:`.image.normalize_augment` on the GPU; returns the float32 device array.

    Parameters
    ----------
    x : uint8 (n, H, W, C), host numpy array or CUDA device array
    mean, std, offsets, flips, pad, layout
        As :func:`.image.normalize_augment` (``offsets``/``flips`` host arrays).
    out : float32 device array of the result's shape, optional
    stream : numba CUDA stream, or 0 for the default stream
        The copies and the kernel are queued on it; synchronise before reading on the host.

    Raises
    ------
    ValueError
        A bad shape, dtype or value of an argument (the message names it).
    """
    _check_images(x)
    table, offsets, flips = _check_params(tuple(x.shape), mean, std, offsets, flips, pad, layout)
    n, h, w, c = x.shape
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    if out is None:
        out = cuda.device_array(shape, np.float32, stream=stream)
    elif tuple(out.shape) != shape or np.dtype(out.dtype) != np.float32:
        raise ValueError(f"out: expected a float32 device array of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    if isinstance(x, np.ndarray):  # device arrays go to the kernel as they are
        x = cuda.to_device(np.ascontiguousarray(x), stream=stream)
    args = [cuda.to_device(a, stream=stream) for a in (table, offsets, flips)]
    _launch(x, *args, pad, layout, out, stream)
    return out


def _launch(x, table, offsets, flips, pad, layout, out, stream) -> None:
    """Queue the kernel: one thread per output pixel of the (n, H, W, C) batch ``x``."""
    n, h, w, _ = x.shape
    if n * h * w:
        blocks = (n * h * w + THREADS - 1) // THREADS
        _augment_kernel[blocks, THREADS, stream](x, table, offsets, flips, int(pad), layout == "NCHW", out)


def normalize_augment_torch(
    x, mean, std, *, offsets=None, flips=None, pad: int = 0, layout: str = "NCHW", device="cuda"
):
    """:func:`normalize_augment_cuda` for torch: returns a float32 CUDA tensor on ``device``.

    ``x`` is a host numpy uint8 batch (n, H, W, C) or a uint8 CUDA tensor of that shape on
    ``device``. The output and the copies of the batch, the normalisation table, the offsets and
    the flips come from torch's caching allocators (host arrays go through pinned memory with
    asynchronous copies), and the kernel runs on torch's current stream of ``device``: the call
    returns without waiting for the GPU, and torch orders the result with the kernels that use
    it. Raises ``ValueError`` as :func:`normalize_augment_cuda` does.
    """
    import torch

    _check_images(x)
    table, offsets, flips = _check_params(tuple(x.shape), mean, std, offsets, flips, pad, layout)
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device: expected a CUDA device, got {device}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n, h, w, c = x.shape
    out = torch.empty((n, c, h, w) if layout == "NCHW" else (n, h, w, c), dtype=torch.float32, device=device)
    if n * h * w == 0:
        return out

    def to_gpu(a: np.ndarray):  # pinned staging, so that the copy is asynchronous
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # the cached normalisation table: torch wants writable memory
            a = a.copy()
        return torch.from_numpy(a).pin_memory().to(device, non_blocking=True)

    if isinstance(x, torch.Tensor):
        if x.device != device:
            raise ValueError(f"x: expected a host array or a tensor on {device}, got a tensor on {x.device}")
        xt = x.contiguous()
    else:
        xt = to_gpu(np.asarray(x))
    tensors = (xt, to_gpu(table), to_gpu(offsets), to_gpu(flips))
    with cuda.gpus[device.index]:  # numba launches on the device torch uses for this rank
        handle = torch.cuda.current_stream(device).cuda_stream
        stream = cuda.external_stream(handle) if handle else cuda.default_stream()
        xd, td, od, fd = (cuda.as_cuda_array(t) for t in tensors)
        _launch(xd, td, od, fd, pad, layout, cuda.as_cuda_array(out), stream)
    return out
