"""``twinhpc`` command line: argument parsing and printing only.

Each verb lives in its own module ``twinhpc/cli/<verb>.py`` with two functions::

    add_parser(subparsers) -> argparse.ArgumentParser   # declares the verb and its options
    run(args) -> int                                     # does it; returns the exit status

A :class:`~twinhpc.errors.TwinError` becomes one line ``twinhpc <verb>: error: ...`` on stderr
(on every rank, prefixed with the rank under MPI) and exit status 2.

SIGUSR2 and SIGTERM (what Slurm sends before a time limit and when it preempts or requeues a
job) are recorded from the moment the command starts, for every verb (:mod:`twinhpc.signals`),
and never kill a verb half way; :data:`ON_SIGNAL` says what each verb does then:

- ``train`` checkpoints after the next step and exits with status 255 (the batch script of
  ``twinhpc sbatch`` requeues the job on it); a signal after the last step changes nothing:
  the run is complete and ``train`` exits 0.
- ``preprocess`` finishes (it writes its dataset whole or not at all) and then exits 255, so a
  batch job requeues before training starts rather than train into its time limit unwarned; run
  again, it finds the dataset up to date.
- every other verb (``validate``, ``predict``, ``report``, ``ingest`` ...) finishes its work and
  exits as it would have; a note on stderr says that the signal arrived.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from .. import __version__, signals
from ..errors import TwinError

#: verb -> module in twinhpc.cli
VERBS = (
    "info",
    "ingest",
    "simulate",
    "inspect",
    "verify",
    "preprocess",
    "train",
    "validate",
    "predict",
    "twin",
    "report",
    "sbatch",
    "submit",
    "jobs",
    "tune",
    "sweep",
    "bench",
)

#: what a verb does when SIGUSR2 or SIGTERM arrives (any verb not named: "finish")
ON_SIGNAL = {"train": "checkpoint", "preprocess": "finish, then requeue"}

EPILOG = """\
Run any verb under MPI as `mpirun -n N twinhpc VERB ...` or `srun twinhpc VERB ...`; rank 0
prints, every rank logs to its own file under --log-dir. `twinhpc VERB --help` explains a verb.

SIGUSR2/SIGTERM (Slurm's warning before a time limit, preemption, requeue) never kill a verb
half way: `train` checkpoints after the next step and exits 255 (requeue me); `preprocess`
finishes, then exits 255; the other verbs finish and exit as usual. `twinhpc sbatch` writes a
batch script that acts on these statuses.
"""


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 outside MPI), without MPI."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinhpc",
        description="twinhpc: sharded HDF5 datasets, MPI-parallel ingest and loading, and "
        "digital-twin training on MPI/Slurm clusters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twinhpc {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        mod = importlib.import_module(f"{__package__}.{verb}")
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every verb has: logging."""
    g = p.add_argument_group("logging")
    g.add_argument(
        "--log-dir",
        default=os.environ.get("TWINHPC_LOG_DIR"),
        help="write one log file per rank here (default: $TWINHPC_LOG_DIR, else none)",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="debug messages on the console")


def add_checkpoint_choice(p: argparse.ArgumentParser) -> None:
    """``--run RUN`` and ``--checkpoint best|last|PATH``: which trained model a verb reads."""
    p.add_argument("--run", metavar="RUN", help="run directory of `twinhpc train` (default: the job's train.out)")
    p.add_argument(
        "--checkpoint",
        metavar="best|last|PATH",
        help="RUN's newest checkpoint (last, the default), its best epoch's (best: train.keep_best), "
        "or a checkpoint file",
    )


def add_overrides(p: argparse.ArgumentParser, example: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable): overrides of the job file, for the verbs that read one;
    ``example`` (``"optim.lr=0.01"``) is shown in the help."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a job-file key{f', e.g. --set {example}' if example else ''} (repeatable)",
    )


def setup_logging_for(args, world) -> None:
    from ..log import setup_logging

    setup_logging(
        world.rank, getattr(args, "log_dir", None), name=f"twinhpc-{args.verb}", verbose=getattr(args, "verbose", False)
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    The SIGUSR2/SIGTERM handlers go in first (see the module note). As the command (``argv``
    None), once the verb has returned and its exit status is chosen, the signals are ignored
    until the process has exited: the interpreter takes Python's handlers out while it shuts
    down, and a signal then would kill a command that has done its work. Called with an
    argument list (a program, a test) the earlier handlers are put back on return."""
    installed = signals.install()  # before anything slow: a signal from now on is only recorded
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if argv is None:  # the command: under MPI its ranks leave together, or the job aborts
            from ..comm.watchdog import enable_exit_barrier

            enable_exit_barrier()
        return after_signal(args.verb, int(args._run(args) or 0))
    except TwinError as e:
        rank = env_rank()
        prefix = f"[rank {rank}] " if "OMPI_COMM_WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ else ""
        print(f"{prefix}twinhpc {args.verb}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `twinhpc ... | head`: the reader left; nothing more to print
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    finally:
        if installed and argv is not None:
            signals.restore()
        elif installed:
            signals.ignore()


def after_signal(verb: str, status: int) -> int:
    """The exit status of ``verb``, which returned ``status``, given the signal recorded while it
    ran (:data:`ON_SIGNAL`); rank 0 notes on stderr what the signal changed."""
    sig = signals.received()
    if sig is None:
        return status
    policy, what = ON_SIGNAL.get(verb, "finish"), signals.name(sig)
    if policy == "checkpoint":  # train: 255 after a checkpoint, or 0 when it came after the last step
        note = (
            f"{what} received: the run stopped after a checkpoint; exit status {status} asks for a requeue"
            if status == signals.REQUEUE_EXIT_STATUS
            else f"{what} received after the last training step: the run is complete"
        )
    elif policy == "finish, then requeue" and status == 0:
        status = signals.REQUEUE_EXIT_STATUS
        note = f"{what} received: finished first; exit status {status} asks for a requeue before the next step"
    else:
        note = f"{what} received: finished first"
    if env_rank() == 0:
        print(f"twinhpc {verb}: {note}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
