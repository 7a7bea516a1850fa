"""``twinhpc submit`` on the single-node Slurm (submitit's Slurm executor: one job of 2 tasks
under srun, equal to the same job under mpirun), preempted (USR2: submitit's requeue) and
requeued (``scontrol requeue``), each resuming to the results of an undisturbed run of the same
length; and the local executor (mpirun -n 2).

Skipped when no Slurm controller answers (``bash scripts/slurm-up.sh`` starts one); the local
executor's test needs only mpirun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.procs import MPIRUN2, TWINHPC, run
from tests.integration.test_slurm import ENDLESS, ENV, job_field, past_revocation, slurm, slurm_up, wait_for
from twinhpc.io.results import read_results

EPOCHS = 5  # of the undisturbed job (9 steps each)
JOB = """
[data]
dataset = "data/images"
batch_size = 8
[model]
name = "cnn"
[model.structure]
channels = 4
hidden = 8
[optim]
name = "sgd"
lr = 0.05
[train]
epochs = {epochs}
[slurm]
ntasks_per_node = 2
time = 10
signal_seconds = 60
"""
needs_slurm = pytest.mark.skipif(
    not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)"
)


def twinhpc(work: Path, *args: str, timeout: float = 300) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "twinhpc", *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=work
    )
    assert r.returncode == 0, f"twinhpc {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """data/images (96 8×8 grey images of 3 classes, 76 train: 9 steps per epoch), preprocessed."""
    work = tmp_path_factory.mktemp("submit")
    rng = np.random.default_rng(3)
    np.savez(
        work / "images.npz", image=rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), label=rng.integers(0, 3, 96)
    )
    twinhpc(work, "ingest", "npz", "images.npz", "--out", "data/images", "--label", "label")
    (work / "job.toml").write_text(JOB.format(epochs=EPOCHS))
    twinhpc(work, "preprocess", "job.toml")
    return work


def restart_now(job_id: str, work: Path, run: str) -> int:
    """Once Slurm has requeued the job (which trained "for ever", ENDLESS epochs, so that it was
    surely still training when disturbed): shorten its training to 3 epochs beyond what it
    recorded (in RUN/train.job.toml, the job file its restart reads; a constant learning rate
    makes the length a free choice), then start it without Slurm's hold on requeued jobs
    (BeginTime, about two minutes), asked again while the job is still pending. Returns the
    run's epochs."""
    wait_for(f"job {job_id} requeued", lambda: int(job_field(job_id, "Restarts")) >= 1, 240, every=0.5)
    past_revocation()
    epochs = read_results(work / run)["epochs"] + 3
    frozen = work / run / "train.job.toml"
    frozen.write_text(frozen.read_text().replace(f"epochs = {ENDLESS}", f"epochs = {epochs}"))

    def started() -> bool:
        state = job_field(job_id, "JobState")
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=60)
        return state not in ("PENDING", "REQUEUED", "COMPLETING", "REQUEUE_FED", "REQUEUE_HOLD")

    wait_for(f"job {job_id} restarted", started, 240, every=2)
    return epochs


def undisturbed_run(work: Path, epochs: int) -> Path:
    """The same job trained without interruption for ``epochs`` epochs on 2 ranks (mpirun)."""
    out = work / "runs" / f"reference-{epochs}"
    if not (out / "results.h5").exists():
        run([*MPIRUN2, *TWINHPC, "train", "job.toml", "--out", str(out), "--set", f"train.epochs={epochs}"], work)
    return out


def jobs(work: Path, run: str) -> list[dict]:
    return json.loads(twinhpc(work, "jobs", run, "--json", timeout=120))


def final_state(work: Path, run: str, deadline_s: float) -> dict:
    """The run's (last) submission once Slurm says it ended, read with `twinhpc jobs`."""
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
    return wait_for(f"{run} ending", lambda: (r := jobs(work, run)[-1])["state"] in ended and r, deadline_s, every=2)


