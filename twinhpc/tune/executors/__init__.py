"""Sweep executors: where trial segments run.

- ``debug`` (:mod:`.debug`): in the driver's process, one rank, one segment at a time;
- ``local`` (:mod:`.local`): submitit's local executor, each segment ``mpirun -n N``;
- ``slurm`` (:mod:`.slurm`): submitit on Slurm, segments as job arrays with a throttle;
- ``dask`` (:mod:`.dask`): a ``dask.distributed`` cluster whose workers start each segment as
  its own ``mpirun``/``srun`` process.

:func:`make` builds one by name; :mod:`.base` states what each offers the driver.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ...config import Job
from ...errors import TwinError
from .base import SEGMENT_STATES, Launched, SegmentState, TrialExecutor, segment_call, write_trial_job

#: ``--executor`` names and their modules
EXECUTORS = {"local": "local", "slurm": "slurm", "debug": "debug", "dask": "dask"}


def make(name: str, directory: Path, job: Job, concurrent: int, **options: object) -> TrialExecutor:
    """The executor ``name`` for the sweep in ``directory``; ``options`` go to its constructor
    (``dask``: ``address``)."""
    if name not in EXECUTORS:
        raise TwinError(f"--executor: {name!r} is not one of {', '.join(EXECUTORS)}")
    module = importlib.import_module(f"{__package__}.{EXECUTORS[name]}")
    cls: type[TrialExecutor] = module.EXECUTOR
    return cls(directory, job, concurrent, **options)


__all__ = [
    "EXECUTORS",
    "SEGMENT_STATES",
    "Launched",
    "SegmentState",
    "TrialExecutor",
    "make",
    "segment_call",
    "write_trial_job",
]
