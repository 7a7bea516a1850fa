"""Whole sweeps through ``twinhpc tune --executor slurm`` on the single-node Slurm
(scripts/slurm-up.sh: 4 CPUs, so two 2-task trials at once; ``MaxArraySize=4``).

- Six trials of 2 MPI tasks each, handed out at once: two job arrays (3 + 3 elements), each
  element a 2-task ``srun`` step (sacct); the sweep finishes with every trial accounted for, and
  the one whose batch size cannot be split over 2 ranks is ``failed`` with its error and log
  while the others go on.
- An ASHA sweep (3 trials, rungs 1 and 3 epochs, ``concurrent = 1`` so that reports arrive in one
  order), run undisturbed, then twice disturbed, each time ending with the same trials (values,
  statuses, metric at every rung, epochs) and decisions:
  - its promoted trial's segment (epochs 1 → 3) is requeued with ``scontrol requeue``
    mid-training and resumes from its checkpoint. Mid-training by construction: the driver's
    environment holds ``TWINHPC_FAULT=0:step:hold:12``, which makes rank 0 of every segment stop
    itself (SIGSTOP) at its 12th step and, once continued, wait for a stop signal there; only a
    promoted segment (18 steps) gets there, in its last epoch, and the test requeues it while it
    is stopped (Slurm sends SIGCONT, then SIGTERM: the rank must not finish its last six steps in
    between);
  - the driver is SIGKILLed while a segment runs, and ``twinhpc sweep resume`` finishes the sweep
    with every segment run once (each trial's results.h5 ``/attempts``; sacct: every segment job
    ran once and no job was submitted twice for one segment).

Skipped when no Slurm controller answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import small_cnn_job
from tests.integration.procs import ENV, TWINHPC, run
from tests.integration.test_slurm import job_field, past_revocation, slurm, slurm_up, wait_for
from twinhpc.io.results import read_results
from twinhpc.io.sweep import read_sweep

pytestmark = pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)")

SLURM = "[slurm]\nntasks_per_node = 2\ntime = 10\n"
#: 6 trials at once; batch 7 cannot be split over 2 ranks: trial 0 fails when it starts
SIX = """
[sweep]
strategy = "grid"
concurrent = 6
metric = "val_loss"
scheduler = "none"
max_epochs = 1

[sweep.space."data.batch_size"]
choice = [7, 8, 10, 12, 16, 6]
"""
#: rungs (1, 3): three 9-step segments to epoch 1, then one 18-step segment 1 → 3 for the best
ASHA = """
[sweep]
strategy = "random"
trials = 3
concurrent = 1
metric = "val_loss"
seed = 11
min_epochs = 1
reduction_factor = 3
max_epochs = 3

[sweep.space."optim.lr"]
loguniform = [0.01, 0.3]
"""
#: rank 0 of a segment stops itself at its 12th step and, continued, waits there for a stop signal:
#: only a promoted segment (18 steps) gets there
STOP_AT_STEP_12 = "0:step:hold:12"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """96 8×8 grey images of 3 classes (76 train: 9 steps of 8 per epoch), preprocessed for the
    tiny CNN job of 2 ranks; the job files of the two sweeps."""
    work = tmp_path_factory.mktemp("tune-sweep-slurm")
    rng = np.random.default_rng(3)
    np.savez(
        work / "images.npz", image=rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), label=rng.integers(0, 3, 96)
    )
    base = small_cnn_job(str(work / "data/images"), train="epochs = 3", more=SLURM)
    (work / "job.toml").write_text(base)
    run([*TWINHPC, "ingest", "npz", "images.npz", "--out", "data/images", "--label", "label"], work)
    run([*TWINHPC, "preprocess", "job.toml"], work)
    (work / "six.toml").write_text(base + SIX)
    (work / "asha.toml").write_text(base + ASHA)
    return work


def tune(work: Path, job: str, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*TWINHPC, "tune", work / job, "--executor", "slurm", "--out", out, "--poll", "1"],
        cwd=work,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def launched_jobs(sweep: Path) -> list[str]:
    """Every segment job the sweep's drivers launched, in order (driver.log)."""
    return re.findall(r"launched job (\S+),", (sweep / "driver.log").read_text())


def scancel_all(sweep: Path) -> None:
    """Leave nothing of the sweep on the shared cluster."""
    if (sweep / "driver.log").exists() and (ids := launched_jobs(sweep)):
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def finish(driver: subprocess.Popen, sweep: Path, timeout: float) -> str:
    """The driver's output once it exited 0."""
    try:
        out, _ = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
            scancel_all(sweep)
    assert driver.returncode == 0, out
    return out


def trials(sweep: Path) -> list[tuple]:
    """Each trial's values, status, rung, metric at every rung (NaN: None) and epochs."""
    f = read_sweep(sweep / "sweep.h5")
    return [(t.id, t.params, t.status, t.rung, [None if m != m else m for m in t.metric], t.epochs) for t in f.trials]


