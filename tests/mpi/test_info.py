"""The startup report at any world size: one row per rank, gathered to rank 0.

Runs unchanged under plain pytest (1 rank) and ``mpirun -n N python -m pytest tests/mpi/test_info.py``.
"""

import os

from tests.mpi.collective import collective
from twinhpc.env import process_info, startup_report


def test_report_has_one_row_per_rank_in_rank_order(world):
    report = collective(world, lambda: startup_report(world))
    pids = world.allgather(os.getpid())

    def body():
        if world.rank != 0:
            assert report is None
            return
        rows = report["ranks"]
        assert [r["rank"] for r in rows] == list(range(world.size))
        assert [r["pid"] for r in rows] == pids
        assert all(r["size"] == world.size for r in rows)

    collective(world, body)


def test_launcher_environment_agrees_with_mpi(world):
    def body():
        info = process_info()
        if info.launcher == "none":
            assert world.size == 1
        else:  # a rank that disagrees is a singleton started by a misconfigured srun
            assert info.rank == world.rank
        if info.launcher in ("openmpi", "pmi"):  # Slurm's count is the allocation's inside sbatch
            assert info.size == world.size
        assert info.pid == os.getpid()

    collective(world, body)


def test_local_rank_is_the_rank_among_the_ranks_of_its_node(world):
    """World.local_rank (the GPU index of `simulate.device = "cuda"`) agrees with the launcher's
    local rank where it sets one, and the local ranks of each node are 0 … n−1."""
    local = world.local_rank()
    hosts = world.allgather((os.uname().nodename, local))

    def body():
        info = process_info()
        if info.launcher in ("openmpi", "pmi"):
            assert local == info.local_rank
        for host in {h for h, _ in hosts}:
            assert sorted(r for h, r in hosts if h == host) == list(range(sum(1 for h, _ in hosts if h == host)))

    collective(world, body)
