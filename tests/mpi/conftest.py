"""Fixtures for tests that run unchanged at 1, 2 and 3 ranks (plain pytest = 1 rank)."""

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def world():
    from twinhpc.comm.world import get_world

    return get_world()


@pytest.fixture
def shared_tmp(world):
    """A fresh directory that every rank sees (rank 0 creates it and broadcasts the path)."""
    path = tempfile.mkdtemp(prefix="twinhpc-mpitest-") if world.rank == 0 else None
    path = Path(world.bcast(path))
    yield path
    world.barrier()
    if world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)
