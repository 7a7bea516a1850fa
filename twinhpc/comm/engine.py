"""The compiled all-reduce engine: in-place collectives on torch tensors, run in order by a C++ thread.

Usage (every rank makes the same calls in the same order)::

    from twinhpc.comm.engine import Engine

    eng = Engine()                                    # over MPI.COMM_WORLD; collective
    eng.allreduce_(t, op="avg")                       # blocking, in place
    h = eng.allreduce_async_(g, op="avg", wire_dtype=torch.bfloat16, name="bucket3")
    h = eng.allreduce_many_async_([g1, g2, g3], op="avg")   # fused into one buffer
    h.wait()                                          # releases the GIL while waiting
    eng.broadcast_(p, root=0); eng.barrier(); eng.close()

Every operation goes through one FIFO queue served by a background C++ thread
(``csrc/engine.h``), on the engine's own duplicate of the communicator, so asynchronous
operations overlap Python work and complete in the order they were enqueued.

Dtypes: float32, float64, float16, bfloat16, int32, int64; ``op="avg"`` needs a floating-point
dtype. float16/bfloat16 are summed in float32 (rounded to the 16-bit type once per addition
step of the algorithm; the ``shm`` algorithm rounds once in all). A ``wire_dtype`` casts
floating-point tensors to that dtype for the exchange and back (``avg`` scales after the cast
back, in float32).

Errors:
    Errors Python sees in the arguments themselves (not a tensor, an unknown ``op`` or algorithm
    name) raise at the call, on the rank that made it. Errors in the tensors (unsupported dtype,
    non-contiguous, ``avg`` of integers) and disagreements between ranks (a different element
    count, dtype, op or wire dtype on some rank) are exchanged before any data moves, in one
    small ``MPI_Allgather`` per operation, and raise the same ``TypeError`` or ``ValueError``
    from ``wait()`` (or the blocking call) on every rank, naming the ranks and the problem. MPI
    failures raise ``RuntimeError``. A rank that does not arrive at an operation within
    ``stall_timeout`` seconds makes rank 0's stall inspector print the missing ranks and abort
    the job (``MPI_Abort``, non-zero exit); every blocking call and ``wait()`` is also a watched
    region of the engine's :class:`~twinhpc.comm.world.World` (:mod:`twinhpc.comm.watchdog`), so a
    rank waiting for a stopped rank 0 aborts the job too. The watchdog gives those regions
    :data:`INSPECTOR_FIRST_S` more than ``stall_timeout``: rank 0's inspector, whose clock starts
    when the operation starts (after the region opened), names the missing ranks first, and the
    watchdog stays the bound when rank 0 itself is stopped.

Closing:
    :meth:`Engine.close` (or leaving a ``with Engine() as eng:`` block) is collective: every rank
    closes its engine, in the same order as its other collectives. An engine that is garbage
    collected unclosed cannot do that (ranks collect in different orders), so it emits a
    ``ResourceWarning`` and releases only what its process holds: its thread stops, operations
    still queued fail, and its communicators and shared memory stay allocated until MPI is
    finalised. Engines still open at interpreter exit are closed then, in reverse order of
    creation, before mpi4py finalises MPI.

Note:
    The per-operation agreement costs one 256-byte-per-rank ``MPI_Allgather`` (a few
    microseconds on one node). Checking only the first time a bucket name is seen would be
    cheaper but is unsafe: if ranks disagree about whether a name is new, they disagree about
    whether to run the check, which is exactly the mismatched-collective hang the check exists
    to prevent. For gradient buckets of megabytes the cost is below measurement noise.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import warnings
import weakref
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Generic, TypeVar

import torch
from mpi4py import MPI  # before the exit handler below: MPI must outlive the engines

from ..config.defaults import stall_timeout as default_stall_timeout
from .tuning import ALL_SIZES, algorithm_table
from .world import Region, World, get_world

if TYPE_CHECKING:
    from .. import _C

#: the all-reduce algorithms' names, in the order of their codes in the compiled core (the
#: table in ``csrc/engine.cpp``); read from ``twinhpc._C`` on first use (see ``__getattr__``)
ALGORITHMS: tuple[str, ...]
#: reductions
OPS = ("sum", "avg")
#: environment variable overriding ``algorithm="auto"`` (a name of :data:`ALGORITHMS`)
ALGO_ENV = "TWINHPC_ALLREDUCE_ALGO"
#: environment variable: ``0`` stages CUDA tensors through pinned host memory even when the MPI
#: library reports CUDA support (``MPIX_Query_cuda_support``); unset or ``1``: use that support
CUDA_AWARE_ENV = "TWINHPC_MPI_CUDA_AWARE"
#: bytes per ring message and per shared-memory round (fits the last-level cache several times)
DEFAULT_SEGMENT_BYTES = 512 << 10
#: seconds the watchdog adds to ``stall_timeout`` for the engine's own waits, so that rank 0's
#: stall inspector (which names the missing ranks of the operation) speaks first
INSPECTOR_FIRST_S = 1.0


def _core() -> ModuleType:
    """The compiled extension (loaded on first use; :class:`~twinhpc.errors.TwinError` if not built)."""
    from .. import ops

    return ops._load()


@functools.cache
def _codes() -> dict[str, int]:
    """Algorithm name -> its code in the compiled core."""
    names: list[str] = _core().allreduce_algorithms()
    return {name: code for code, name in enumerate(names)}


def __getattr__(name: str) -> tuple[str, ...]:
    # ALGORITHMS is read on first access, so that importing this module does not load the extension.
    if name == "ALGORITHMS":
        return tuple(_codes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: what a handle's wait() returns: the tensor, or the list of tensors, given
R = TypeVar("R", torch.Tensor, list[torch.Tensor])


class Handle(Generic[R]):
    """An operation enqueued on an :class:`Engine`; ``wait()`` returns its tensor(s)."""

    __slots__ = ("_work", "_result", "_engine")
    _work: _C.Work
    _result: R
    _engine: Engine

    def __init__(self, work: _C.Work, result: R, engine: Engine):
        self._work = work
        self._result = result
        self._engine = engine

    def wait(self) -> R:
        """Block until the operation is complete (the GIL is released meanwhile).

        Returns
        -------
        Tensor or list of Tensor
            The tensor(s) given, now holding the result.

        Raises
        ------
        TypeError, ValueError
            A bad tensor or a disagreement between ranks (raised on every rank).
        RuntimeError
            An MPI error.
        """
        with self._engine.region(self._work.name):
            self._work.wait()
        return self._result

    def done(self) -> bool:
        """Whether the operation has finished (never blocks)."""
        return self._work.done()

    def timings(self) -> dict[str, int]:
        """Monotonic microseconds (``time.monotonic() * 1e6``) of each phase, 0 where not reached.

        Keys: ``enqueue``, ``start`` (the thread took it), ``pack_done`` (ranks agreed, fusion
        buffer filled), ``reduce_done`` (the exchange finished), ``unpack_done`` (complete).
        """
        return self._work.timings()

    @property
    def name(self) -> str:
        """The label given at submission."""
        return self._work.name

    @property
    def index(self) -> int:
        """Position in the engine's queue (the same on every rank)."""
        return self._work.index


