"""The compiled ops of ``twinhpc._C``: Python wrappers, and a numpy reference beside each.

These are the first pieces of the gradient all-reduce hot path (Horovod/DDP style): ``pack``
many gradients into one flat fusion buffer, optionally cast to a narrower wire dtype, all-reduce
the buffer, then ``unpack`` it back into the gradients with ``scale=1/world_size`` to average.
No op here calls MPI.

Supported dtypes: float32, float64, float16, bfloat16, int32 and int64. Casts go between
floating-point dtypes only; the arithmetic is float32 (float64 when either side is float64),
rounding to nearest even, and casts to float16/bfloat16 from float64 go through float32.

The extension is imported on first use: :func:`available` says whether it is built, and every
op raises :class:`~twinhpc.errors.TwinError` with the build command when it is not. Each
``*_reference`` function computes the same result with numpy (tests compare the two); they take
and return tensors like the ops, and never modify their arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .errors import TwinError

#: dtypes the ops accept
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64)

#: numpy dtype of each supported dtype but bfloat16 (numpy has none; the references hold it as float32)
_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.int32: np.int32,
    torch.int64: np.int64,
}

BUILD_HINT = (
    "build it from the repository root with `python setup.py build_ext --inplace` "
    "or `pip install --no-build-isolation --no-deps -e .` (the README's setup command)"
)

_ext: ModuleType | None = None


def _load() -> ModuleType:
    """The extension module, imported (and its fake kernels registered) on first use."""
    global _ext
    if _ext is None:
        try:
            from . import _C
        except ImportError as e:
            raise TwinError(
                f"the compiled extension twinhpc._C is not built or does not load ({e}); {BUILD_HINT}"
            ) from e
        _register_fakes()
        _ext = _C
    return _ext


def _register_fakes() -> None:
    """Shape-only kernels, so the ops work under torch.compile and FakeTensor tracing."""
    torch.library.register_fake("twinhpc::pack", _fake_pack)
    torch.library.register_fake("twinhpc::unpack", _fake_unpack)
    torch.library.register_fake("twinhpc::scale_", _fake_scale)


def _fake_pack(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    return tensors[0].new_empty(sum(t.numel() for t in tensors), dtype=dtype or tensors[0].dtype)


def _fake_unpack(flat: torch.Tensor, outs: list[torch.Tensor], scale: float = 1.0) -> None:
    return None


def _fake_scale(t: torch.Tensor, factor: float) -> None:
    return None


def available() -> bool:
    """Whether the compiled extension is built and loads (never raises)."""
    try:
        _load()
    except TwinError:
        return False
    return True


def build_info() -> dict[str, Any]:
    """How the extension was built.

    Returns
    -------
    dict
        ``cuda`` (bool: CUDA kernels compiled), ``mpi_compiled`` (the MPI named by ``mpi.h``,
        e.g. ``"Open MPI 4.1.4"``), ``mpi_library`` (``MPI_Get_library_version`` of the libmpi
        loaded now), ``mpi_standard`` (e.g. ``"3.1"``), ``compiler``, ``torch`` (the torch
        version compiled against).

    Raises
    ------
    TwinError
        If the extension is not built.
    """
    return dict(_load().build_info())


# -- pack --------------------------------------------------------------------------------------
def pack(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Concatenate the flattened tensors into one new contiguous 1-D buffer.

    Parameters
    ----------
    tensors : sequence of Tensor
        At least one tensor; all on one device with one supported dtype. Any shape and layout
        (a non-contiguous tensor is read through a contiguous copy).
    dtype : torch.dtype, optional
        Dtype of the buffer (the wire format, e.g. ``torch.bfloat16``); default the tensors'.

    Returns
    -------
    Tensor
        1-D, ``sum(t.numel())`` elements, on the tensors' device.

    Raises
    ------
    TwinError
        If the extension is not built.
    ValueError
        If ``tensors`` is empty or the tensors are on different devices.
    TypeError
        If the tensors' dtypes differ (naming the first offending index), a dtype is not
        supported, or ``dtype`` asks for a cast to or from an integer dtype.
    """
    _load()
    if len(tensors) == 0:
        raise ValueError("twinhpc.pack: no tensors given")
    packed: torch.Tensor = torch.ops.twinhpc.pack(list(tensors), dtype)
    return packed


