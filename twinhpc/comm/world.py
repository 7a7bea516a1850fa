"""The MPI world as the rest of twinhpc sees it: rank, size and the collectives.

Note:
    *The one door.* Outside :mod:`twinhpc.comm`, every collective goes through a
    :class:`World` method, and every one of them is a watched region
    (:mod:`twinhpc.comm.watchdog`): a rank that waits in it longer than :attr:`World.stall_timeout`
    names the ranks that have not arrived and aborts the job, on every rank, whichever rank
    stopped. So no collective waits without bound.

    *Agreeing on failure.* Multi-rank failures are the classic HPC hang: one rank raises, the
    others wait in the next collective. Work that may fail on some ranks only (rank 0 writing a
    checkpoint, a rank reading its shards) therefore runs through :meth:`World.run`, which
    catches the local error, agrees on the outcome with one ``allgather`` and raises the same
    :class:`~twinhpc.errors.TwinError` on every rank, naming the ranks that failed. An error
    that escapes without agreement ends the job through the watchdog: the rank exits, the
    others, waiting for it, abort at once (on its node) or after the stall timeout.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config.defaults import stall_timeout as default_stall_timeout
from ..errors import TwinError
from .watchdog import Board, Wait, register_exit, watchdog

if TYPE_CHECKING:
    from mpi4py import MPI

T = TypeVar("T")
log = logging.getLogger("twinhpc")

#: reductions of :meth:`World.allreduce`
REDUCTIONS = ("sum", "max", "min")


class Region:
    """``with world.region(name):`` -- a watched wait (see :meth:`World.region`)."""

    __slots__ = ("world", "name", "timeout", "wait")

    def __init__(self, world: World, name: str, timeout: float | None):
        self.world, self.name, self.timeout = world, name, timeout
        self.wait: Wait | None = None

    def __enter__(self) -> Region:
        self.wait = self.world._enter(self.name, self.timeout)
        return self

    def __exit__(self, tp: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self.wait is not None:
            self.world._leave(self.wait)


class World:
    """A thin wrapper of an mpi4py communicator (``COMM_WORLD`` unless given).

    Parameters
    ----------
    comm : the ranks.
    stall_timeout : seconds a rank may wait in one of this world's collectives (default
        :func:`twinhpc.config.defaults.stall_timeout`: ``$TWINHPC_STALL_TIMEOUT``, else 300);
        ``0``: no bound. Settable: the verbs set the job's ``train.stall_timeout``.

    Creating a World is not collective; its first collective also creates its arrival board
    (collective over ``comm``, as every collective is).
    """

    def __init__(self, comm: MPI.Intracomm | None = None, stall_timeout: float | None = None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm: MPI.Intracomm = MPI.COMM_WORLD if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.stall_timeout: float = default_stall_timeout() if stall_timeout is None else float(stall_timeout)
        self._board: Board | None = None
        self._board_tried = False
        self._seq = 0  # collectives entered on this world

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- watched regions ------------------------------------------------------------------
    def region(self, name: str, timeout: float | None = None) -> Region:
        """A context manager around one wait in a collective over this world's communicator.

        Every rank must enter the same regions in the same order, with the same ``name`` (a
        rank-independent label, shown in the watchdog's line). ``timeout`` (default
        :attr:`stall_timeout`) bounds the wait; with one rank nothing is watched.
        """
        return Region(self, name, timeout)

    def _enter(self, name: str, timeout: float | None) -> Wait | None:
        if self.size == 1:
            return None
        limit = self.stall_timeout if timeout is None else float(timeout)
        if not self._board_tried:
            self._make_board(limit)
        self._seq += 1
        board = self._board
        if board is not None:
            board.enter(self._seq, name)
        wait = Wait(self.rank, self.size, self._seq, name, limit, board, handling=_in_flight())
        if limit > 0:
            watchdog.watch(wait)
        return wait

    def _leave(self, wait: Wait) -> None:
        watchdog.unwatch(wait)
        if wait.board is not None:
            wait.board.leave()

    def _make_board(self, limit: float) -> None:
        """Create the arrival board (collective; itself a watched wait that names nobody)."""
        self._board_tried = True
        wait = Wait(self.rank, self.size, 0, "watchdog set-up", limit, None)
        if limit > 0:
            watchdog.watch(wait)
        try:
            self._board = Board(self.comm)
        except self.MPI.Exception as e:
            log.warning("rank %d: no arrival board (%s); stalled collectives will not name ranks", self.rank, e)
        finally:
            watchdog.unwatch(wait)
        if self._board is not None:
            watchdog.add_board(self._board)
            if self.comm.Compare(self.MPI.COMM_WORLD) in (self.MPI.IDENT, self.MPI.CONGRUENT):
                register_exit(self)

    def free(self) -> None:
        """Collective: release the arrival board (a later collective creates a new one)."""
        board = self._board
        if board is None:
            return
        with self.region("free"):
            watchdog.remove_board(board)
            self._board, self._board_tried = None, False
            board.free()

    # -- collectives ----------------------------------------------------------------------
    def barrier(self, name: str = "barrier") -> None:
        with self.region(name):
            self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0, name: str = "bcast") -> Any:
        with self.region(name):
            return self.comm.bcast(obj, root=root)

    def allgather(self, obj: Any, name: str = "allgather") -> list[Any]:
        with self.region(name):
            return self.comm.allgather(obj)

    def gather(self, obj: Any, root: int = 0, name: str = "gather") -> list[Any] | None:
        with self.region(name):
            return self.comm.gather(obj, root=root)

    def allreduce(self, value: Any, op: str = "sum", name: str = "allreduce") -> Any:
        """``value`` (a picklable number or object) reduced over the ranks with ``op``
        (``"sum"``, ``"max"`` or ``"min"``)."""
        if op not in REDUCTIONS:
            raise ValueError(f"World.allreduce: op must be one of {REDUCTIONS}, not {op!r}")
        mpi_op = {"sum": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}[op]
        with self.region(name):
            return self.comm.allreduce(value, op=mpi_op)

    def allreduce_sum(self, value: Any, name: str = "allreduce") -> Any:
        return self.allreduce(value, "sum", name)

    def allreduce_array(self, values: np.ndarray, name: str = "allreduce") -> np.ndarray:
        """The element-wise sum over the ranks of a numeric numpy array (one ``MPI_Allreduce``
        of its buffer, no pickling); a new array."""
        values = np.ascontiguousarray(values)
        out = np.empty_like(values)
        with self.region(name):
            self.comm.Allreduce(values, out, op=self.MPI.SUM)
        return out

    def gather_rows(self, arr: np.ndarray, root: int | None = None, name: str = "gather rows") -> np.ndarray | None:
        """Every rank's ``arr`` concatenated along axis 0 in rank order (``MPI_Allgatherv``, or
        ``MPI_Gatherv`` to ``root``, of the buffers): on every rank, or on ``root`` only (the
        others get ``None``). The arrays agree in dtype and in every axis but the first."""
        arr = np.ascontiguousarray(arr)
        if self.size == 1:
            return arr
        row = int(np.prod(arr.shape[1:], dtype=np.int64))
        counts = np.asarray(self.allgather(arr.shape[0], name=f"{name}: counts"), dtype=np.int64) * row
        out = np.empty((int(counts.sum() // max(row, 1)),) + arr.shape[1:], arr.dtype)
        recv = [out.reshape(-1), (counts, None)]
        with self.region(name):
            if root is None:
                self.comm.Allgatherv(arr.reshape(-1), recv)
                return out
            self.comm.Gatherv(arr.reshape(-1), recv if self.rank == root else None, root=root)
        return out if self.rank == root else None

    def _node_rank(self) -> int:
        """This rank's index among the ranks of its node (shared-memory domain); collective."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            index: int = node.Get_rank()
        finally:
            node.Free()
        return index

    def node_count(self, name: str = "node count") -> int:
        """How many nodes (shared-memory domains) the ranks span; collective."""
        with self.region(name):
            count: int = self.comm.allreduce(1 if self._node_rank() == 0 else 0)
        return count

    def local_rank(self, name: str = "local rank") -> int:
        """This rank's index among the ranks of its node (shared-memory domain); collective."""
        with self.region(name):
            return self._node_rank()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    # -- agreeing on failure --------------------------------------------------------------
    def check(self, error: str | None, exc: type[TwinError] = TwinError, name: str = "agreement") -> None:
        """Collective: raise ``exc`` on every rank if ``error`` is set on any rank.

        Identical messages from several ranks are reported once, with the list of ranks. The
        exception raised is marked as raised on every rank (:meth:`agreed`).
        """
        errors = self.allgather(error, name=name)
        if not any(errors):
            return
        by_msg: dict[str, list[int]] = {}
        for r, e in enumerate(errors):
            if e:
                by_msg.setdefault(e, []).append(r)
        if len(by_msg) == 1 and len(next(iter(by_msg.values()))) == self.size:
            err = exc(next(iter(by_msg)))  # every rank saw the same problem: say it once
        else:
            err = exc("; ".join(f"rank {','.join(map(str, ranks))}: {msg}" for msg, ranks in by_msg.items()))
        setattr(err, "all_ranks", True)  # noqa: B010 -- an attribute TwinError does not declare
        raise err

    @staticmethod
    def agreed(exc: BaseException | None) -> bool:
        """Whether ``exc`` was raised on every rank alike (by :meth:`check` or :meth:`run`): the
        ranks may then go on with collectives, such as closing what they share."""
        return bool(getattr(exc, "all_ranks", False))

    def run(self, fn: Callable[[], T], exc: type[TwinError] = TwinError, name: str = "run") -> T:
        """Collective: call ``fn`` on every rank, then agree whether any rank failed.

        A :class:`TwinError` contributes its message; an ``OSError`` (a file that cannot be
        written, a full disk) its type and message, on one line; any other exception its type, message and
        (in the rank's log) its traceback, so a bug on one rank still ends every rank with an
        error instead of a hang. ``name`` labels the agreement's collective.
        """
        result, error = None, None
        try:
            result = fn()
        except TwinError as e:
            error = str(e)
        except OSError as e:
            log.debug("rank %d: %s\n%s", self.rank, e, traceback.format_exc())
            error = _one_line(f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug: keep the traceback in this rank's log
            log.error("rank %d: unexpected error\n%s", self.rank, traceback.format_exc())
            error = _one_line(f"{type(e).__name__}: {e}")
        self.check(error, exc, name)
        return result  # type: ignore[return-value]


def _one_line(message: str) -> str:
    """``message`` with its line breaks and runs of blanks made single spaces (HDF5's messages
    hold a line break)."""
    return " ".join(message.split())


def _in_flight() -> str | None:
    """The exception the calling thread is handling (a collective entered on an error path)."""
    e = sys.exception()
    return None if e is None else f"{type(e).__name__}: {e}"[:200]


_world: World | None = None


def get_world() -> World:
    """The process-wide :class:`World` over ``COMM_WORLD`` (initialises MPI on first use)."""
    global _world
    if _world is None:
        _world = World()
    return _world
