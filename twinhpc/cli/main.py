"""``twinhpc`` command line: argument parsing and printing only.

Each verb lives in its own module ``twinhpc/cli/<verb>.py`` with two functions::

    add_parser(subparsers) -> argparse.ArgumentParser   # declares the verb and its options
    run(args) -> int                                     # does it; returns the exit status

A :class:`~twinhpc.errors.TwinError` becomes one line ``twinhpc <verb>: error: ...`` on stderr
(on every rank, prefixed with the rank under MPI) and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import TwinError

#: verb -> module in twinhpc.cli
VERBS = ("info", "ingest", "inspect", "verify", "preprocess", "train", "validate", "predict", "report", "bench")

EPILOG = """\
Run any verb under MPI as `mpirun -n N twinhpc VERB ...` or `srun twinhpc VERB ...`; rank 0
prints, every rank logs to its own file under --log-dir. `twinhpc VERB --help` explains a verb.
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
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..comm.watchdog import enable_exit_barrier

    enable_exit_barrier()  # under MPI the ranks leave together, or the job aborts within stall_timeout
    try:
        return int(args._run(args) or 0)
    except TwinError as e:
        rank = env_rank()
        prefix = f"[rank {rank}] " if "OMPI_COMM_WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ else ""
        print(f"{prefix}twinhpc {args.verb}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
