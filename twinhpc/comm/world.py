"""The MPI world as the rest of twinhpc sees it: rank, size and a few collectives.

Note:
    Multi-rank failures are the classic HPC hang: one rank raises, the others wait forever in
    the next collective. Every phase of a parallel command therefore runs through
    :meth:`World.run`, which catches the local error, agrees on the outcome with one
    ``allgather`` and raises the same :class:`~twinhpc.errors.TwinError` on every rank, naming
    the ranks that failed. Every rank reaches the same collectives in the same order.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import TwinError

if TYPE_CHECKING:
    from mpi4py import MPI

T = TypeVar("T")
log = logging.getLogger("twinhpc")


class World:
    """A thin wrapper of an mpi4py communicator (``COMM_WORLD`` unless given)."""

    def __init__(self, comm: MPI.Intracomm | None = None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm: MPI.Intracomm = MPI.COMM_WORLD if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- collectives ----------------------------------------------------------------------
    def barrier(self) -> None:
        self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return self.comm.gather(obj, root=root)

    def allreduce_sum(self, value: Any) -> Any:
        return self.comm.allreduce(value, op=self.MPI.SUM)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    # -- agreeing on failure --------------------------------------------------------------
    def check(self, error: str | None, exc: type[TwinError] = TwinError) -> None:
        """Collective: raise ``exc`` on every rank if ``error`` is set on any rank.

        Identical messages from several ranks are reported once, with the list of ranks.
        """
        errors = self.allgather(error)
        if not any(errors):
            return
        by_msg: dict[str, list[int]] = {}
        for r, e in enumerate(errors):
            if e:
                by_msg.setdefault(e, []).append(r)
        if len(by_msg) == 1 and len(next(iter(by_msg.values()))) == self.size:
            raise exc(next(iter(by_msg)))  # every rank saw the same problem: say it once
        raise exc("; ".join(f"rank {','.join(map(str, ranks))}: {msg}" for msg, ranks in by_msg.items()))

    def run(self, fn: Callable[[], T], exc: type[TwinError] = TwinError) -> T:
        """Collective: call ``fn`` on every rank, then agree whether any rank failed.

        A :class:`TwinError` contributes its message; any other exception contributes its type,
        message and (in the rank's log) its traceback, so a bug on one rank still ends every rank
        with an error instead of a hang.
        """
        result, error = None, None
        try:
            result = fn()
        except TwinError as e:
            error = str(e)
        except Exception as e:  # a bug: keep the traceback in this rank's log
            log.error("rank %d: unexpected error\n%s", self.rank, traceback.format_exc())
            error = f"{type(e).__name__}: {e}"
        self.check(error, exc)
        return result  # type: ignore[return-value]


_world: World | None = None


def get_world() -> World:
    """The process-wide :class:`World` over ``COMM_WORLD`` (initialises MPI on first use)."""
    global _world
    if _world is None:
        _world = World()
    return _world
