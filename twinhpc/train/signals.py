"""Pre-emption: SIGUSR2 / SIGTERM ask the training loop to checkpoint and exit for a requeue.

::

    stop = StopSignal.install()          # main thread, before the loop
    ...                                  # every step: stop.received goes into the step's allreduce
    if any rank's flag is set:           # all ranks see the same sum after the same step
        save checkpoint; return "preempted"   # at the end of the step in which the sum is seen
    stop.restore()

The command then exits with :data:`REQUEUE_EXIT_STATUS`.

Note:
    *The handler only sets a flag.* A Python signal handler runs between two bytecodes of the
    main thread: inside a backward pass, an optimizer step, a half-written HDF5 file or an MPI
    collective. Writing a checkpoint there would save a half-updated model or deadlock the
    collective the other ranks are in. So the handler records the signal, and the loop looks at
    the flag at a step boundary, where model, optimizer, loader and RNG states belong to one
    step. (The loop reads a step's scalars, the flag among them, during the next step, so the
    checkpoint comes at the end of the step after the one in which the signal arrived: one
    step later than the signal, never in the middle of one.)

    *Every rank must agree.* Slurm signals all tasks, but not at the same instant, and
    ``mpirun`` forwards a signal to the ranks one by one; a rank that checkpointed and left while
    another started the next step would hang the job. The flag is therefore combined over the
    ranks with one small all-reduce per optimizer step (summed, in
    :func:`~twinhpc.train.run.step_allreduce` together with the step's loss), and all ranks stop
    after the same step.

    *Since the command started.* :mod:`twinhpc.signals` records the signals for the whole
    process; the command line installs its handlers before a verb starts, so a signal that
    arrives while the data, the model or MPI are being set up stops the run after its first
    steps, with a checkpoint, instead of killing it. A signal that arrives after the last step
    changes nothing: the run is complete, its report is written and ``train`` exits 0.

    *The exit status.* :data:`REQUEUE_EXIT_STATUS` is 255, what a submitit job exits with after
    it has asked Slurm to requeue it (``sys.exit(-1)`` in submitit's signal handler). The batch
    script of ``twinhpc sbatch`` (:mod:`twinhpc.batch`) requeues the job on it::

        #SBATCH --signal=USR2@120 --requeue --open-mode=append
        srun twinhpc train job.toml --out RUN [--resume on a restart]
        if [ $? -eq 255 ]; then scontrol requeue "$SLURM_JOB_ID"; fi

    or the cluster lists 255 in slurm.conf's ``RequeueExit``. Under ``mpirun`` send the signal
    to ``mpirun`` (it forwards SIGUSR1/SIGUSR2 to the ranks); SIGTERM to ``mpirun`` kills the
    ranks after a short grace period, so use SIGUSR2 there.
"""

from __future__ import annotations

import logging

from .. import signals
from ..signals import REQUEUE_EXIT_STATUS, SIGNALS

log = logging.getLogger("twinhpc")

__all__ = ["REQUEUE_EXIT_STATUS", "SIGNALS", "StopSignal"]


class StopSignal:
    """The training loop's view of SIGUSR2 / SIGTERM (:mod:`twinhpc.signals` records them for
    the process); the loop asks :attr:`received` at step boundaries."""

    def __init__(self):
        self._owner = False  # whether install() put the handlers in (and restore() takes them out)
        self._active = False

    @classmethod
    def install(cls) -> StopSignal:
        """The process's record of :data:`SIGNALS`. Under the command line the handlers are in
        place since the command started, so a signal that arrived during set-up counts; a
        program calling :func:`~twinhpc.train.train` gets them installed here (a fresh record)
        and taken out by :meth:`restore`. Outside the main thread, where Python delivers no
        signals, nothing is installed (a debug message says so)."""
        stop = cls()
        stop._owner = signals.install()
        stop._active = signals.installed()
        if not stop._active:
            log.debug("not in the main thread: SIGUSR2/SIGTERM are not handled by the training loop")
        return stop

    @property
    def received(self) -> int | None:
        """The signal number, once one arrived (None for a StopSignal never installed)."""
        return signals.received() if self._active else None

    def restore(self) -> None:
        """Take out the handlers :meth:`install` put in (those of the command line stay)."""
        if self._owner:
            signals.restore()
        self._owner = self._active = False
