"""Run pytest on every rank of an ``mpirun`` job (``mpirun -n N python tests/run_mpi.py ARGS``).

Rank 0 prints pytest's normal output and writes ``--junitxml`` when given; the other ranks run
quietly and write their whole output to ``<results>/mpi-n<N>-rank<r>.log`` so one screen is not
N interleaved copies. Test bodies agree on pass/fail across ranks (tests/mpi/collective.py), so
rank 0's report is the job's report. Any rank's non-zero exit makes mpirun end the job.
"""

import os
import sys

import pytest


def main() -> int:
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
    args = sys.argv[1:]
    results = os.environ.get("TWINHPC_TEST_RESULTS", "build/test-results")
    if rank != 0:
        args = [a for a in args if not a.startswith("--junitxml")]
        os.makedirs(results, exist_ok=True)
        log = open(os.path.join(results, f"mpi-n{size}-rank{rank}.log"), "w")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main())
