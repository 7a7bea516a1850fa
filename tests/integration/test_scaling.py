"""`twinhpc bench scaling` as a user runs it, with a tiny job: a real weak study at 1 and 2
ranks under mpirun (the record's tables and attributes, efficiency = the recorded throughputs'
ratio, the validation against the repository's all-reduce record, the PNGs); a rank count that
fails stops the study naming k and its log, and writes no record; the same study sent to the
single-node Slurm as one job (--submit --wait) runs its rank counts with srun."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, prepare_image_job
from tests.fixtures import small_cnn_job
from tests.integration.procs import ENV
from tests.integration.test_slurm import slurm_up
from twinhpc.io.bench_results import read_records

ALLREDUCE_RECORDS = Path(ROOT) / "benchmarks" / "results" / "allreduce"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """48 training images of 8×8 (tests/conftest.py), a CNN at batch 8, and the repository's
    2-rank all-reduce record in results/allreduce/ (what the model is fitted to)."""
    work = tmp_path_factory.mktemp("scaling")
    prepare_image_job(work, small_cnn_job("{dir}/data", 0.05, "epochs = 1"))
    shutil.copytree(ALLREDUCE_RECORDS, work / "results" / "allreduce")
    return work


def scaling(work: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twinhpc", "bench", "scaling", "job.toml", *args],
        cwd=work,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_weak_study_at_1_and_2_ranks(work):
    r = scaling(work, "--ranks", "1,2", "--steps", "6", "--warmup", "2", "--results", "results", "--work", "w1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scaling [1/2] k=1: mpirun -n 1" in r.stdout and "scaling [2/2] k=2:" in r.stdout
    (record,) = read_records(work / "results")["scaling"]
    a = record.attrs
    assert (a["mode"], a["steps"], a["warmup"], a["launcher"], a["job_name"]) == ("weak", 6, 2, "mpirun", "job")
    assert a["reference_ranks"] == 1 and a["threads_per_rank"] == 1 and a["source_commit"]
    rows = record.rows("rows")
    assert [row["ranks"] for row in rows] == [1, 2]
    assert [row["global_batch"] for row in rows] == [8, 16] and [row["steps"] for row in rows] == [6, 6]
    one, two = rows
    assert two["efficiency"] == pytest.approx(two["samples_per_s"] / (2 * one["samples_per_s"]))
    assert two["speedup"] == pytest.approx(two["samples_per_s"] / one["samples_per_s"])
    assert one["efficiency"] == 1.0
    for row in rows:
        assert row["step_p10_s"] <= row["step_s"] <= row["step_p90_s"]
        assert row["samples_per_s"] == pytest.approx(row["global_batch"] / row["step_s"])
        assert all(row[f"{phase}_s"] >= 0 for phase in ("data_wait", "forward_backward", "communication", "optimizer"))
    # the CNN's gradients: all-reduced at 2 ranks, not at 1
    assert one["allreduce_bytes"] == 0 and two["allreduce_bytes"] == one["gradient_bytes"] > 0
    # the model, fitted to the 2-rank all-reduce record, predicts the 2-rank step
    (v,) = record.rows("validation")
    assert v["ranks"] == 2 and v["impl"] == "twinhpc:shared" and v["measured_step_s"] == two["step_s"]
    assert "validation:" in r.stdout and "twinhpc:shared" in r.stdout
    for suffix in ("-efficiency.png", "-phases.png"):
        png = record.path.with_name(record.path.stem + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (work / "w1" / "k2" / "results.h5").is_file() and (work / "w1" / "k2.log").is_file()


def test_a_failing_rank_count_stops_the_study(work):
    # a per-rank batch of 32: 1 rank reads 32 of the 48 training samples per step, 2 ranks would
    # need 64: `twinhpc train` refuses, and the study stops there
    r = scaling(work, "--ranks", "1,2", "--batch", "32", "--steps", "2", "--results", "failed", "--work", "w2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "k=2: mpirun -n 2 exited with status" in r.stderr and f"log {Path('w2') / 'k2.log'}" in r.stderr
    assert "scaling [1/2] k=1:" in r.stdout and (work / "w2" / "k2.log").is_file()
    assert not list((work / "failed").rglob("*.h5")), "a stopped study writes no record"


@pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)")
def test_the_study_as_one_slurm_job(work):
    args = ["--ranks", "1,2", "--steps", "3", "--warmup", "1", "--results", "slurm-results", "--work", "w3"]
    r = scaling(work, *args, "--submit", "--wait", timeout=280)
    assert r.returncode == 0, r.stdout + r.stderr
    script = (work / "w3" / "scaling.sbatch").read_text()
    assert "#SBATCH --ntasks=2" in script and "--launcher srun" in script
    (record,) = read_records(work / "slurm-results")["scaling"]
    assert record.attrs["launcher"] == "srun" and [row["ranks"] for row in record.rows("rows")] == [1, 2]
    assert "scaling [2/2] k=2: srun -n 2" in r.stdout  # the job's output, printed after --wait
