"""The same commands under a real Slurm (the single-node cluster of scripts/slurm-up.sh).

Skipped when no Slurm controller answers; scripts/test.sh starts one first, so CI runs these.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fixtures

ROOT = Path(__file__).resolve().parents[2]


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and bool({"idle", "mix"} & set(r.stdout.split()))


pytestmark = pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)")
ENV = {
    **os.environ,
    "TWINHPC_VENV": str(Path(sys.prefix)),
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
}


def test_srun_gives_one_world_of_two_ranks():
    """srun must start 2 ranks of one MPI world (not 2 singletons: the PMI trap)."""
    r = subprocess.run(
        ["srun", "-n", "2", sys.executable, "-m", "twinhpc", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    ranks = sorted(row["rank"] for row in info["ranks"])
    assert ranks == [0, 1], info


def test_sbatch_ingest_job(tmp_path):
    """jobs/ingest.sbatch ingests on 2 tasks with srun, verifies, inspects; per-rank logs exist."""
    fixtures.write_cifar10(tmp_path / "cifar", n_train_per_batch=12, n_test=10)
    out = tmp_path / "ds"
    r = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--output",
            str(tmp_path / "job-%j.out"),
            str(ROOT / "jobs" / "ingest.sbatch"),
            "cifar10",
            str(tmp_path / "cifar"),
            str(out),
            "--shards",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=tmp_path,
    )
    log = "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert r.returncode == 0, r.stderr + log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["ranks"] == 2
    assert sum(s["count"] for s in manifest["splits"].values()) == 5 * 12 + 10
    assert "verify" in log and "OK" in log
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*/*.log"))
    assert "twinhpc-ingest.rank0.log" in logs and "twinhpc-ingest.rank1.log" in logs
