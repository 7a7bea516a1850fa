"""Shared test setup: the repository root on sys.path, a fixed thread count, and ``cli``: the
command line run in this process (``main([...])``), as fast as a function call."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# before any test module imports mpi4py: `import twinhpc` sets Open MPI's dynamic-rules variable,
# read once when MPI starts (the engine's Open MPI algorithm variants depend on it)
import twinhpc  # noqa: E402, F401


@dataclass(frozen=True)
class CliResult:
    """What one ``twinhpc`` command returned and printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` runs ``twinhpc ARGS`` in this process through ``twinhpc.cli.main.main`` and
    returns a :class:`CliResult`; argparse's exits (``--help``, usage errors) become return codes.
    The ``twinhpc`` logger's handlers, bound to pytest's captured streams, are removed afterwards."""
    from twinhpc.cli.main import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        finally:
            logging.getLogger("twinhpc").handlers.clear()
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def npz_source(tmp_path) -> Path:
    """``tmp_path/src.npz``: 101 samples of ``x`` (float32, 8 features) and ``y`` (3 classes)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "src.npz"
    np.savez(path, x=rng.random((101, 8), dtype=np.float32), y=rng.integers(0, 3, 101))
    return path


def prepare_image_job(work: Path, job_toml: str):
    """64 random 8×8 grey images of 3 classes ingested into ``work/data`` (48 training, 16
    validation), ``job_toml`` (``{dir}`` stands for ``work``) written to ``work/job.toml``, loaded
    and preprocessed; returns the job."""
    from twinhpc.comm.world import get_world
    from twinhpc.config import load_job
    from twinhpc.data.ingest import ingest
    from twinhpc.preprocess import preprocess

    rng = np.random.default_rng(1)
    np.savez(
        work / "images.npz", image=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), label=rng.integers(0, 3, 64)
    )
    world = get_world()
    ingest(
        "npz",
        work / "images.npz",
        work / "data",
        options={"label": "label"},
        val_fraction=0.25,
        test_fraction=0.0,
        world=world,
    )
    (work / "job.toml").write_text(job_toml.format(dir=work))
    job = load_job(work / "job.toml")
    preprocess(job, world=world)
    return job


@pytest.fixture(scope="module")
def small_image_job(tmp_path_factory):
    """A preprocessed job of 48 training and 16 validation 8×8 grey images of 3 classes: 6 steps
    per epoch of 2, checkpoints every 4 steps (the newest kept) and at the end of an epoch that
    improves val_loss (keep_best)."""
    from tests.fixtures import small_cnn_job

    train = "epochs = 2\ncheckpoint_every = 4\nkeep_checkpoints = 1\nkeep_best = true\nlog_every = 1"
    return prepare_image_job(tmp_path_factory.mktemp("small-image-job"), small_cnn_job("{dir}/data", 0.05, train))


@pytest.fixture
def mpi_started_here():
    """MPI initialised in this (pytest) process, as it is once any in-process test used MPI, or in
    a driver that imported mpi4py: Open MPI then put its per-job variables into the C-level
    environment, and every job launched from here must leave them behind
    (:func:`twinhpc.env.launch_environ`)."""
    from twinhpc.comm.world import get_world

    get_world()