def same_results(a: Path, b: Path, epochs: int = EPOCHS) -> None:
    ra, rb = read_results(a), read_results(b)
    assert ra["epochs"] == rb["epochs"] == epochs
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert np.array_equal(ra["metrics"][name], rb["metrics"][name]), name
    for name in ("step", "loss", "lr"):
        assert np.array_equal(ra["steps"][name], rb["steps"][name]), name


def submit_slurm(work: Path, run: str, endless: bool = False) -> str:
    """Submit job.toml (``endless``: with train.epochs = ENDLESS) as a 2-task Slurm job."""
    extra = ["--set", f"train.epochs={ENDLESS}"] if endless else []
    out = twinhpc(work, "submit", "train", "job.toml", "--executor", "slurm", "--out", run, *extra, timeout=120)
    return out.split()[0]


def training(work: Path, run: str) -> None:
    """Wait until both ranks train and the first epoch's results are written."""
    logs = [work / run / "logs" / f"twinhpc-train.rank{r}.log" for r in (0, 1)]
    wait_for(f"{run} training", lambda: all(p.is_file() and "training cnn" in p.read_text() for p in logs), 240, 0.5)
    wait_for(f"{run}'s first epoch", (work / run / "results.h5").exists, 120, 0.5)


@pytest.fixture(scope="module")
def undisturbed(work) -> Path:
    """A 2-task train job through --executor slurm, COMPLETED with its results."""
    job_id = submit_slurm(work, "runs/whole")
    try:
        record = final_state(work, "runs/whole", 420)
    finally:
        subprocess.run(["scancel", job_id], timeout=60)
    output = (work / "runs/whole/submitit" / f"{job_id}_0_log.out").read_text()
    assert record["state"] == "COMPLETED" and record["job_id"] == job_id, output
    assert record["ranks"] == 2 and record["stdout"].endswith(f"{job_id}_0_log.out")
    assert (work / "runs/whole/submitit" / f"{job_id}_1_log.out").exists()  # one task per rank
    attempts = read_results(work / "runs/whole")["attempts"]
    assert [(a["job_id"], a["ranks"], a["reason"]) for a in attempts] == [(job_id, 2, "finished")], attempts
    return work / "runs/whole"


@needs_slurm
def test_two_task_slurm_job_completes_and_validates(work, undisturbed):
    """The trained run equals the same job trained under mpirun, and is validated by a 2-task
    job too (--wait prints rank 0's result)."""
    same_results(undisturbed, undisturbed_run(work, EPOCHS))
    out = twinhpc(work, "submit", "validate", "job.toml", "--executor", "slurm", "--out", "runs/whole", "--wait")
    first, result = out.splitlines()
    assert json.loads(result) == {"verb": "validate", "run": "runs/whole", "resumed": False, "restarts": 0}
    train, validate = jobs(work, "runs/whole")
    assert (train["verb"], validate["verb"], validate["job_id"]) == ("train", "validate", first.split()[0])
    assert validate["state"] == "COMPLETED" and validate["ranks"] == 2
    log = Path(validate["stderr"]).read_text()
    assert "val split, 10 samples" in Path(validate["stdout"]).read_text() + log, log


