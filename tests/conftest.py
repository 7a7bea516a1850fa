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
