"""Communication: the MPI world (:mod:`.world`), the compiled all-reduce engine (:mod:`.engine`)
and the data-parallel front end (:mod:`.ddp`).

``from twinhpc.comm import DataParallel, Engine`` works; the submodules are imported on first use
so that commands which only need the MPI world do not import torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"DataParallel": "ddp", "Engine": "engine", "Handle": "engine", "World": "world", "get_world": "world"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
