"""The files twinhpc writes besides datasets (:mod:`twinhpc.data` owns those): a run's
``RUN/results.h5`` and ``RUN/ckpt/step-<N>.h5``, a preprocessed dataset's ``state.h5``, and the
benchmarks' records ``FOLDER/NAME/<time>-<commit>.h5``.

- :mod:`twinhpc.io.results`: :class:`~twinhpc.io.results.ResultsWriter` (rank 0) and
  :func:`~twinhpc.io.results.read_results` (no torch). Layout: ``docs/results-format.md``.
- :mod:`twinhpc.io.checkpoint`: :func:`~twinhpc.io.checkpoint.save_checkpoint`,
  :func:`~twinhpc.io.checkpoint.load_checkpoint`, :func:`~twinhpc.io.checkpoint.latest`,
  :func:`~twinhpc.io.checkpoint.rng_state` (imports torch).
- :mod:`twinhpc.io.predictions`: :func:`~twinhpc.io.predictions.write_predictions`, the
  ``PRED.h5`` of ``twinhpc predict`` (layout in its docstring and ``docs/training.md``).
- :mod:`twinhpc.io.prepared_state`: :func:`~twinhpc.io.prepared_state.write_prepared_state`,
  :func:`~twinhpc.io.prepared_state.read_prepared_state`: a preprocessed dataset's fitted state
  ``state.h5`` (no torch). Layout: ``docs/preprocess.md``.
- :mod:`twinhpc.io.bench_results`: :func:`~twinhpc.io.bench_results.write_results`, a new
  record of a benchmark run (tables, settings, machine, commit, command, date), and
  :func:`~twinhpc.io.bench_results.read_records` (no torch). Layout: ``docs/benchmark-records.md``.
- :mod:`twinhpc.io.sweep`: :func:`~twinhpc.io.sweep.write_sweep`,
  :func:`~twinhpc.io.sweep.read_sweep`: a sweep's ``SWEEP/sweep.h5`` (no torch). Layout:
  ``docs/tune.md``.
- :mod:`twinhpc.io.atomic`: :func:`~twinhpc.io.atomic.replace_durably`, the crash-safe rename
  of a finished temporary file over its target that every writer here ends with, and
  :func:`~twinhpc.io.atomic.remove_durably`.
- :mod:`twinhpc.io.rundir`: a run directory's lock ``RUN/twinhpc.lock``
  (:func:`~twinhpc.io.rundir.acquire_lock`), leftover temporaries, write probes and free space
  (no torch).

The submodules are not imported here, so reading results (``twinhpc report``) or a preprocessing
state does not import torch. This layer imports h5py, numpy and torch (:mod:`.checkpoint`
only), never mpi4py: callers gather what several ranks hold (RNG states) and pass it in.
"""
