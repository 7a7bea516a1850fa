"""Per-batch image normalisation and augmentation, fused in one pass: uint8 NHWC → float32.

For image ``b`` of a batch ``x`` (n, H, W, C), with ``pad`` = p, crop offsets
``offsets[b] = (oy, ox)`` in [0, 2p] and ``flips[b]`` in {False, True}::

    padded = x[b] with p zero pixels added on each side of H and W   (fill: pixel value 0)
    crop   = padded[oy:oy + H, ox:ox + W]                             (random crop with padding)
    crop   = crop[:, ::-1] if flips[b] else crop                      (horizontal flip)
    y[b]   = (crop / 255 - mean) / std   per channel, in float32       (normalisation)

and ``y`` in NCHW layout (for torch) or NHWC. This is torchvision's ``RandomCrop(H, padding=p)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` in that order: ``mean`` and
``std`` are in [0, 1] units (pixel statistics from :mod:`.stats` divided by 255), and padded
pixels are black before normalisation (they become ``-mean / std``).

The randomness is an input, not hidden in the kernel: :func:`augment_params` draws the offsets
and flips from a numpy ``Generator`` — per rank, epoch and batch, :func:`batch_rng` — so the
numpy reference :func:`normalize_augment_reference` sees exactly the same draws, and the kernel's
output equals it bit for bit::

    rng = batch_rng(seed, rank, epoch, step)
    offsets, flips = augment_params(rng, len(x), pad=4)
    y = normalize_augment(x, mean, std, offsets=offsets, flips=flips, pad=4)   # (n, 3, 32, 32)

Without ``offsets`` and ``flips`` the kernel only normalises (and transposes).

Note: the kernel does not compute ``(v / 255 - mean) / std`` per pixel. A uint8 channel has 256
values, so :func:`normalization_table` evaluates the reference's own float32 expression once for
each (channel, value), and the kernel gathers from that table: the same bits as the reference,
with no division in the loop.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from . import serial_and_parallel

#: output layouts: NCHW for torch's convolutions, NHWC as the input
LAYOUTS = ("NCHW", "NHWC")


def batch_rng(seed: int, rank: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of one batch's augmentation: ``default_rng((seed, rank, epoch, batch))``.

    Seeding by the tuple (a ``SeedSequence``) keeps the streams of all (rank, epoch, batch)
    distinct; a sum such as ``seed + rank + epoch·K + batch`` would give rank 1's batch 0 the
    stream of rank 0's batch 1. The same tuple always gives the same draws (resume is exact).
    """
    return np.random.default_rng((int(seed), int(rank), int(epoch), int(batch)))


def augment_params(
    rng: np.random.Generator, n: int, *, pad: int, flip: bool = True, flip_probability: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image crop offsets and flips for a batch of ``n`` images.

    Returns
    -------
    offsets : numpy.ndarray of int64, shape (n, 2)
        (oy, ox), each uniform in [0, 2·pad]; all ``pad`` (no shift) when ``pad`` is 0.
    flips : numpy.ndarray of bool, shape (n,)
        True with probability ``flip_probability`` (all False when ``flip`` is False).

    Raises
    ------
    ValueError
        ``n`` or ``pad`` is negative, or ``flip_probability`` is outside [0, 1].
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if pad < 0:
        raise ValueError(f"pad: must be >= 0, got {pad}")
    if not 0.0 <= flip_probability <= 1.0:
        raise ValueError(f"flip_probability: must be in [0, 1], got {flip_probability}")
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2), dtype=np.int64)
    flips = rng.random(n) < flip_probability if flip else np.zeros(n, bool)
    return offsets, flips


def normalization_table(mean, std) -> np.ndarray:
    """float32 (channels, 256): ``(v / 255 - mean[c]) / std[c]`` for every pixel value ``v``,
    computed with the reference's float32 operations. Read-only: the tables of recent
    (mean, std) pairs are kept, so a training loop builds and checks its table once, not per
    batch.

    Raises
    ------
    ValueError
        ``mean`` and ``std`` differ in length, or a ``std`` is not finite and positive.
    """
    mean = np.atleast_1d(np.asarray(mean, np.float32))
    std = np.atleast_1d(np.asarray(std, np.float32))
    return _table(mean.tobytes(), mean.shape, std.tobytes(), std.shape)


