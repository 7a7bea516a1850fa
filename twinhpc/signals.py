"""SIGUSR2 / SIGTERM: recorded for the whole process, acted on where it is safe.

Slurm sends ``SIGUSR2`` some time before a job's time limit (``--signal=USR2@<seconds>``) and
``SIGTERM`` when it preempts, requeues or cancels a job. Python's default for both is to die at
once (exit status 140 or 143 under Slurm, the job ``FAILED``), wherever the process is: half way
through a checkpoint, an MPI collective, or the report of a run whose training completed.

So every ``twinhpc`` verb records them instead (:func:`install`, called by the command line
before a verb starts) and decides at a safe point what to do (``twinhpc/cli/main.py`` lists
what each verb does): ``train`` checkpoints after the next step and exits with
:data:`REQUEUE_EXIT_STATUS` (:mod:`twinhpc.train.signals`); the short verbs finish their work.

::

    signals.install()        # main thread, at the start of the command: handlers that set a flag
    ...                      # the verb works; signals.received() says whether one arrived
    signals.restore()        # the handlers that were there before

The handler only records the signal number: it runs between two bytecodes of the main thread,
which may be inside an MPI call, a logging call or an HDF5 write, where doing anything else
could deadlock or leave a half-written file.

This module imports nothing beyond the standard library, so the command line installs the
handlers before it imports torch or MPI (a signal during those imports is recorded too).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

#: exit status of a command that stopped on a signal and wants its batch job requeued (submitit's)
REQUEUE_EXIT_STATUS = 255
#: the signals recorded
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

_state: dict[str, Any] = {"received": None, "previous": {}}


def _handle(signum: int, frame: object) -> None:  # only records: see the module note
    _state["received"] = signum


def install() -> bool:
    """Record :data:`SIGNALS` from now on (clearing any earlier record); returns False, and does
    nothing, outside the main thread (Python delivers signals to the main thread only) or when
    the handlers are installed already."""
    if threading.current_thread() is not threading.main_thread() or installed():
        return False
    _state["received"] = None
    _state["previous"] = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    return True


def installed() -> bool:
    """Whether :func:`install`'s handlers are in place."""
    return bool(_state["previous"])


def received() -> int | None:
    """The number of the last signal recorded since :func:`install`, or None."""
    value: int | None = _state["received"]
    return value


def name(signum: int | None) -> str:
    """``"SIGUSR2"`` for a signal number (``"no signal"`` for None)."""
    return "no signal" if signum is None else signal.Signals(signum).name


def ignore() -> None:
    """Ignore :data:`SIGNALS` from now on (the command has done its work and chosen its exit
    status). Unlike a Python handler, which the interpreter takes out while it shuts down, an
    ignored signal stays ignored until the process has exited."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def restore() -> None:
    """Put back the handlers that were there before :func:`install` (from the main thread)."""
    for sig, handler in _state["previous"].items():
        signal.signal(sig, handler)
    _state["previous"] = {}
