"""`twinhpc tune` on the local executor, trials of 2 ranks under mpirun: an ASHA sweep end to
end; the driver SIGKILLed mid-sweep (its running segment finishes) and `twinhpc sweep resume`
finishing with each segment run once and the decisions of the undisturbed sweep; a crashing
trial recorded failed with its error and log; `--detach`; a segment trained in pieces under
mpirun equal to one run. With 1-rank trials: 2 at once, each launch accepted as soon as a
segment has reported; a segment that started before its driver saved its job id, adopted by
`sweep resume` from its segment.json while it still trains."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import prepare_image_job
from tests.fixtures import small_cnn_job
from tests.integration.procs import ENV, MPIRUN2, TWINHPC, run
from tests.integration.test_slurm import wait_for
from twinhpc.io.checkpoint import latest
from twinhpc.io.results import read_results
from twinhpc.io.sweep import read_sweep

SLURM = "[slurm]\nntasks_per_node = 2\ntime = 10\n"
ASHA = """
[sweep]
strategy = "random"
trials = 4
concurrent = 1
metric = "val_loss"
seed = 5
min_epochs = 1
reduction_factor = 2
max_epochs = 2

[sweep.space."optim.lr"]
loguniform = [0.01, 0.3]
"""
# 1-rank trials, 2 at once (a segment's process ends right after it wrote its result)
TWO_AT_ONCE = """
[sweep]
strategy = "random"
trials = 4
concurrent = 2
metric = "val_loss"
seed = 2
scheduler = "none"
max_epochs = 1

[sweep.space."optim.lr"]
loguniform = [0.01, 0.3]
"""
# batch 7 cannot be split over 2 ranks: the trial fails when it starts (a 1-rank check passes it)
CRASH = """
[sweep]
strategy = "grid"
concurrent = 2
metric = "val_loss"
scheduler = "none"
max_epochs = 1

