"""The same commands under a real Slurm (the single-node cluster of scripts/slurm-up.sh).

Skipped when no Slurm controller answers; scripts/test.sh starts one first, so CI runs these.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import fixtures
from tests.fixtures import small_cnn_job
from tests.integration.procs import ENV

ROOT = Path(__file__).resolve().parents[2]


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and bool({"idle", "mix"} & set(r.stdout.split()))


pytestmark = pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)")


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


# -- twinhpc sbatch: requeue on Slurm's signal, scontrol requeue, a run directory per job --------
JOB = small_cnn_job(
    "data/images",
    train="epochs = {epochs}",
    more="[slurm]\nntasks_per_node = 2\ntime = {minutes}\nsignal_seconds = {signal}\n",
)
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def slurm(*args: str) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    return r.stdout


def job_field(job_id: str, name: str) -> str:
    """A field of `scontrol show job` (e.g. Restarts, JobState)."""
    fields = dict(f.split("=", 1) for f in slurm("scontrol", "show", "job", "-o", job_id).split() if "=" in f)
    return fields[name]


def wait_for(what: str, check, deadline_s: float, every: float = 1.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s")


def final_state(job_id: str, deadline_s: float) -> str:
    """The job's state in accounting once it has ended (sacct polled until the deadline)."""

    def state():
        lines = slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State").split()
        return lines and lines[-1].split()[0] in DONE and lines[-1].split()[0]

    return wait_for(f"job {job_id} ending", state, deadline_s, every=2.0)


#: epochs of a job that must still be training when Slurm signals or requeues it, however fast
#: the machine: its restart is then given a short end (train.epochs may change on --resume)
ENDLESS = 100_000


def past_revocation() -> None:
    """Wait until a requeued job may start again. Requeueing revokes the job's credential, and
    slurmd refuses a credential created in the same second as the revocation (it compares whole
    seconds): a restart forced at once ends FAILED ("Job credential revoked"). Slurm's own hold on
    requeued jobs (BeginTime) avoids that; a test that skips the hold waits two seconds."""
    time.sleep(2)


def restart_now(job_id: str, work: Path, minutes: int | None = None) -> int:
    """Once the job is requeued: shorten its training to 3 epochs beyond what it recorded
    (job.toml's train.epochs, which its restart reads), then start it without Slurm's hold on
    requeued jobs (BeginTime, about two minutes), optionally with a longer time limit (so its
    next run is not signalled). Returns the job's epochs from then on."""
    from twinhpc.io.results import read_results

    wait_for(f"job {job_id} requeued", lambda: int(job_field(job_id, "Restarts")) >= 1, 240, every=0.5)
    past_revocation()
    epochs = read_results(work / "runs" / f"job-{job_id}")["epochs"] + 3
    text = (work / "job.toml").read_text()
    (work / "job.toml").write_text(text.replace(f"epochs = {ENDLESS}", f"epochs = {epochs}"))
    update = ["scontrol", "update", f"JobId={job_id}", "StartTime=now"]
    slurm(*update, *([f"TimeLimit={minutes}"] if minutes else []))
    return epochs


