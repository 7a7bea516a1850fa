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

    *The exit status.* :data:`REQUEUE_EXIT_STATUS` is 255, what a submitit job exits with after
    it has asked Slurm to requeue it (``sys.exit(-1)`` in submitit's signal handler). A batch
    script requeues the job on it::

        #SBATCH --signal=USR2@120 --requeue --open-mode=append
        srun twinhpc train job.toml --resume
        if [ $? -eq 255 ]; then scontrol requeue "$SLURM_JOB_ID"; fi

    or the cluster lists 255 in slurm.conf's ``RequeueExit``. ``--resume`` on the first run,
    when there is no checkpoint yet, starts from scratch, so the same line serves every run.
    Under ``mpirun`` send the signal to ``mpirun`` (it forwards SIGUSR1/SIGUSR2 to the ranks);
    SIGTERM to ``mpirun`` kills the ranks after a short grace period, so use SIGUSR2 there.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("twinhpc")

#: exit status of a run that checkpointed on a signal and wants to be requeued (submitit's)
REQUEUE_EXIT_STATUS = 255
#: the signals that ask for a checkpoint and a requeue
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopSignal:
    """Records SIGUSR2 / SIGTERM; the loop asks :attr:`received` at step boundaries."""

    def __init__(self):
        self.received: int | None = None  # the signal number, once one arrived
        self._previous: dict[int, object] = {}

    @classmethod
    def install(cls) -> StopSignal:
        """Install the handler for :data:`SIGNALS` (from the main thread; elsewhere, a
        :class:`StopSignal` that never fires is returned, with a debug message)."""
        stop = cls()
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: SIGUSR2/SIGTERM are not handled by the training loop")
            return stop
        for sig in SIGNALS:
            stop._previous[sig] = signal.signal(sig, stop._handle)
        return stop

    def _handle(self, signum, frame) -> None:  # only sets the flag: see the module note
        self.received = signum

    def restore(self) -> None:
        """Put back the handlers that were installed before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