[sweep.space."data.batch_size"]
choice = [8, 7]
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tiny CNN job (2 ranks) prepared once, and job files of the two sweeps over it."""
    work = tmp_path_factory.mktemp("tune-local")
    prepare_image_job(work, small_cnn_job("{dir}/data", 0.05, "epochs = 2\nlog_every = 1", SLURM))
    base = (work / "job.toml").read_text()
    (work / "asha.toml").write_text(base + ASHA)
    (work / "crash.toml").write_text(base + CRASH)
    (work / "two.toml").write_text(base.replace(SLURM, "[slurm]\ntime = 10\n") + TWO_AT_ONCE)
    return work


def trials(folder: Path) -> list[tuple]:
    f = read_sweep(folder / "sweep.h5")
    return [(t.id, t.params, t.status, t.rung, [None if m != m else m for m in t.metric], t.epochs) for t in f.trials]


def attempts(folder: Path, trial: int) -> list[tuple]:
    return [(a["ranks"], a["reason"]) for a in read_results(folder / "trials" / f"{trial:04d}")["attempts"]]


@pytest.fixture(scope="module")
def undisturbed(work):
    out = work / "sweep-a"
    r = run([*TWINHPC, "tune", work / "asha.toml", "--out", out, "--poll", "0.5"], work, timeout=280)
    return out, r


def test_an_asha_sweep_end_to_end(undisturbed):
    out, r = undisturbed
    f = read_sweep(out / "sweep.h5")
    assert f.executor == "local" and len(f.trials) == 4
    assert {t.status for t in f.trials} <= {"completed", "stopped"} and "completed" in {t.status for t in f.trials}
    assert "sweep finished [4/4 finished" in r.stdout and "best: trial" in r.stdout
    for t in f.trials:  # one 2-rank training process per segment, the last one at its rung
        assert attempts(out, t.id) == [(2, "until_epoch")] * t.rung + [
            (2, "finished" if t.rung == 1 else "until_epoch")
        ]
        assert t.job_id and Path(t.log).is_file()
    status = run([*TWINHPC, "sweep", "status", out, "--json"], out.parent)
    doc = json.loads(status.stdout)
    assert doc["finished"] and doc["driver"] is None and doc["best"]["trial"] in {t.id for t in f.trials}
    assert (out / "driver.log").read_text().count("launched job") == sum(t.rung + 1 for t in f.trials)


def test_the_driver_killed_mid_sweep_then_resume(work, undisturbed):
    out = work / "sweep-b"
    driver = subprocess.Popen(
        [*TWINHPC, "tune", work / "asha.toml", "--out", out, "--poll", "0.5"],
        cwd=work,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # kill it while a segment runs, after two reports
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            try:
                f = read_sweep(out / "sweep.h5")
                running = [t for t in f.trials if t.status == "running" and t.job_id]
                if len(f.reports) >= 2 and running:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never had two reports and a running segment")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    segment = running[0]
    # the segment outlives its driver and finishes (submitit writes its result)
    result = out / "executor" / "local" / f"{segment.job_id}_0_result.pkl"
    deadline = time.monotonic() + 120
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert result.exists(), f"segment {segment.job_id} of trial {segment.id} did not finish after the driver died"
    r = run([*TWINHPC, "sweep", "resume", out, "--poll", "0.5"], work, timeout=240)
    assert f"settling 1 trial(s) left running: {segment.id} (job {segment.job_id})" in r.stdout
    assert trials(out) == trials(undisturbed[0])
    a, b = read_sweep(out / "sweep.h5"), read_sweep(undisturbed[0] / "sweep.h5")
    assert [(d.trial, d.rung, d.action) for d in a.decisions] == [(d.trial, d.rung, d.action) for d in b.decisions]
    for t in a.trials:  # each segment ran once
        assert len(attempts(out, t.id)) == t.rung + 1, (t.id, attempts(out, t.id))


def test_detach_and_a_crashing_trial(work):
    out = work / "sweep-c"
    start = time.monotonic()
    r = run([*TWINHPC, "tune", work / "crash.toml", "--out", out, "--poll", "0.5", "--detach"], work, timeout=120)
    assert "runs detached (its first trials are launched)" in r.stdout and f"twinhpc sweep resume {out}" in r.stdout
    f = read_sweep(out / "sweep.h5")
    assert any(t.status == "running" for t in f.trials), "--detach returned after the trials ended"
    deadline = start + 200
    while time.monotonic() < deadline and not all(t.status in ("completed", "failed") for t in f.trials):
        time.sleep(1)
        f = read_sweep(out / "sweep.h5")
    assert [t.status for t in f.trials] == ["completed", "failed"], trials(out)
    failed = f.trials[1]
    assert "data.batch_size" in failed.error and "divisible by the 2 ranks" in failed.error
    assert Path(failed.log).is_file() and "data.batch_size" in Path(failed.log).read_text()
    log = (out / "driver.log").read_text()
    assert "sweep finished [2/2 finished" in log and "trial 1 rung 0 (1 epoch): log " in log
    status = run([*TWINHPC, "sweep", "status", out], work)
    assert "1 completed, 1 failed" in status.stdout and "error: " in status.stdout


def test_segments_under_mpirun_equal_one_run(work):
    """`train --resume --until-epoch` at 2 ranks: segments 1 → 3 → 4 equal one 4-epoch run."""
    job = work / "job.toml"
    common = ["--set", "train.epochs=4", "--set", "train.checkpoint_every=4"]
    run([*MPIRUN2, *TWINHPC, "train", job, "--out", work / "whole", *common], work)
    for e in (1, 3, 4):
        r = run(
            [*MPIRUN2, *TWINHPC, "train", job, "--out", work / "seg", "--resume", "--until-epoch", str(e), *common],
            work,
        )
        if e < 4:
            assert f"stopped at epoch {e} of 4 (--until-epoch)" in r.stdout
    a, b = read_results(work / "seg"), read_results(work / "whole")
    for name in ("loss", "val_loss", "val_accuracy", "lr"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name
    for name in ("step", "loss"):
        assert np.array_equal(a["steps"][name], b["steps"][name]), name
    with h5py.File(latest(work / "seg"), "r") as fa, h5py.File(latest(work / "whole"), "r") as fb:
        assert all(np.array_equal(fa["model"][k][()], fb["model"][k][()]) for k in fb["model"])
    assert [x["reason"] for x in a["attempts"]] == ["until_epoch", "until_epoch", "finished"]


def test_two_one_rank_trials_at_once_every_launch_accepted(work):
    """concurrent = 2: the driver launches the next segment as soon as one has reported; the
    executor counts a segment that wrote its result as ended (its process is reaped), so no launch
    is refused as one too many."""
    out = work / "sweep-two"
    r = run([*TWINHPC, "tune", work / "two.toml", "--out", out, "--poll", "0.1"], work, timeout=240, check=False)
    assert r.returncode == 0 and "sweep finished [4/4 finished" in r.stdout, r.stdout + r.stderr
    assert "refused" not in r.stdout + r.stderr
    f = read_sweep(out / "sweep.h5")
    assert [t.status for t in f.trials] == ["completed"] * 4
    assert all(attempts(out, t.id) == [(1, "finished")] for t in f.trials)
    assert (out / "driver.log").read_text().count("launched job") == 4


def stopped_train(run_dir: Path) -> int | None:
    """The pid of a `twinhpc train` process of ``run_dir`` that stopped itself (state T)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state == "T" and "train" in cmdline and str(run_dir) in cmdline:
            return int(entry.name)
    return None