@pytest.fixture
def images(tmp_path) -> Path:
    """tmp_path/data/images: 96 8×8 grey images of 3 classes (76 train: 9 steps per epoch)."""
    import numpy as np

    rng = np.random.default_rng(3)
    np.savez(
        tmp_path / "images.npz", image=rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), label=rng.integers(0, 3, 96)
    )
    r = subprocess.run(
        [sys.executable, "-m", "twinhpc", "ingest", "npz", "images.npz", "--out", "data/images", "--label", "label"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    return tmp_path


def submit(work: Path, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "twinhpc", "sbatch", "job.toml", *args, "--submit"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def check_complete(work: Path, job_id: str, epochs: int) -> list[dict]:
    """The run of job ``job_id`` is whole: every epoch row, the report, validation and the
    report in the job's output; returns its attempts."""
    from twinhpc.io.results import read_results

    results = read_results(work / "runs" / f"job-{job_id}")
    output = (work / f"job-{job_id}.out").read_text()
    assert results["epochs"] == epochs and results["report"]["n"] == 10, output
    assert "confusion (row: true class" in output and "final report (val split" in output, output
    assert all(a["job_id"] == job_id for a in results["attempts"])
    return results["attempts"]


def test_sbatch_job_signalled_before_its_time_limit_requeues_resumes_and_completes(images):
    """time = 3 min, USR2 100 s before: the signal comes 20–80 s in (Slurm checks the signal
    times about once a minute and may send it up to 60 s early: a 2-min limit leaves it a window
    of 0–20 s, before or while the job starts), while it trains (it would
    train for hours): checkpoint, exit 255, requeue; the restart (time limit raised, so it is not
    signalled again; 3 more epochs) resumes runs/job-<id> and ends COMPLETED with validation and
    report done. An interactive run of the same job file (runs/job) is left alone."""
    (images / "job.toml").write_text(JOB.format(epochs=ENDLESS, minutes=3, signal=100))
    for verb in (["preprocess", "job.toml"], ["train", "job.toml", "--set", "train.epochs=1"]):  # runs/job
        interactive = subprocess.run(
            [sys.executable, "-m", "twinhpc", *verb], capture_output=True, text=True, timeout=300, env=ENV, cwd=images
        )
        assert interactive.returncode == 0, interactive.stderr
    before = (images / "runs" / "job" / "results.h5").read_bytes()
    job_id = submit(images)
    try:
        epochs = restart_now(job_id, images, minutes=10)
        assert final_state(job_id, 420) == "COMPLETED", (images / f"job-{job_id}.out").read_text()
    finally:
        subprocess.run(["scancel", job_id], timeout=60)
    attempts = check_complete(images, job_id, epochs)
    assert [(a["restart"], a["reason"]) for a in attempts] == [(0, "preempted"), (1, "finished")], attempts
    assert 0 < attempts[0]["last_step"] == attempts[1]["first_step"] < attempts[1]["last_step"] == epochs * 9
    output = (images / f"job-{job_id}.out").read_text()
    assert "twinhpc: train stopped by a signal (exit status 255): requeueing job" in output
    assert (images / "runs" / "job" / "results.h5").read_bytes() == before


def test_scontrol_requeue_of_a_running_job_resumes_and_completes(images):
    """`scontrol requeue` while it trains: SIGTERM, checkpoint, the job is requeued and its
    restart resumes and ends COMPLETED, the run whole."""
    (images / "job.toml").write_text(JOB.format(epochs=ENDLESS, minutes=10, signal=60))
    job_id = submit(images)
    try:
        results = images / "runs" / f"job-{job_id}" / "results.h5"
        wait_for("the first epoch's results", results.exists, 240, every=0.5)
        slurm("scontrol", "requeue", job_id)
        epochs = restart_now(job_id, images)
        assert final_state(job_id, 420) == "COMPLETED", (images / f"job-{job_id}.out").read_text()
    finally:
        subprocess.run(["scancel", job_id], timeout=60)
    attempts = check_complete(images, job_id, epochs)
    assert [(a["restart"], a["reason"]) for a in attempts] == [(0, "preempted"), (1, "finished")], attempts


def test_jobs_train_sbatch_submits_the_job_with_its_slurm_table(images):
    """`sbatch jobs/train.sbatch job.toml` is a short job that submits the job's own script:
    2 tasks from [slurm], not the wrapper's 1."""
    (images / "job.toml").write_text(JOB.format(epochs=2, minutes=10, signal=60))
    r = subprocess.run(
        ["sbatch", "--parsable", "--wait", str(ROOT / "jobs" / "train.sbatch"), "job.toml"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=images,
    )
    wrapper = r.stdout.strip().split(";")[0]
    log = (images / f"twinhpc-submit-{wrapper}.out").read_text()
    assert r.returncode == 0, r.stderr + log
    submitted = re.search(r"twinhpc sbatch: submitted job (\d+)", log)  # Slurm may add lines of its own
    assert submitted, log
    job_id = submitted.group(1)
    try:
        assert final_state(job_id, 300) == "COMPLETED", (images / f"job-{job_id}.out").read_text()
    finally:
        subprocess.run(["scancel", job_id], timeout=60)
    (attempt,) = check_complete(images, job_id, 2)
    assert attempt["ranks"] == 2 and attempt["reason"] == "finished"
