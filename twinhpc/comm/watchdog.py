"""Bounded waits: every collective a rank waits in is watched, and a wait that outlasts the stall
timeout ends the job with one line naming the ranks that did not arrive.

Every blocking collective of :class:`~twinhpc.comm.world.World` and every wait on the all-reduce
engine (:class:`~twinhpc.comm.engine.Engine`) runs inside a *region*: the waiting thread says
which collective it waits in (its number on that communicator, the same on every rank, and a
name) and since when. One watchdog thread per process looks at the open regions ten times a
second; when one has lasted ``stall_timeout`` seconds it prints ::

    twinhpc watchdog: rank 1 has waited 5.0 s (stall_timeout 5.0 s) in collective #37
    'validation: rows' for rank 0 (not responding for 5.3 s: stopped or hung; last entered #36
    'step loss'); aborting the job (MPI_Abort)

(one line) and calls ``MPI_Abort`` on ``COMM_WORLD`` (exit status 70), which ends the job under
``mpirun`` and ``srun``. Every rank watches its own waits, so a stopped or dead rank 0 is caught
by the others like any rank.

The arrival board:
    To name the ranks that have not arrived without their help, the ranks of a node share an
    MPI-3 shared-memory window (``MPI_Win_allocate_shared`` over ``COMM_TYPE_SHARED``), one
    record per rank: the number and name of the last collective it entered, whether it is inside
    it, since when, whether it is exiting, and a heartbeat the watchdog thread writes each tick
    (``CLOCK_MONOTONIC``, which all processes of a node share). A rank is *missing* from
    collective #k when its last collective is below k, or is #k under another name (the ranks
    disagree about the order of their collectives). Across nodes the board of each node shows
    only that node's ranks: the line then names the missing ranks of this node and counts the
    ranks on other nodes it cannot see; it still aborts on time. A board that cannot be created
    leaves only the bound (the line then names no ranks).

Exiting ranks:
    A rank whose process exits (after an error that only it raised, say) marks itself exiting on
    the board. A rank waiting for a missing rank that is exiting aborts at once instead of after
    the timeout: the exiting rank will never join. The ``twinhpc`` command line also makes exit a
    watched barrier (:func:`enable_exit_barrier`), so that no rank waits without bound in
    ``MPI_Finalize`` for a rank stopped after the last collective.

Test hook:
    ``TWINHPC_FAULT=RANK:POINT:ACTION[:N]`` makes rank RANK, the N-th time (default 1) it passes
    :func:`fault_point` ``POINT``, ``stop`` (SIGSTOP itself), ``hold`` (SIGSTOP itself and, once
    continued, wait until the process has received a stop signal, SIGUSR2 or SIGTERM: at most
    :data:`HOLD_S` seconds), ``kill`` (SIGKILL itself) or ``raise`` (a
    :class:`~twinhpc.errors.TwinError`), after printing one line saying so. ``hold`` makes a
    signal land at that point whatever order it and a SIGCONT arrive in (Slurm sends SIGCONT
    before SIGTERM, and the rest of a short run can finish in between). Points:
    ``step`` (before a step's gradient all-reduce), ``step_loss`` (before the per-step loss
    reduction), ``validation`` (before validation's rows are gathered), ``checkpoint`` (after
    the RNG states are gathered, before rank 0 writes). For fault-injection tests only.

Note:
    Every rank must enter the same collectives in the same order (the rule every MPI program
    follows); the numbers on the board rely on it. The board is written without locks and read
    while other ranks write it: it is for naming, never for deciding whether to abort (only the
    local wait's length and the "exiting" mark do that).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TwinError

if TYPE_CHECKING:
    from mpi4py import MPI

log = logging.getLogger("twinhpc")

#: seconds between the watchdog's looks at the open regions (and heartbeats)
TICK_S = 0.1
#: a heartbeat older than this says the rank's process is not running (stopped, or a C call
#: holding the GIL that long)
STALE_S = 2.0
#: exit status of an abort by the watchdog (the engine's stall inspector uses the same)
ABORT_STATUS = 70
#: seconds after ``MPI_Abort`` at which the process ends itself if it still runs
ABORT_GRACE_S = 10.0
#: the test hook's environment variable
FAULT_ENV = "TWINHPC_FAULT"
#: the points :func:`fault_point` is called at
FAULT_POINTS = ("step", "step_loss", "validation", "checkpoint")
FAULT_ACTIONS = ("stop", "hold", "kill", "raise")
#: the longest a ``hold`` fault waits for a stop signal once continued
HOLD_S = 120.0

# one record per rank of a node on the board
RECORD = np.dtype(
    [
        ("rank", np.int64),  # the rank in the World's communicator
        ("seq", np.int64),  # number of the last collective entered (0: none)
        ("inside", np.int64),  # 1 while waiting in it
        ("exiting", np.int64),  # 1 once the process is exiting
        ("since", np.float64),  # monotonic time of entering or leaving it
        ("beat", np.float64),  # monotonic time of the watchdog's last tick
        ("name", "S80"),  # the collective's name (truncated)
    ]
)


class Board:
    """The arrival board of one communicator's ranks on this node (see the module's notes).

    Collective over ``comm`` (creates a node communicator and a shared window).
    """

    def __init__(self, comm: MPI.Intracomm):
        from mpi4py import MPI

        self.node: MPI.Intracomm = comm.Split_type(MPI.COMM_TYPE_SHARED)  # type: ignore[assignment]
        n, me = self.node.Get_size(), self.node.Get_rank()
        self.win = MPI.Win.Allocate_shared(RECORD.itemsize * n if me == 0 else 0, RECORD.itemsize, comm=self.node)
        buf, _ = self.win.Shared_query(0)
        self.records = np.ndarray((n,), dtype=RECORD, buffer=buf)  # type: ignore[arg-type]
        self.mine = self.records[me : me + 1]  # a view of this rank's record
        # one view per field of it: writing through these is several times faster
        self._seq, self._inside, self._since, self._name = (self.mine[k] for k in ("seq", "inside", "since", "name"))
        self.unseen = comm.Get_size() - n  # ranks on other nodes
        self.lock = threading.Lock()  # the window outlives no access: free() takes it too
        now = time.monotonic()
        self.mine[0] = (comm.Get_rank(), 0, 0, 0, now, now, b"")
        self.node.Barrier()  # every record is initialised before anyone reads one

    def enter(self, seq: int, name: str) -> None:
        with self.lock:
            if self._seq.size:  # not freed
                self._name[0] = name.encode()[:80]
                self._since[0] = time.monotonic()
                self._inside[0] = 1
                self._seq[0] = seq

    def leave(self) -> None:
        with self.lock:
            if self._seq.size:
                self._inside[0] = 0
                self._since[0] = time.monotonic()

    def beat(self, now: float) -> None:
        with self.lock:
            self.mine["beat"] = now

    def mark_exiting(self) -> None:
        with self.lock:
            self.mine["exiting"] = 1

    def exiting(self) -> bool:
        """Whether this process marked itself exiting."""
        with self.lock:
            return bool(self.mine["exiting"].any())

    def snapshot(self) -> list[dict[str, Any]]:
        """Every record of the node as a dict (``name`` decoded); empty once freed."""
        with self.lock:
            rows = self.records.copy()
        return [
            {k: (rows[k][i].decode(errors="replace") if k == "name" else rows[k][i].item()) for k in RECORD.names or ()}
            for i in range(len(rows))
        ]

    def free(self) -> None:
        """Collective over the node: release the window and the node communicator."""
        with self.lock:  # not held across the collective below: the watchdog must keep running
            self.records = self.mine = np.zeros(0, RECORD)  # no view of the window survives it
            self._seq, self._inside, self._since, self._name = (
                self.mine[k] for k in ("seq", "inside", "since", "name")
            )
        self.win.Free()
        self.node.Free()


@dataclass(eq=False, slots=True)
class Wait:
    """One thread waiting in one collective (a region)."""

    rank: int  # this process's rank in the communicator
    size: int  # ranks of the communicator
    seq: int  # the collective's number on the communicator (0: before the board exists)
    name: str
    timeout: float  # seconds; <= 0: no bound
    board: Board | None
    start: float = field(default_factory=time.monotonic)
    handling: str | None = None  # the exception the thread was handling when it entered


class Watchdog:
    """The process's watchdog thread and the regions it watches (use :data:`watchdog`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: dict[int, list[Wait]] = {}  # thread id -> its open regions, innermost last
        self._boards: list[Board] = []  # boards whose heartbeat this process writes
        self._thread: threading.Thread | None = None
        self._fired = False

    # -- regions ------------------------------------------------------------------------------
    def watch(self, wait: Wait) -> None:
        """Open a region on the calling thread."""
        with self._lock:
            self._waits.setdefault(threading.get_ident(), []).append(wait)
            self._start()

    def unwatch(self, wait: Wait) -> None:
        """Close the calling thread's region ``wait``."""
        with self._lock:
            stack = self._waits.get(threading.get_ident(), [])
            if wait in stack:
                stack.remove(wait)
            if not stack:
                self._waits.pop(threading.get_ident(), None)

    def add_board(self, board: Board) -> None:
        """Write this process's heartbeat on ``board`` from now on."""
        with self._lock:
            self._boards.append(board)
            self._start()

    def remove_board(self, board: Board) -> None:
        with self._lock:
            if board in self._boards:
                self._boards.remove(board)

    def mark_exiting(self) -> None:
        """Mark this process exiting on every board it writes."""
        with self._lock:
            for board in self._boards:
                board.mark_exiting()

    # -- the thread -----------------------------------------------------------------------------
    def _start(self) -> None:  # with the lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="twinhpc-watchdog", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(TICK_S)
            now = time.monotonic()
            with self._lock:
                for board in self._boards:
                    board.beat(now)
                waits = [w for stack in self._waits.values() for w in stack]
            for w in waits:
                reason = self.check(w, now)
                if reason is not None:
                    self.fire(reason)
                    return

    def check(self, w: Wait, now: float) -> str | None:
        """The line to abort with when ``w`` must end the job now, else ``None``."""
        if w.timeout <= 0:
            return None
        waited = now - w.start
        missing = missing_ranks(w, w.board.snapshot()) if w.board is not None else []
        exiting = [r for r in missing if r["exiting"]]
        if exiting and w.board is not None and not w.board.exiting():
            who = ", ".join(str(r["rank"]) for r in exiting)
            return (
                f"twinhpc watchdog: rank {w.rank} waits in collective #{w.seq} {w.name!r} for "
                f"{_ranks(exiting)} {who}, which {'is' if len(exiting) == 1 else 'are'} exiting without it "
                f"(see the error above){_handling(w)}; aborting the job (MPI_Abort)"
            )
        if waited < w.timeout:
            return None
        return (
            f"twinhpc watchdog: rank {w.rank} has waited {waited:.1f} s (stall_timeout {w.timeout:g} s) in "
            f"collective #{w.seq} {w.name!r} {describe_missing(w, missing, now)}{_handling(w)}; "
            f"aborting the job (MPI_Abort)"
        )

    def fire(self, line: str) -> None:
        """Print ``line`` on stderr (and in the log), then abort the job."""
        if self._fired:
            return
        self._fired = True
        try:
            os.write(2, (line + "\n").encode())
        except OSError:
            pass
        # if MPI_Abort itself does not end the process, end it anyway
        timer = threading.Timer(ABORT_GRACE_S, os._exit, (ABORT_STATUS,))
        timer.daemon = True
        timer.start()
        try:
            for handler in log.handlers:  # the rank's log file, not the console again
                if isinstance(handler, logging.FileHandler):
                    handler.handle(log.makeRecord(log.name, logging.CRITICAL, __file__, 0, line, (), None))
        except Exception:
            pass
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(ABORT_STATUS)