@functools.lru_cache(maxsize=32)
def _table(mean_bytes: bytes, mean_shape: tuple, std_bytes: bytes, std_shape: tuple) -> np.ndarray:
    mean = np.frombuffer(mean_bytes, np.float32).reshape(mean_shape)
    std = np.frombuffer(std_bytes, np.float32).reshape(std_shape)
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"std: expected one value per channel like mean ({mean.shape}), got {std.shape}")
    if not (np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(f"std: every value must be finite and > 0, got {std.tolist()}")
    values = np.arange(256, dtype=np.float32)
    table = _normalize(values[None, :], mean[:, None], std[:, None])
    table.flags.writeable = False
    return table


def _normalize(v, mean, std):
    """The reference's arithmetic, shared with :func:`normalization_table` (float32 throughout)."""
    return (v / np.float32(255.0) - mean) / std


def _augment(x, table, offsets, flips, pad, nchw, out):
    n, h, w, c = x.shape
    for b in prange(n):
        oy = offsets[b, 0] - pad
        ox = offsets[b, 1] - pad
        # output column j reads source column sx = first + step * j; [j0, j1) lies inside the image
        if flips[b]:
            first, step, j0, j1 = w - 1 + ox, -1, max(0, ox), min(w, w + ox)
        else:
            first, step, j0, j1 = ox, 1, max(0, -ox), min(w, w - ox)
        j0 = min(j0, w)  # pad > size: the crop may miss the image (empty ranges)
        j1 = max(j1, j0)
        i0 = min(max(0, -oy), h)
        i1 = max(min(h, h - oy), i0)
        if nchw:
            for ch in range(c):
                fill = table[ch, 0]
                for i in range(h):
                    if i < i0 or i >= i1:
                        out[b, ch, i, :] = fill
                        continue
                    src = x[b, i + oy]
                    out[b, ch, i, :j0] = fill
                    for j in range(j0, j1):
                        out[b, ch, i, j] = table[ch, src[first + step * j, ch]]
                    out[b, ch, i, j1:] = fill
        else:
            for i in range(h):
                inside = i0 <= i < i1
                for j in range(w):
                    if inside and j0 <= j < j1:
                        for ch in range(c):
                            out[b, i, j, ch] = table[ch, x[b, i + oy, first + step * j, ch]]
                    else:
                        for ch in range(c):
                            out[b, i, j, ch] = table[ch, 0]
    return out


_augment_serial, _augment_parallel = serial_and_parallel(_augment)


def _check_images(x) -> None:
    """numpy, numba device arrays and torch tensors (whose dtype numpy does not take) alike."""
    if not hasattr(x, "dtype") or str(x.dtype).removeprefix("torch.") != "uint8" or len(x.shape) != 4:
        raise ValueError(
            f"x: expected a uint8 array (n, height, width, channels), got "
            f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', ())}"
        )


def _check_params(shape, mean, std, offsets, flips, pad, layout):
    """The normalisation table and the checked offsets (int64) and flips (bool) for a batch of
    ``shape`` (n, H, W, C); shared with :mod:`.cuda_image`."""
    n, _, _, c = shape
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad: expected an integer >= 0, got {pad!r}")
    table = normalization_table(mean, std)
    if table.shape[0] != c:
        raise ValueError(f"mean: expected {c} values (one per channel of x), got {table.shape[0]}")
    if offsets is None:
        offsets = np.full((n, 2), pad, np.int64)
    offsets = np.asarray(offsets)
    if offsets.shape != (n, 2) or offsets.dtype.kind not in "iu":
        raise ValueError(f"offsets: expected integers of shape ({n}, 2), got {offsets.dtype} {offsets.shape}")
    if n and (offsets.min() < 0 or offsets.max() > 2 * pad):
        raise ValueError(f"offsets: every value must be in [0, 2*pad] = [0, {2 * pad}]")
    flips = np.zeros(n, bool) if flips is None else np.asarray(flips)
    if flips.shape != (n,) or flips.dtype.kind not in "biu":
        raise ValueError(f"flips: expected {n} booleans, got {flips.dtype} {flips.shape}")
    return table, np.ascontiguousarray(offsets, np.int64), np.ascontiguousarray(flips, np.bool_)


def _check(x, mean, std, offsets, flips, pad, layout):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x: expected a numpy array, got {type(x).__name__}")
    _check_images(x)
    return _check_params(x.shape, mean, std, offsets, flips, pad, layout)


def _out_shape(x, layout):
    n, h, w, c = x.shape
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def normalize_augment(
    x: np.ndarray,
    mean,
    std,
    *,
    offsets=None,
    flips=None,
    pad: int = 0,
    layout: str = "NCHW",
    out: np.ndarray | None = None,
    parallel: bool = False,
) -> np.ndarray:
    """Normalise, crop, flip and transpose a uint8 batch in one pass (see the module docstring).

    Parameters
    ----------
    x : numpy.ndarray, uint8, shape (n, H, W, C)
        The batch, NHWC, pixel values 0..255.
    mean, std : sequence of C floats
        Per-channel statistics in [0, 1] units (pixel mean / 255, pixel std / 255); ``std > 0``.
    offsets : integer array (n, 2), optional
        Crop offsets (oy, ox) into the padded image, in [0, 2·pad]; default: ``pad`` (no shift).
    flips : bool array (n,), optional
        Flip image ``b`` horizontally where True; default: no flips.
    pad : int
        Zero padding on each side, in pixels.
    layout : {"NCHW", "NHWC"}
        Layout of the result.
    out : numpy.ndarray, float32, optional
        C-contiguous array of the result's shape to write into (e.g. a reused or pinned buffer).
    parallel : bool
        Split the batch over Numba's thread pool. Off by default: a CIFAR batch takes about a
        millisecond on one core, which a thread pool does not shorten on 2 cores and lengthens
        badly when the other core is busy (a loader thread, another rank).

    Returns
    -------
    numpy.ndarray, float32, (n, C, H, W) or (n, H, W, C)
        ``out`` when given.

    Raises
    ------
    ValueError
        A bad shape, dtype or value of ``x``, ``mean``, ``std``, ``offsets``, ``flips``, ``pad``,
        ``layout`` or ``out`` (the message names it).
    """
    table, offsets, flips = _check(x, mean, std, offsets, flips, pad, layout)
    shape = _out_shape(x, layout)
    if out is None:
        out = np.empty(shape, np.float32)
    elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous:
        raise ValueError(
            f"out: expected a C-contiguous float32 array of shape {shape}, got "
            f"{getattr(out, 'dtype', type(out).__name__)} {np.shape(out)}"
        )
    kernel = _augment_parallel if parallel else _augment_serial
    return kernel(np.ascontiguousarray(x), table, offsets, flips, int(pad), layout == "NCHW", out)


def normalize_augment_reference(
    x: np.ndarray, mean, std, *, offsets=None, flips=None, pad: int = 0, layout: str = "NCHW"
) -> np.ndarray:
    """The numpy reference of :func:`normalize_augment`, one vectorised step at a time: pad,
    crop and flip by fancy indexing, normalise in float32, transpose."""
    _, offsets, flips = _check(x, mean, std, offsets, flips, pad, layout)
    n, h, w, c = x.shape
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = offsets[:, 0, None] + np.arange(h)  # (n, H)
    cols = offsets[:, 1, None] + np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))  # (n, W)
    crop = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n, H, W, C)
    y = _normalize(crop.astype(np.float32), mean, std)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if layout == "NCHW" else y


def synthetic_batch(n: int = 256, height: int = 32, width: int = 32, channels: int = 3, *, seed: int = 0) -> np.ndarray:
    """Test and benchmark input: uint8 NHWC images (a CIFAR-10 batch by default), uniform
    noise plus a per-channel offset so that channels differ in mean."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=(n, height, width, channels), dtype=np.uint8)
    return base + (np.arange(channels, dtype=np.uint8) * 20)[None, None, None, :]
