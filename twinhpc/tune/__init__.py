"""Hyper-parameter sweeps: search spaces, ASHA, and the sweep's state in ``SWEEP/sweep.h5``.

::

    from twinhpc.config import load_job
    from twinhpc.tune import Sweep

    sweep = Sweep.create(load_job("jobs/digits-sweep.toml"), "sweeps/digits")
    work = sweep.next_trials()          # TrialWork: trial, job, epochs to train, where to resume
    sweep.report(work[0].trial, work[0].rung, 0.93)

- :mod:`twinhpc.tune.space`: checking ``[sweep.space]`` against the job; the grid, random and
  TPE (Optuna) samplers.
- :mod:`twinhpc.tune.asha`: asynchronous successive halving with promotion by resume (pure
  Python, deterministic) and its decision log.
- :mod:`twinhpc.tune.sweep`: :class:`Sweep`, tying them together and saving after every event
  through :mod:`twinhpc.io.sweep`.

This layer sits below the CLI and above train (``.importlinter``); it imports no torch, mpi4py
or h5py (sweep.h5 is read and written by :mod:`twinhpc.io.sweep`). ``docs/tune.md`` describes
the algorithm and the file.
"""

from .asha import ASHA, Decision, Step, TuneError, decisions_text, rungs
from .space import Observation, check_space, sampler
from .sweep import Sweep, TrialWork

__all__ = [
    "ASHA",
    "Decision",
    "Observation",
    "Step",
    "Sweep",
    "TrialWork",
    "TuneError",
    "check_space",
    "decisions_text",
    "rungs",
    "sampler",
]