@needs_slurm
def test_preempted_job_is_requeued_by_submitit_and_resumes_to_the_same_results(work, undisturbed):
    """USR2 to the running job (what Slurm sends signal_seconds before the time limit): the
    ranks checkpoint at a step boundary, submitit saves the call with resume and requeues the
    job, the restart resumes the run and ends COMPLETED with the undisturbed run's results."""
    job_id = submit_slurm(work, "runs/preempted", endless=True)
    try:
        training(work, "runs/preempted")
        slurm("scancel", "--signal=USR2", job_id)
        epochs = restart_now(job_id, work, "runs/preempted")
        record = final_state(work, "runs/preempted", 420)
    finally:
        subprocess.run(["scancel", job_id], timeout=60)
    log = (work / "runs/preempted/submitit" / f"{job_id}_0_log.out").read_text()
    err = (work / "runs/preempted/submitit" / f"{job_id}_0_log.err").read_text()
    assert record["state"] == "COMPLETED", log + err
    assert f"Requeued job {job_id}" in log and "Job completed successfully" in log, log  # submitit's own lines
    assert "exit status 255 asks for a requeue" in err, err
    attempts = read_results(work / "runs/preempted")["attempts"]
    assert [(a["job_id"], a["restart"], a["reason"]) for a in attempts] == [
        (job_id, 0, "preempted"),
        (job_id, 1, "finished"),
    ], attempts
    assert 0 < attempts[0]["last_step"] == attempts[1]["first_step"] < epochs * 9
    same_results(work / "runs/preempted", undisturbed_run(work, epochs), epochs)


@needs_slurm
def test_scontrol_requeue_of_a_running_job_resumes_to_the_same_results(work, undisturbed):
    job_id = submit_slurm(work, "runs/requeued", endless=True)
    try:
        training(work, "runs/requeued")
        slurm("scontrol", "requeue", job_id)
        epochs = restart_now(job_id, work, "runs/requeued")
        record = final_state(work, "runs/requeued", 420)
    finally:
        subprocess.run(["scancel", job_id], timeout=60)
    err = (work / "runs/requeued/submitit" / f"{job_id}_0_log.err").read_text()
    assert record["state"] == "COMPLETED", err
    attempts = read_results(work / "runs/requeued")["attempts"]
    assert [(a["restart"], a["reason"]) for a in attempts] == [(0, "preempted"), (1, "finished")], attempts
    same_results(work / "runs/requeued", undisturbed_run(work, epochs), epochs)
    states = {r["run"]: r["state"] for r in jobs(work, "runs") if r["verb"] == "train"}  # the folder of runs
    assert states["runs/preempted"] == states["runs/requeued"] == states["runs/whole"] == "COMPLETED", states


def test_local_executor_runs_two_ranks_through_mpirun(work):
    """[slurm] ntasks_per_node = 2 on the local executor: one task that runs mpirun -n 2."""
    import twinhpc

    cwd = os.getcwd()
    os.chdir(work)
    try:
        job = twinhpc.submit("job.toml", "train", "local", overrides=["train.epochs=3"], run="runs/local")
        deadline = time.monotonic() + 300
        while not job.done():
            assert time.monotonic() < deadline, "the local job did not end within 300 s"
            time.sleep(1)
        result = job.result()
        (record,) = json.loads(twinhpc_jobs := twinhpc_cli(work, "runs/local"))
    finally:
        os.chdir(cwd)
    assert result == {"verb": "train", "run": "runs/local", "resumed": False, "restarts": 0}, twinhpc_jobs
    assert record["launcher"] == "mpirun" and record["ranks"] == 2 and record["state"] == "COMPLETED"
    attempts = read_results(work / "runs/local")["attempts"]
    assert [(a["ranks"], a["reason"]) for a in attempts] == [(2, "finished")]
    assert {p.name for p in (work / "runs/local/logs").glob("*.log")} >= {
        "twinhpc-train.rank0.log",
        "twinhpc-train.rank1.log",
    }


def twinhpc_cli(work: Path, run: str) -> str:
    return twinhpc(work, "jobs", run, "--json", timeout=120)


@needs_slurm
def test_a_refused_submission_is_an_error_and_is_not_recorded(work):
    r = subprocess.run(
        [sys.executable, "-m", "twinhpc", "submit", "train", "job.toml", "--executor", "slurm", "--out", "runs/refused"]
        + ["--set", "slurm.partition=no-such-partition"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=work,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "twinhpc submit: error: slurm: the submission of train job.toml was refused: sbatch: error:" in r.stderr
    assert not (work / "runs/refused/submitted.json").exists()