def pack_reference(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """numpy reference of :func:`pack` (CPU result; valid arguments only)."""
    wire = dtype or tensors[0].dtype
    parts = [_cast(_to_numpy(t).reshape(-1), t.dtype, wire, 1.0) for t in tensors]
    return _from_numpy(np.concatenate(parts), wire)


# -- unpack ------------------------------------------------------------------------------------
def unpack(flat: torch.Tensor, outs: Sequence[torch.Tensor], scale: float = 1.0) -> None:
    """Copy consecutive slices of ``flat`` into each of ``outs``, cast and scaled, in place.

    ``outs[i]`` receives ``flat[o_i : o_i + outs[i].numel()] * scale`` (with ``o_i`` the
    elements of the outs before it), cast to ``outs[i].dtype`` and laid out in its shape.

    Parameters
    ----------
    flat : Tensor
        1-D buffer, e.g. from :func:`pack`, with exactly as many elements as all outs together.
    outs : sequence of Tensor
        Contiguous tensors on ``flat``'s device; floating point when ``flat`` is, else of
        ``flat``'s integer dtype.
    scale : float
        Factor applied to every element, e.g. ``1 / world_size`` to average; integer outs
        accept only 1.0.

    Raises
    ------
    TwinError
        If the extension is not built.
    ValueError
        If ``flat`` is not 1-D, the element counts do not add up, or an out is non-contiguous
        or on another device (naming the offending index). Nothing is written then.
    TypeError
        If a dtype is not supported, an out needs a cast to or from an integer dtype, or an
        integer out would be scaled (naming the offending index).
    """
    _load()
    torch.ops.twinhpc.unpack(flat, list(outs), float(scale))


def unpack_reference(flat: torch.Tensor, outs: Sequence[torch.Tensor], scale: float = 1.0) -> list[torch.Tensor]:
    """numpy reference of :func:`unpack`: the new contents of each out (``outs`` untouched)."""
    src = _to_numpy(flat)
    result, offset = [], 0
    for out in outs:
        part = _cast(src[offset : offset + out.numel()], flat.dtype, out.dtype, scale)
        result.append(_from_numpy(part, out.dtype).reshape(out.shape))
        offset += out.numel()
    return result


# -- scale_ ------------------------------------------------------------------------------------
def scale_(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply ``t`` by ``factor`` in place and return it.

    Raises
    ------
    TwinError
        If the extension is not built.
    TypeError
        If ``t`` is not float32, float64, float16 or bfloat16 (integers cannot be scaled).
    ValueError
        If ``t`` is not contiguous.
    """
    _load()
    torch.ops.twinhpc.scale_(t, float(factor))
    return t


def scale_reference(t: torch.Tensor, factor: float) -> torch.Tensor:
    """numpy reference of :func:`scale_`: the scaled values as a new tensor (``t`` untouched)."""
    return _from_numpy(_cast(_to_numpy(t), t.dtype, t.dtype, factor), t.dtype).reshape(t.shape)


# -- numpy helpers of the references -----------------------------------------------------------
def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; bfloat16 (which numpy lacks) as float32 holding the same values."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The tensor of ``dtype`` holding ``a``'s values (exact: they are representable)."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _round_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), still as float32.

    Keeps the upper 16 bits after adding the rounding bias, as c10::BFloat16 does (finite
    values; NaN payloads are not preserved).
    """
    bits = x.astype(np.float32).view(np.uint32)
    bias = ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((bits + bias) & np.uint32(0xFFFF0000)).view(np.float32)


def _cast(x: np.ndarray, src: torch.dtype, dst: torch.dtype, scale: float) -> np.ndarray:
    """``dst(acc(x) * acc(scale))`` with the kernels' arithmetic type ``acc``; a copy if nothing changes."""
    if src == dst and scale == 1.0:
        return x.copy()
    acc: type[np.floating[Any]] = np.float64 if torch.float64 in (src, dst) else np.float32
    y: np.ndarray = np.multiply(x.astype(acc), acc(scale))
    if dst == torch.float16:
        return y.astype(np.float32).astype(np.float16)
    if dst == torch.bfloat16:
        return _round_bfloat16(y.astype(np.float32))
    return y.astype(_NUMPY_DTYPES[dst])