class Engine:
    """Collectives on torch tensors over an MPI communicator, run by a C++ thread in FIFO order.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm, optional
        The ranks taking part (default ``MPI.COMM_WORLD``); the engine duplicates it.
        Constructing an engine is collective over ``comm``.
    stall_timeout : float, optional
        Seconds an operation may wait for ranks that have not arrived before they are named and
        the job aborted: by rank 0's stall inspector, and by every rank's watchdog for its own
        waits (default :func:`twinhpc.config.defaults.stall_timeout`: ``$TWINHPC_STALL_TIMEOUT``,
        else 300 s, as the job file's ``train.stall_timeout``); ``0`` disables both.
    algorithm : str
        ``"auto"``: per message size, measured once per machine and communicator shape and
        cached (:mod:`twinhpc.comm.tuning`); ``$TWINHPC_ALLREDUCE_ALGO`` overrides it. Or one of
        :data:`ALGORITHMS`: ``"mpi"`` (``MPI_Allreduce``), ``"ring"`` (reduce-scatter +
        all-gather over point-to-point), ``"shm"`` (MPI-3 shared memory; all ranks on one
        node), and ``"mpi_<name>"`` (``MPI_Allreduce`` with one of Open MPI's algorithms forced
        on a communicator of its own; with Open MPI when ``OMPI_MCA_coll_tuned_use_dynamic_rules``
        was enabled before MPI started, which ``import twinhpc`` does unless the
        environment sets it).
    segment_bytes : int
        Bytes per ring message and per shared-memory round.

    Raises
    ------
    TypeError
        If ``comm`` is not an mpi4py intracommunicator.
    ValueError
        If ``comm`` is ``MPI.COMM_NULL`` or invalid, ``algorithm`` is unknown or unavailable, or
        ``$TWINHPC_MPI_CUDA_AWARE`` is set to something other than 0 or 1.
    RuntimeError
        If MPI is not initialised with ``MPI_THREAD_MULTIPLE``.
    """

    def __init__(
        self,
        comm: MPI.Intracomm | None = None,
        stall_timeout: float | None = None,
        algorithm: str = "auto",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ):
        self._core: _C.Engine | None = None
        self._closed = False
        comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"twinhpc.Engine: comm must be an mpi4py communicator, not {type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("twinhpc.Engine: comm is MPI.COMM_NULL")
        if comm.Is_inter():
            raise ValueError("twinhpc.Engine: comm is an intercommunicator; an intracommunicator is needed")
        if algorithm != "auto" and algorithm not in _codes():
            raise ValueError(
                f"twinhpc.Engine: unknown algorithm {algorithm!r} (expected 'auto' or one of {', '.join(_codes())})"
            )
        use_cuda_aware = os.environ.get(CUDA_AWARE_ENV, "1").strip()
        if use_cuda_aware not in ("0", "1"):
            raise ValueError(f"twinhpc.Engine: ${CUDA_AWARE_ENV} must be 0 or 1, not {use_cuda_aware!r}")
        self.comm = comm
        self.stall_timeout = default_stall_timeout() if stall_timeout is None else float(stall_timeout)
        #: the engine's waits are regions of this World (the process's own over COMM_WORLD)
        self.world = get_world() if comm == MPI.COMM_WORLD else World(comm, self.stall_timeout)
        self._own_world = comm != MPI.COMM_WORLD
        with self.region("engine start"):
            self._core = core = _core().Engine(
                comm.py2f(), self.stall_timeout, int(segment_bytes), use_cuda_aware == "1"
            )
        self.rank: int = core.rank
        #: whether CUDA tensors go to MPI as device pointers (a CUDA-aware MPI, unless
        #: ``$TWINHPC_MPI_CUDA_AWARE=0``); otherwise they are staged through pinned host memory
        self.cuda_aware: bool = core.cuda_aware
        self.size: int = core.size
        self._available = [a for a, code in _codes().items() if core.has_algorithm(code)]
        self.segment_bytes = int(segment_bytes)
        self.algorithm = os.environ.get(ALGO_ENV, "auto") if algorithm == "auto" else algorithm
        try:
            self.set_table(algorithm_table(self) if self.algorithm == "auto" else [(ALL_SIZES, self.algorithm)])
        except BaseException:
            # the other ranks may not have failed alike: release only this process's part
            self._closed = True
            core.abandon()
            raise
        _live[next(_serials)] = self

    # -- algorithm choice -----------------------------------------------------------------------
    def available_algorithms(self) -> list[str]:
        """The algorithms that can run on this communicator (``shm`` needs one node)."""
        return list(self._available)

    def set_table(self, table: Sequence[tuple[int, str]]) -> None:
        """Use ``table``'s algorithm for messages up to each size in bytes (the last beyond).

        ``table`` is ``[(max_bytes, name), ...]``; it must be the same on every rank (an
        operation whose algorithm differs across ranks fails on every rank with ValueError).
        """
        codes = _codes()
        for _, name in table:
            if name not in codes:
                raise ValueError(f"twinhpc.Engine: unknown algorithm {name!r}")
        self._engine().set_table([(int(b), codes[name]) for b, name in table])

    def table(self) -> list[tuple[int, str]]:
        """The algorithm per message size now in use (see :meth:`set_table`)."""
        names = list(_codes())
        return [(b, names[code]) for b, code in self._engine().table()]

    def cores_per_rank(self) -> float:
        """The CPU cores this node's ranks may run on (the union of their affinity masks),
        divided by the number of those ranks: what each rank has for its compute threads and
        the engine's thread. Collective over the communicator; may differ between nodes."""
        with self.region("cores per rank"):
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
            try:
                cores: set[int] = set().union(*node.allgather(sorted(os.sched_getaffinity(0))))
                return len(cores) / node.Get_size()
            finally:
                node.Free()

    # -- shared memory ------------------------------------------------------------------------
    def shared_buffer(self, nbytes: int) -> torch.Tensor:
        """A zero-filled uint8 CPU tensor of ``nbytes`` bytes in an MPI-3 shared-memory window.

        Collective: every rank calls it with the same sizes in the same order. An all-reduce of a
        tensor viewing this memory (``buf[a:b].view(dtype)``), at the same offset on every rank
        and without a wire cast or forced algorithm, is summed where it is: each rank sums its
        part of all ranks' buffers and writes the result into all of them, nothing is packed or
        copied (the traffic of one memcpy). The data-parallel front end keeps its gradient
        buckets here. When the ranks span several nodes it is an ordinary tensor (the all-reduce
        then runs in place with the table's algorithm).

        :meth:`close` frees the memory, unless some rank still holds the tensor or a view of it
        (decided collectively): then it stays mapped until the process ends.
        """
        if int(nbytes) < 0:
            raise ValueError(f"twinhpc.Engine.shared_buffer: negative size {nbytes}")
        with self.region("shared buffer"):
            return self._engine().shared_buffer(int(nbytes))

    # -- operations -----------------------------------------------------------------------------
    def allreduce_async_(
        self,
        t: torch.Tensor,
        op: str = "sum",
        wire_dtype: torch.dtype | None = None,
        name: str = "allreduce",
        algorithm: str | None = None,
    ) -> Handle[torch.Tensor]:
        """Enqueue an in-place all-reduce of ``t``; returns at once.

        Parameters
        ----------
        t : Tensor
            A contiguous CPU (or, when built with CUDA, CUDA) tensor of a supported dtype.
        op : {"sum", "avg"}
            Sum over the ranks, or the sum divided by the number of ranks (floating point only).
        wire_dtype : torch.dtype, optional
            Exchange the values as this floating-point dtype (e.g. ``torch.bfloat16``), cast back
            afterwards; default ``t.dtype``.
        name : str
            A label for stall and error messages (and the front end's timeline).
        algorithm : str, optional
            Force an algorithm for this operation (default: the engine's table by size).

        Returns
        -------
        Handle
            ``wait()`` returns ``t``.
        """
        self._check_tensor(t)
        return Handle(self._submit([t], op, wire_dtype, name, algorithm, blocking=False), t, self)

    def allreduce_(
        self,
        t: torch.Tensor,
        op: str = "sum",
        wire_dtype: torch.dtype | None = None,
        name: str = "allreduce",
        algorithm: str | None = None,
    ) -> torch.Tensor:
        """Blocking :meth:`allreduce_async_`; returns ``t`` holding the result.

        With nothing queued, the calling thread runs the operation itself (without the GIL),
        saving the two thread hand-offs of enqueue-and-wait.
        """
        return self.allreduce_here_(t, op, wire_dtype, name, algorithm).wait()

    def allreduce_here_(
        self,
        t: torch.Tensor,
        op: str = "sum",
        wire_dtype: torch.dtype | None = None,
        name: str = "allreduce",
        algorithm: str | None = None,
    ) -> Handle[torch.Tensor]:
        """:meth:`allreduce_`, returning the completed operation's :class:`Handle` (its
        ``timings()``) instead of ``t``: with nothing queued the calling thread runs it (without
        the GIL); otherwise it returns when the engine's thread has run it, after the queue."""
        self._check_tensor(t)
        with self.region(name):
            return Handle(self._submit([t], op, wire_dtype, name, algorithm, blocking=True), t, self)

    def allreduce_many_async_(
        self,
        tensors: Sequence[torch.Tensor],
        op: str = "sum",
        wire_dtype: torch.dtype | None = None,
        name: str | None = None,
        algorithm: str | None = None,
    ) -> Handle[list[torch.Tensor]]:
        """Enqueue one all-reduce of several tensors fused into one buffer; returns at once.

        The tensors (one dtype, one device, each contiguous) are packed in order into the
        engine's fusion buffer (cast to ``wire_dtype``), summed in one exchange, and unpacked
        back (cast back and, for ``avg``, scaled). ``wait()`` returns the list of tensors.
        """
        tensors = list(tensors)
        for t in tensors:
            self._check_tensor(t)
        return Handle(
            self._submit(tensors, op, wire_dtype, name or "allreduce_many", algorithm, blocking=False), tensors, self
        )

    def broadcast_async_(self, t: torch.Tensor, root: int = 0, name: str = "broadcast") -> Handle[torch.Tensor]:
        """Enqueue an in-place broadcast of ``t`` from rank ``root``; ``wait()`` returns ``t``."""
        self._check_tensor(t)
        return Handle(self._engine().broadcast(t, int(root), name, False), t, self)

    def broadcast_(self, t: torch.Tensor, root: int = 0, name: str = "broadcast") -> torch.Tensor:
        """Blocking :meth:`broadcast_async_`: every rank's ``t`` becomes rank ``root``'s."""
        self._check_tensor(t)
        with self.region(name):
            self._engine().broadcast(t, int(root), name, True).wait()
        return t

    def barrier(self, name: str = "barrier") -> None:
        """Block until every rank has reached this point of the queue."""
        with self.region(name):
            self._engine().barrier(name, True).wait()

    def close(self) -> None:
        """Finish the queued operations, stop the thread and free the communicators.

        Collective: every rank closes its engine (freeing the shared-memory windows and the
        communicators involves all ranks). Idempotent; engines still open at interpreter exit
        are closed then (before mpi4py finalises MPI).
        """
        if self._core is not None and not self._closed:
            self._closed = True
            with self.region("engine close"):
                self._core.close()
            if self._own_world:
                self.world.free()

    def region(self, name: str) -> Region:
        """A watched wait in the engine's World (see :meth:`World.region`): :attr:`stall_timeout`
        plus :data:`INSPECTOR_FIRST_S` (0: unwatched, as the inspector is off then)."""
        return self.world.region(name, self.stall_timeout + INSPECTOR_FIRST_S if self.stall_timeout > 0 else 0.0)

    def __del__(self) -> None:
        # The garbage collector runs at a different moment on every rank: no collective here.
        if self._core is None or self._closed:
            return
        try:
            warnings.warn(
                f"unclosed {self!r}: close it (or use `with Engine() as eng:`) on every rank; "
                f"collected unclosed, it frees only this process's resources, and its "
                f"communicators and shared memory stay allocated until MPI is finalised",
                ResourceWarning,
                stacklevel=1,  # the collector, not a caller, runs __del__
                source=self,
            )
        finally:  # also when warnings are errors
            self.abandon()

    def abandon(self) -> None:
        """Release only this process's resources, with no collective: for error paths on which the
        other ranks may never close theirs. Queued operations fail instead of running; the
        communicators and the shared memory stay allocated until MPI is finalised. Idempotent, and
        nothing to do after :meth:`close`."""
        if self._core is not None and not self._closed:
            self._closed = True
            self._core.abandon()  # without the GIL, unlike the core's destructor

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        where = f"rank {self.rank} of {self.size}" if self._core is not None else "not started"
        return f"<twinhpc.Engine {where}, algorithm {getattr(self, 'algorithm', '?')!r}, {state}>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------------
    def _engine(self) -> _C.Engine:
        """The compiled engine (it refuses work once closed)."""
        assert self._core is not None, "Engine.__init__ failed"
        return self._core

    @staticmethod
    def _check_tensor(t: object) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"twinhpc.Engine: expected a torch.Tensor, got {type(t).__name__}")

    def _submit(
        self,
        tensors: list[torch.Tensor],
        op: str,
        wire_dtype: torch.dtype | None,
        name: str,
        algorithm: str | None,
        blocking: bool,
    ) -> _C.Work:
        if op not in OPS:
            raise ValueError(f"twinhpc.Engine: op must be one of {OPS}, not {op!r}")
        codes = _codes()
        if algorithm is not None and algorithm not in codes:
            raise ValueError(f"twinhpc.Engine: unknown algorithm {algorithm!r} (expected one of {', '.join(codes)})")
        code = None if algorithm is None else codes[algorithm]
        return self._engine().allreduce(tensors, op == "avg", wire_dtype, name, code, blocking)


#: the engines of this process by creation number, held weakly; those still open at exit are closed
#: then (before mpi4py's own exit handler finalises MPI), the newest first, so that every rank
#: closes them in one order
_live: weakref.WeakValueDictionary[int, Engine] = weakref.WeakValueDictionary()
_serials = itertools.count()


@atexit.register
def _close_all() -> None:
    for serial in sorted(_live, reverse=True):
        engine = _live.get(serial)
        if engine is not None:
            engine.close()
