"""What the integration tests share to run twinhpc as a user does: the environment of a command
started from this venv (Open MPI as root and oversubscribed, one thread per rank, the venv for
batch scripts), the command itself, and a runner whose failure names the command and its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ['PATH']}",
    "OMP_NUM_THREADS": "1",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "TWINHPC_VENV": sys.prefix,
}
TWINHPC = [sys.executable, "-m", "twinhpc"]
MPIRUN2 = ["mpirun", "-n", "2"]


def run(args, cwd, timeout: float = 240, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd`` (text output captured); with ``check``, a non-zero exit fails the
    test naming the command and what it printed."""
    r = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r