def test_a_segment_that_started_before_its_driver_saved_its_job_id_is_adopted(work, monkeypatch):
    """The driver died after the local executor started trial 0's segment but before saving its
    job id (sweep.h5: running, no job id). The segment recorded its job id in segment.json as it
    started, and trains on (stopped at its 2nd step by TWINHPC_FAULT until the test continues it).
    `sweep resume` adopts that job and watches it; it launches no second segment (which the run's
    lock would refuse: the trial would end failed)."""
    from twinhpc.config import load_job
    from twinhpc.tune import Sweep
    from twinhpc.tune.executors import make

    out = work / "sweep-window"
    sweep = Sweep.create(load_job(work / "two.toml", ["sweep.trials=1"]), out, executor="local")
    works = sweep.next_trials()
    monkeypatch.setenv("TWINHPC_FAULT", "0:step:stop:2")
    executor = make("local", out, sweep.job, 2)
    (launched,) = executor.launch(works)
    monkeypatch.delenv("TWINHPC_FAULT")
    trial_dir = sweep.trial_dir(0)
    resume, pid = None, None
    try:
        pid = wait_for("trial 0's training stopped at its 2nd step", lambda: stopped_train(trial_dir), 120, every=0.2)
        record = json.loads((trial_dir / "segment.json").read_text())
        assert (record["job_id"], record["by"]) == (launched.job_id, "segment")
        assert [(t.status, t.job_id) for t in read_sweep(out / "sweep.h5").trials] == [("running", "")]
        resume = subprocess.Popen(
            [*TWINHPC, "sweep", "resume", out, "--poll", "0.2"],
            cwd=work,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        job_id = wait_for("a job id in sweep.h5", lambda: read_sweep(out / "sweep.h5").trials[0].job_id, 120, every=0.2)
        assert job_id == launched.job_id, "sweep resume launched a second segment of a trial whose segment runs"
        os.kill(pid, signal.SIGCONT)
        output, _ = resume.communicate(timeout=120)
    finally:
        if resume is not None and resume.poll() is None:
            resume.kill()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for job in executor.jobs.values():  # reap the controller this process started
            job._process.wait(timeout=120)
    assert resume.returncode == 0, output
    assert f"settling 1 trial(s) left running: 0 (job {launched.job_id}, from its segment.json)" in output
    f = read_sweep(out / "sweep.h5")
    assert [(t.status, t.job_id) for t in f.trials] == [("completed", launched.job_id)]
    assert [d.action for d in f.decisions] == ["start", "complete"]
    assert attempts(out, 0) == [(1, "finished")]
