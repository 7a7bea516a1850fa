"""Preprocessing kernels: arrays in, arrays out; no MPI, no I/O, no torch.

Each module holds its Numba kernels beside the numpy (or plain Python) reference they are tested
against, and the generator of synthetic inputs that the tests and ``benchmarks/kernels.py`` share:

- :mod:`.stats`: per-channel / per-feature count, mean and M2 in one pass, with the pure
  :func:`~.stats.merge_moments` (Chan et al.) that merges them across chunks and ranks;
- :mod:`.image`: normalisation + random crop with zero padding + horizontal flip + NHWC → NCHW
  of a uint8 batch, fused in one pass, driven by per-image random numbers from an explicit seed;
- :mod:`.text`: lower-casing, regex word tokenisation, stop words, term counts that merge across
  ranks, the vocabulary, padded token-id sequences;
- :mod:`.tfidf`: sparse l2-normalised TF-IDF (CSR arrays) equal to scikit-learn's;
- :mod:`.cuda_image`: the image kernel for numba.cuda;
- :mod:`.heat`: explicit time steps of the heated plate (docs/twin.md) for a batch of scenarios;
- :mod:`.heat_cupy`: the same on a GPU with CuPy, the ensemble handed to torch through DLPack.

The kernels are compiled with ``cache=True``: the first call of each signature compiles (seconds)
and writes the machine code beside the module (``__pycache__``); later processes load it. Where
the installed tree is read-only, set ``NUMBA_CACHE_DIR`` to a writable folder (one per node is
fine), otherwise every process compiles again. The cross-rank merges are left to the caller (an
``allgather`` or ``Allreduce`` of the small partial results, then the pure merge functions), so
nothing here imports MPI.
"""

from __future__ import annotations

import types

from numba import njit


def serial_and_parallel(fn):
    """Compile ``fn`` twice: ``(serial, parallel)`` Numba dispatchers, both ``nogil`` and cached.

    ``prange`` in ``fn`` runs on Numba's thread pool in the parallel dispatcher and as a plain
    ``range`` in the serial one. Use the parallel one from the main thread, the serial one from
    loader threads (threads already run side by side there; nested pools oversubscribe the cores).

    Note: Numba's on-disk cache is keyed by the function's qualified name and line, not by the
    compile flags, so one function compiled with and without ``parallel=True`` would load each
    other's machine code from the cache. Each variant is therefore a copy of ``fn`` under its own
    name (``<name>_serial``, ``<name>_parallel``).
    """

    def variant(suffix: str):
        g = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
        g.__qualname__ = fn.__qualname__ + suffix
        g.__doc__ = fn.__doc__
        return g

    return (
        njit(cache=True, nogil=True)(variant("_serial")),
        njit(cache=True, nogil=True, parallel=True)(variant("_parallel")),
    )
