"""The plate kernel of :mod:`.heat` for NVIDIA GPUs, with CuPy (the optional ``[gpu]`` extra).

:func:`heat_run_cupy` does what :func:`.heat.heat_run` does for a whole ensemble on the device:
one CUDA thread per node of every scenario, one launch per explicit step (a ``cupy.RawKernel``
compiled from :data:`SOURCE` with ``--fmad=false``, so each node's update is the reference's
arithmetic in the reference's order), the kept states written into one device array.
:func:`heat_run_torch` hands that ensemble to torch through DLPack (``torch.from_dlpack``): the
tensor shares the device memory, nothing is copied to the host.

CuPy is imported inside the functions: importing this module needs neither CuPy nor a GPU.
"""

from __future__ import annotations

import numpy as np

from ..errors import TwinError
from .heat import _as_f64, _check

#: threads per block
THREADS = 256

#: the CUDA source of one explicit step (see :mod:`.heat` for the formula)
SOURCE = r"""
extern "C" __global__ void heat_step(
    const double* __restrict__ cur, double* __restrict__ nxt,
    const double* __restrict__ ax, const double* __restrict__ ay, const double* __restrict__ bd,
    const double* __restrict__ t_inf, const double* __restrict__ t_edge,
    const double* __restrict__ shapes, const double* __restrict__ amps,
    const double dt, const int nb, const int h, const int w, const int ns, const int nsteps, const int n)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long plane = (long long)h * w;
    if (idx >= (long long)nb * plane) return;
    const int b = (int)(idx / plane);
    const int i = (int)((idx / w) % h);
    const int j = (int)(idx % w);
    if (i == 0 || j == 0 || i == h - 1 || j == w - 1) { nxt[idx] = t_edge[b]; return; }
    const double c = cur[idx];
    double src = 0.0;
    const double* a = amps + ((long long)b * nsteps + n) * ns;
    const double* f = shapes + (long long)b * ns * plane + (long long)i * w + j;
    for (int s = 0; s < ns; ++s)
        src += a[s] * f[s * plane];
    nxt[idx] = c
        + ax[b] * (cur[idx - 1] - 2.0 * c + cur[idx + 1])
        + ay[b] * (cur[idx - w] - 2.0 * c + cur[idx + w])
        - bd[b] * (c - t_inf[b])
        + dt * src;
}
"""

_kernel = None


def _step_kernel():
    global _kernel
    if _kernel is None:
        import cupy

        _kernel = cupy.RawKernel(SOURCE, "heat_step", options=("--fmad=false",))
    return _kernel


def heat_run_cupy(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every):
    """:func:`.heat.heat_run` on the current CuPy device; returns a float64 CuPy array
    (B, saves + 1, H, W). Arguments as there (host numpy arrays, copied to the device once)."""
    import cupy

    u0, ax, ay, bd, t_inf, t_edge, shapes, amps = _as_f64(u0, ax, ay, bd, t_inf, t_edge, shapes, amps)
    _check(u0, ax, ay, bd, t_inf, t_edge, shapes, amps, dt, saves, every)
    nb, h, w = u0.shape
    ns, nsteps = shapes.shape[1], amps.shape[1]
    d = [cupy.asarray(a) for a in (ax, ay, bd, t_inf, t_edge, shapes, amps)]
    cur = cupy.asarray(u0).copy()
    cur[:, 0, :] = cur[:, -1, :] = d[4][:, None]
    cur[:, :, 0] = cur[:, :, -1] = d[4][:, None]
    nxt = cur.copy()
    out = cupy.empty((nb, saves + 1, h, w), np.float64)
    out[:, 0] = cur
    kernel = _step_kernel()
    blocks = (nb * h * w + THREADS - 1) // THREADS
    n = 0
    for k in range(saves):
        for _ in range(every):
            kernel(
                (blocks,),
                (THREADS,),
                (
                    cur,
                    nxt,
                    *d,
                    np.float64(dt),
                    np.int32(nb),
                    np.int32(h),
                    np.int32(w),
                    np.int32(ns),
                    np.int32(nsteps),
                    np.int32(n),
                ),
            )
            cur, nxt = nxt, cur
            n += 1
        out[:, k + 1] = cur
    return out


def use_device(local_rank: int) -> int:
    """Make GPU ``local_rank % visible GPUs`` CuPy's current device (one rank per GPU of a node
    when launched one per GPU); returns its index.

    Raises
    ------
    TwinError
        Without CuPy, or when no CUDA device is visible.
    """
    try:
        import cupy
    except ImportError as e:
        raise TwinError(f"CuPy is not installed ({e}); install the [gpu] extra: pip install 'twinhpc[gpu]'") from None
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:  # noqa: BLE001 -- cupy's CUDARuntimeError: no driver, no device
        raise TwinError(f"no CUDA device is visible ({type(e).__name__}: {e})") from None
    if count == 0:
        raise TwinError("no CUDA device is visible")
    index = local_rank % count
    cupy.cuda.Device(index).use()
    return index


def heat_run_torch(*args, dtype: str = "float32"):
    """:func:`heat_run_cupy`, the ensemble as a torch CUDA tensor of ``dtype`` that shares the
    device memory (``torch.from_dlpack``; no copy through the host)."""
    import torch

    out = heat_run_cupy(*args)
    if dtype != "float64":
        out = out.astype(dtype)
    return torch.from_dlpack(out)