#: the watchdog of this process
watchdog = Watchdog()


def missing_ranks(w: Wait, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the ranks (of this node) that have not arrived at ``w``'s collective."""
    return [
        r
        for r in records
        if r["rank"] != w.rank and not (r["seq"] > w.seq or (r["seq"] == w.seq and r["name"] == w.name[:80]))
    ]


def describe_missing(w: Wait, missing: list[dict[str, Any]], now: float) -> str:
    """``for rank 0 (not responding ...)``, or what is known when no rank is missing here."""
    if w.board is None:
        return "(which ranks have not arrived is unknown: no arrival board)"
    unseen = f"; {w.board.unseen} rank(s) on other nodes not visible here" if w.board.unseen else ""
    if not missing:
        stale = [r["rank"] for r in w.board.snapshot() if r["rank"] != w.rank and now - r["beat"] > STALE_S]
        here = "every rank on this node has entered it" + (
            f"; not responding: {', '.join(map(str, stale))}" if stale else ""
        )
        return f"({here}{unseen})"
    parts = []
    for r in missing:
        if now - r["beat"] > STALE_S:
            state = f"not responding for {now - r['beat']:.1f} s: stopped or hung"
        elif r["exiting"]:
            state = "exiting"
        elif r["inside"]:
            state = f"alive, waiting in #{r['seq']} {r['name']!r}"
        else:
            state = f"alive, outside collectives for {now - r['since']:.1f} s"
        last = f"; last entered #{r['seq']} {r['name']!r}" if r["seq"] and not r["inside"] else ""
        parts.append(f"rank {r['rank']}: {state}{last}")
    who = ", ".join(str(r["rank"]) for r in missing)
    return f"for {_ranks(missing)} {who} ({'; '.join(parts)}{unseen})"


def _ranks(items: list[Any]) -> str:
    return "rank" if len(items) == 1 else "ranks"


def _handling(w: Wait) -> str:
    return f" (entered while handling {w.handling})" if w.handling else ""


# -- leaving the process ----------------------------------------------------------------------
_exit_barrier = False
_exit_world: Any = None  # the World whose barrier ends the process (over COMM_WORLD)


def enable_exit_barrier() -> None:
    """Make the process's exit a watched barrier over ``COMM_WORLD`` (the command line does):
    no rank then waits without bound in ``MPI_Finalize`` for a rank that stopped after the last
    collective. Only for programs whose ranks all exit soon after their last collective."""
    global _exit_barrier
    _exit_barrier = True


def register_exit(world: Any) -> None:
    """Called once by the first World over ``COMM_WORLD`` that creates a board (the same on every
    rank): at exit, mark the process exiting and, if enabled, pass a watched barrier."""
    global _exit_world
    if _exit_world is None:
        _exit_world = world
        atexit.register(_at_exit)  # after mpi4py's import: runs before MPI_Finalize (Py_AtExit)


def _at_exit() -> None:
    watchdog.mark_exiting()
    if _exit_barrier and _exit_world is not None:
        try:
            _exit_world.barrier(name="exit")
        except Exception:  # MPI is gone or broken: nothing left to wait for
            pass


# -- the test hook ----------------------------------------------------------------------------
@dataclass
class _Fault:
    rank: int
    point: str
    action: str
    nth: int
    seen: int = 0


_fault: _Fault | None = None
_fault_read = False


def _parse_fault(text: str) -> _Fault:
    parts = text.split(":")
    try:
        rank, point, action = int(parts[0]), parts[1], parts[2]
        nth = int(parts[3]) if len(parts) > 3 else 1
        if len(parts) > 4 or point not in FAULT_POINTS or action not in FAULT_ACTIONS or rank < 0 or nth < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise TwinError(
            f"${FAULT_ENV}: expected RANK:POINT:ACTION[:N] with POINT one of {', '.join(FAULT_POINTS)} and "
            f"ACTION one of {', '.join(FAULT_ACTIONS)}, got {text!r}"
        ) from None
    return _Fault(rank, point, action, nth)


def _my_rank() -> int:
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        rank: int = mpi.COMM_WORLD.Get_rank()
        return rank
    return 0


def fault_point(point: str) -> None:
    """Test hook: act as ``$TWINHPC_FAULT`` says when this rank reaches ``point`` (see the module's
    notes); nothing when it is unset."""
    global _fault, _fault_read
    if not _fault_read:
        text = os.environ.get(FAULT_ENV, "").strip()
        _fault, _fault_read = (_parse_fault(text) if text else None), True
    f = _fault
    if f is None or f.point != point or f.rank != _my_rank():
        return
    f.seen += 1
    if f.seen != f.nth:
        return
    os.write(2, f"twinhpc: {FAULT_ENV}: rank {f.rank} {f.action}s at {point!r} (pass {f.nth})\n".encode())
    if f.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif f.action == "raise":
        raise TwinError(f"injected fault at {point!r} on rank {f.rank} (${FAULT_ENV})")
    os.kill(os.getpid(), signal.SIGSTOP)
    if f.action == "hold":
        from .. import signals

        deadline = time.monotonic() + HOLD_S
        while signals.received() is None and time.monotonic() < deadline:
            time.sleep(0.01)