def decisions(sweep: Path) -> list[tuple]:
    return [
        (d.trial, d.rung, d.action, None if d.metric != d.metric else d.metric)
        for d in read_sweep(sweep / "sweep.h5").decisions
    ]


def attempts(sweep: Path, trial: int) -> list[tuple]:
    return [
        (a["ranks"], a["restart"], a["reason"]) for a in read_results(sweep / "trials" / f"{trial:04d}")["attempts"]
    ]


def sacct(job_ids: list[str], fields: str, *more: str) -> list[list[str]]:
    """sacct's rows (allocation and steps) of these jobs, asked for through their arrays."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    rows = slurm("sacct", "-n", "-P", *more, "-j", ",".join(arrays), "-o", fields).splitlines()
    return [row.split("|") for row in rows if row]


def once_each(job_ids: list[str]) -> dict[str, list[str]]:
    """Each job's allocation rows in accounting, requeued runs included (``sacct -D``)."""
    rows = sacct(job_ids, "JobID,State", "-X", "-D")
    return {j: [state for jid, state in rows if jid == j] for j in job_ids}


def stopped_segment(sweep: Path) -> tuple[int, int] | None:
    """(trial, pid) of a segment's process that stopped itself (state T), or None."""
    trials_dir = str(sweep / "trials") + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state == "T" and "train" in cmdline:
            for arg in cmdline:
                if arg.startswith(trials_dir):
                    return int(arg[len(trials_dir) :].split("/")[0]), int(entry.name)
    return None


def sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits to be delivered to ``pid`` (True, too, once it is gone or runs on)."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return True
    if not status["State"].strip().startswith("T"):
        return True
    pending = int(status["ShdPnd"], 16) | int(status["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGTERM - 1)))


# -- six trials as job arrays, one of them crashing ---------------------------------------------
@pytest.fixture(scope="module")
def six(work):
    sweep = work / "sweep-six"
    out = finish(tune(work, "six.toml", sweep), sweep, 280)
    return sweep, out


def test_six_trials_run_as_job_arrays_of_two_task_srun_steps(work, six):
    sweep, out = six
    assert "sweep finished [6/6 finished" in out
    f = read_sweep(sweep / "sweep.h5")
    assert f.executor == "slurm" and len(f.trials) == 6
    assert [t.status for t in f.trials] == ["failed"] + ["completed"] * 5, trials(sweep)
    ids = [t.job_id for t in f.trials]
    assert launched_jobs(sweep) == ids  # one launch of all six, each segment once
    # MaxArraySize=4: two arrays of 3 elements, every trial an element of one
    assert all(re.fullmatch(r"\d+_[0-2]", j) for j in ids), ids
    arrays = sorted({j.split("_")[0] for j in ids}, key=int)
    assert len(arrays) == 2 and [j.split("_")[0] for j in ids] == [arrays[0]] * 3 + [arrays[1]] * 3, ids
    # sacct: each element ran one srun step of 2 tasks (the batch step is its own, of 1)
    steps = {jid: ntasks for jid, ntasks in sacct(ids, "JobID,NTasks")}
    assert all(steps.get(f"{j}.0") == "2" for j in ids), steps
    assert all(states == ["FAILED" if j == ids[0] else "COMPLETED"] for j, states in once_each(ids).items())
    for t in f.trials[1:]:
        assert attempts(sweep, t.id) == [(2, 0, "finished")], t.id
    # each segment recorded its own job id (submitit's, of the array element) in its segment.json
    records = [json.loads((sweep / "trials" / f"{t.id:04d}" / "segment.json").read_text()) for t in f.trials]
    assert [r["job_id"] for r in records] == ids and "segment" in {r["by"] for r in records}, records
    # twinhpc jobs SWEEP: the same jobs, with Slurm's states
    rows = json.loads(run([*TWINHPC, "jobs", sweep, "--json"], work).stdout)
    assert [(r["trial"], r["job_id"], r["executor"], r["state"]) for r in rows] == [
        (i, j, "slurm", "FAILED" if i == 0 else "COMPLETED") for i, j in enumerate(ids)
    ], rows


def test_a_crashing_trial_is_failed_with_its_error_and_log_and_the_sweep_goes_on(work, six):
    sweep, _ = six
    f = read_sweep(sweep / "sweep.h5")
    crashed = f.trials[0]
    assert crashed.status == "failed" and crashed.params == {"data.batch_size": 7}
    assert crashed.error.startswith("Slurm FAILED, exit code "), crashed.error
    assert "exit status 2" in crashed.error and crashed.job_id in crashed.error, crashed.error
    assert crashed.log == str(sweep / "executor" / "slurm" / f"{crashed.job_id}_0_log.err")
    assert "divisible by the 2 ranks" in Path(crashed.log).read_text()
    actions = [(d.trial, d.action) for d in f.decisions]
    assert actions.count((0, "fail")) == 1
    after = actions[actions.index((0, "fail")) :]
    assert any(action == "complete" for _, action in after), actions  # the others went on
    log = (sweep / "driver.log").read_text()
    assert "trial 0 rung 0 (1 epoch): " in log and "fail: " in log and f"log {crashed.log}" in log
    status = run([*TWINHPC, "sweep", "status", sweep], work)
    assert "5 completed, 1 failed" in status.stdout and "error: " in status.stdout


# -- ASHA: undisturbed, a segment requeued, the driver killed -------------------------------------
@pytest.fixture(scope="module")
def undisturbed(work) -> Path:
    sweep = work / "sweep-undisturbed"
    finish(tune(work, "asha.toml", sweep), sweep, 280)
    f = read_sweep(sweep / "sweep.h5")
    assert [t.rung for t in f.trials].count(1) == 1, trials(sweep)  # one promoted trial: 4 segments
    return sweep


def test_a_segment_requeued_mid_training_resumes_and_the_sweep_equals_an_undisturbed_one(work, undisturbed):
    sweep = work / "sweep-requeued"
    driver = tune(work, "asha.toml", sweep, env={**ENV, "TWINHPC_FAULT": STOP_AT_STEP_12})
    try:
        trial, pid = wait_for("a segment stopped at its 12th step", lambda: stopped_segment(sweep), 240, every=0.5)
        assert read_results(sweep / "trials" / f"{trial:04d}")["epochs"] == 2  # of 1 → 3: mid-training
        job_id = read_sweep(sweep / "sweep.h5").trials[trial].job_id
        assert job_field(job_id, "JobState") == "RUNNING"
        slurm("scontrol", "requeue", job_id)
        # Slurm sends SIGCONT and SIGTERM; continue the stopped rank only once SIGTERM waits for it
        wait_for(f"SIGTERM pending for pid {pid}", lambda: sigterm_pending(pid), 30, every=0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        wait_for(f"job {job_id} requeued", lambda: int(job_field(job_id, "Restarts")) >= 1, 120, every=0.5)
        past_revocation()

        def restarted() -> bool:  # without Slurm's hold on requeued jobs (BeginTime, ~2 min)
            state = job_field(job_id, "JobState")
            if state == "PENDING":
                subprocess.run(
                    ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=60
                )
            return state not in ("PENDING", "REQUEUED", "COMPLETING", "REQUEUE_FED", "REQUEUE_HOLD")

        wait_for(f"job {job_id} restarted", restarted, 240, every=2)
        finish(driver, sweep, 240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        scancel_all(sweep)
    assert trials(sweep) == trials(undisturbed)
    assert decisions(sweep) == decisions(undisturbed)
    # the requeued segment stopped with a checkpoint mid-epoch and its restart resumed from it
    assert attempts(sweep, trial) == [(2, 0, "until_epoch"), (2, 0, "preempted"), (2, 1, "finished")]
    spans = [(a["first_step"], a["last_step"]) for a in read_results(sweep / "trials" / f"{trial:04d}")["attempts"]]
    assert spans[0] == (0, 9) and spans[1][0] == 9 and 9 + 12 <= spans[1][1] < 27 and spans[2] == (spans[1][1], 27)
    assert once_each([job_id])[job_id] == ["REQUEUED", "COMPLETED"]
    others = [j for j in launched_jobs(sweep) if j != job_id]
    assert len(others) == 3 and all(states == ["COMPLETED"] for states in once_each(others).values())


def test_the_driver_killed_mid_sweep_then_sweep_resume_runs_each_segment_once(work, undisturbed):
    sweep = work / "sweep-killed"
    driver = tune(work, "asha.toml", sweep)
    try:

        def report_and_running():
            try:
                f = read_sweep(sweep / "sweep.h5")
            except Exception:
                return None
            running = [t for t in f.trials if t.status == "running" and t.job_id]
            return len(f.reports) >= 1 and running and running[0]

        segment = wait_for("a report and a running segment", report_and_running, 240, every=0.3)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        first = launched_jobs(sweep)
        r = run([*TWINHPC, "sweep", "resume", sweep, "--poll", "1"], work, timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
        scancel_all(sweep)
    assert f"settling 1 trial(s) left running: {segment.id} (job " in r.stdout
    assert trials(sweep) == trials(undisturbed)
    # the same decisions; a requeue only if the driver died before its segment was launched
    assert [d for d in decisions(sweep) if d[2] != "requeue"] == decisions(undisturbed)
    f = read_sweep(sweep / "sweep.h5")
    for t in f.trials:  # one training process per segment; the last one's job id in segment.json
        assert [reason for _, _, reason in attempts(sweep, t.id)] == ["until_epoch"] + ["finished"] * t.rung, t.id
        assert json.loads((sweep / "trials" / f"{t.id:04d}" / "segment.json").read_text())["job_id"] == t.job_id
    # one Slurm job per segment, none submitted twice, none run twice
    jobs = launched_jobs(sweep)
    assert jobs[: len(first)] == first and segment.job_id in first
    assert len(jobs) == len(set(jobs)) == sum(t.rung + 1 for t in f.trials), jobs
    assert all(states == ["COMPLETED"] for states in once_each(jobs).values()), once_each(jobs)
