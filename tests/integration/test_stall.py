"""A rank that never arrives, or dies, ends the whole job with a non-zero status (never a hang).

Each test starts its own ``mpirun -n 2`` job in a subprocess; rank 0 prints the monotonic time
at which it starts waiting, so the tests measure how long the job took to end after that.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from twinhpc import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if not ops.available():
    pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)
if shutil.which("mpirun") is None:
    pytest.skip("mpirun not found", allow_module_level=True)

PRELUDE = """
import os, sys, time, torch
from twinhpc.comm.engine import Engine
eng = Engine(stall_timeout={timeout}, algorithm="mpi")
eng.allreduce_(torch.ones(4), name="first")
if eng.rank == 0:
    print("WAITING", time.monotonic(), flush=True)
"""


def run_job(body: str, timeout_s: float, stall_timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run PRELUDE + body on 2 ranks; return the process and seconds from rank 0's wait to the end."""
    script = textwrap.dedent(PRELUDE.format(timeout=stall_timeout)) + textwrap.dedent(body)
    # A fresh job: no MPI variables inherited from a pytest process that is itself an MPI rank.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "ORTE_", "HYDRA_", "PMI_"))}
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        PYTHONPATH=ROOT,
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        ["mpirun", "-n", "2", sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    end = time.monotonic()
    waiting = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("WAITING")]
    assert waiting, f"rank 0 never started waiting:\n{proc.stdout}\n{proc.stderr}"
    return proc, end - waiting[0]


def test_a_rank_that_does_not_arrive_is_named_and_the_job_aborts():
    proc, after = run_job(
        """
        if eng.rank == 1:
            time.sleep(120)
        eng.allreduce_(torch.ones(4), name="late")
    """,
        timeout_s=150,
        stall_timeout=2.0,
    )
    assert proc.returncode != 0
    assert "collective #1 'late'" in proc.stderr and "missing ranks: [1]" in proc.stderr, proc.stderr
    assert after < 20, f"the job took {after:.1f} s to end after rank 0 started waiting"


def test_a_rank_that_dies_ends_the_job():
    proc, after = run_job(
        """
        if eng.rank == 1:
            os._exit(3)
        eng.allreduce_(torch.ones(4), name="orphaned")
    """,
        timeout_s=150,
        stall_timeout=0,
    )
    assert proc.returncode != 0
    assert after < 60, f"the job took {after:.1f} s to end after rank 1 died"


def test_thousands_of_quick_operations_are_not_a_stall():
    """Rank 0 must keep up with every rank's arrivals, else its view lags into a false stall."""
    proc, _ = run_job(
        """
        t = torch.ones(16)
        end = time.monotonic() + 3
        while eng.comm.bcast(time.monotonic() < end):
            for _ in range(200):
                eng.allreduce_(t, algorithm="shm")
        print("DONE", eng.rank, flush=True)
    """,
        timeout_s=150,
        stall_timeout=1.0,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("DONE") == 2


DP_STEP = """
    from twinhpc.comm.ddp import DataParallel
    model = DataParallel(torch.nn.Linear(64, 64), engine=eng)  # one bucket, in shared memory
    if eng.rank == 1:
        {rank1}
    model(torch.ones(2, 64)).sum().backward()
    model.synchronize()  # the last bucket: summed on this thread, in the shared-memory barrier
"""


def test_a_rank_that_dies_during_a_data_parallel_step_ends_the_job():
    proc, after = run_job(DP_STEP.format(rank1="os._exit(3)"), timeout_s=150, stall_timeout=0)
    assert proc.returncode != 0
    assert after < 60, f"the job took {after:.1f} s to end after rank 1 died"


def test_a_rank_that_does_not_reach_synchronize_is_named_and_the_job_aborts():
    proc, after = run_job(DP_STEP.format(rank1="time.sleep(120)"), timeout_s=150, stall_timeout=2.0)
    assert proc.returncode != 0
    assert "'bucket0'" in proc.stderr and "missing ranks: [1]" in proc.stderr, proc.stderr
    assert after < 20, f"the job took {after:.1f} s to end after rank 0 started waiting"
