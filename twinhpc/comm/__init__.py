"""Communication: the MPI world (:mod:`.world`), the compiled all-reduce engine (:mod:`.engine`)
and the data-parallel front end (:mod:`.ddp`).

``from twinhpc.comm import DataParallel, Engine`` works; the submodules are imported on first use
so that commands which only need the MPI world do not import torch.
"""

from __future__ import annotations

import os

#: Open MPI reads this once, at MPI_Init. Enabled, it lets the engine give each of Open MPI's
#: all-reduce algorithms a communicator of its own, as candidates for its per-size choice
#: (csrc/mpit.h). Without a forced algorithm or rules file Open MPI's choices are unchanged
#: (it falls back to its fixed decision), so this changes nothing else. Set before any module
#: of this package imports mpi4py (which initialises MPI); a value in the environment wins,
#: and a program that initialised MPI before importing twinhpc keeps what it had.
DYNAMIC_RULES_ENV = "OMPI_MCA_coll_tuned_use_dynamic_rules"
os.environ.setdefault(DYNAMIC_RULES_ENV, "1")

_LAZY = {"DataParallel": "ddp", "Engine": "engine", "Handle": "engine", "World": "world", "get_world": "world"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
