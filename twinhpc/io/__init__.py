"""What a run leaves on disk: ``RUN/results.h5`` and ``RUN/ckpt/step-<N>.h5``.

- :mod:`twinhpc.io.results`: :class:`~twinhpc.io.results.ResultsWriter` (rank 0) and
  :func:`~twinhpc.io.results.read_results` (no torch). Layout: ``docs/results-format.md``.
- :mod:`twinhpc.io.checkpoint`: :func:`~twinhpc.io.checkpoint.save_checkpoint`,
  :func:`~twinhpc.io.checkpoint.load_checkpoint`, :func:`~twinhpc.io.checkpoint.latest`,
  :func:`~twinhpc.io.checkpoint.rng_state` (imports torch).
- :mod:`twinhpc.io.atomic`: :func:`~twinhpc.io.atomic.replace_durably`, the crash-safe rename
  of a finished temporary file over its target that every writer here ends with.

The submodules are not imported here, so reading results (``twinhpc report``) does not import
torch. This layer imports h5py, numpy and torch, never mpi4py: callers gather what several ranks
hold (RNG states) and pass it in.
"""
