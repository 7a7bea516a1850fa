"""The ``slurm`` sweep executor on the single-node Slurm (scripts/slurm-up.sh, whose
``MaxArraySize=4`` makes a sweep of 6 trials two arrays): trial segments of 2 tasks under srun
as throttled job arrays, a refused sbatch leaving nothing queued, an array element requeued
mid-training resuming to the results of an undisturbed segment, a crashing segment failed with
its error and log. Trial work comes from a real :class:`~twinhpc.tune.Sweep` of a tiny CNN job.

Skipped when no Slurm controller answers.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import small_cnn_job
from tests.integration.procs import ENV
from tests.integration.test_slurm import job_field, slurm, slurm_up, wait_for
from twinhpc.config import Job, override
from twinhpc.errors import TwinError
from twinhpc.io.results import read_results
from twinhpc.tune import Sweep
from twinhpc.tune.executors import make
from twinhpc.tune.executors.slurm import SlurmTrials
from twinhpc.tune.submit import slurm_states

needs_slurm = pytest.mark.skipif(
    not slurm_up(), reason="no Slurm cluster answers (start one: bash scripts/slurm-up.sh)"
)
#: epochs of a segment that must still train when it is requeued, however fast the machine
ENDLESS = 100_000


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """data/images (96 8×8 grey images of 3 classes, 76 train: 9 steps per epoch), preprocessed."""
    work = tmp_path_factory.mktemp("tune")
    rng = np.random.default_rng(3)
    np.savez(
        work / "images.npz", image=rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), label=rng.integers(0, 3, 96)
    )
    for args in (
        ["ingest", "npz", "images.npz", "--out", "data/images", "--label", "label"],
        ["preprocess", "job.toml"],
    ):
        (work / "job.toml").write_text(small_cnn_job(str(work / "data/images")))
        r = subprocess.run(
            [sys.executable, "-m", "twinhpc", *args], capture_output=True, text=True, timeout=240, env=ENV, cwd=work
        )
        assert r.returncode == 0, r.stderr
    return work


def make_sweep(work: Path, name: str, trials: int, epochs: int, slurm: str = "") -> Sweep:
    """A random sweep over optim.lr of the tiny CNN job (2 ranks), ``trials`` trials all at once,
    each trained ``epochs`` epochs (no ASHA)."""
    more = (
        f"[slurm]\nntasks_per_node = 2\ntime = 10\n{slurm}\n"
        f'[sweep]\nstrategy = "random"\ntrials = {trials}\nconcurrent = {trials}\nscheduler = "none"\n'
        '[sweep.space."optim.lr"]\nuniform = [0.01, 0.1]\n'
    )
    job = Job.from_dict(tomllib.loads(small_cnn_job(str(work / "data/images"), train=f"epochs = {epochs}", more=more)))
    return Sweep.create(job, work / name)


def squeue(*ids: str) -> str:
    return slurm("squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i %T")


def wait_states(executor, ids, want, deadline_s: float) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        states = executor.states(ids)
        if all(s.state in want for s in states.values()):
            return states
        assert time.monotonic() < deadline, f"not all {want} within {deadline_s:.0f} s: {states}"
        time.sleep(1)


def start_now(job_id: str) -> None:
    """Start a requeued job without Slurm's hold on requeued jobs (BeginTime, about two
    minutes), asked again while it is still pending."""

    def started() -> bool:
        state = job_field(job_id, "JobState")
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=60)
        return state not in ("PENDING", "REQUEUED", "COMPLETING", "REQUEUE_FED", "REQUEUE_HOLD")

    wait_for(f"job {job_id} restarted", started, 240, every=2)


def max_overlap(rows: list[dict]) -> int:
    """The most jobs running at one time, from sacct's Start and End ([start, end) intervals)."""
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@needs_slurm
def test_six_trials_run_as_throttled_arrays_split_at_max_array_size(prepared, mpi_started_here):
    sweep = make_sweep(prepared, "six", trials=6, epochs=2)
    works = sweep.next_trials()
    executor = make("slurm", sweep.directory, sweep.job, 2)
    assert executor.max_array_size == 4, "scripts/slurm-up.sh sets MaxArraySize=4: split 6 works into 2 arrays"
    launched = executor.launch(works)
    ids = [entry.job_id for entry in launched]
    arrays = sorted({j.split("_")[0] for j in ids})
    try:
        assert len(arrays) == 2 and all(re.fullmatch(r"\d+_[0-2]", j) for j in ids), ids  # 3 + 3
        throttles = [re.search(r"ArrayTaskThrottle=(\d+)", slurm("scontrol", "show", "job", "-o", a)) for a in arrays]
        assert [int(t.group(1)) for t in throttles if t] == [1, 1], throttles  # 2 in all
        states = wait_states(executor, ids, {"done", "failed"}, 200)
    finally:
        subprocess.run(["scancel", *arrays], timeout=60)
    assert all(s.state == "done" for s in states.values()), states
    rows = slurm_states(ids)
    assert max_overlap([rows[j] for j in ids]) <= 2, rows
    for w, entry in zip(works, launched, strict=True):
        results = read_results(w.out)
        assert results["epochs"] == 2 and len(results["metrics"]["val_loss"]) == 2, w.out
        assert [a["ranks"] for a in results["attempts"]] == [2]
        assert entry.log == str(sweep.directory / "executor/slurm" / f"{entry.job_id}_0_log.err")
        assert Path(entry.log).exists() and states[entry.job_id].node
    waits = executor.queue_wait(ids)
    assert sorted(waits) == sorted(ids) and all(0 <= s < 200 for s in waits.values()), waits


class SecondArrayRefused(SlurmTrials):
    """Every array after the first asks for a partition that does not exist."""

    def executor(self, plan, after):
        ex = super().executor(plan, after)
        if plan.start > 0:
            ex.update_parameters(slurm_partition="no-such-partition")
        return ex


@needs_slurm
def test_a_refused_sbatch_is_an_error_quoting_sbatch_and_leaves_nothing_queued(prepared):
    sweep = make_sweep(prepared, "refused", trials=2, epochs=2, slurm='partition = "no-such-partition"')
    executor = make("slurm", sweep.directory, sweep.job, 2)
    with pytest.raises(TwinError) as e:
        executor.launch(sweep.next_trials())
    message = str(e.value)
    assert message.startswith("--executor slurm: sbatch refused the segments of trial(s) 0, 1: "), message
    assert "sbatch: error:" in message and "partition" in message.lower(), message

    sweep = make_sweep(prepared, "refused-second", trials=6, epochs=ENDLESS)
    before = set(slurm("squeue", "-h", "-o", "%F").split())
    with pytest.raises(TwinError) as e:
        SecondArrayRefused(sweep.directory, sweep.job, 2).launch(sweep.next_trials())
    message = str(e.value)
    wait_for(
        "the cancelled array leaving the queue", lambda: set(slurm("squeue", "-h", "-o", "%F").split()) <= before, 60
    )
    assert "of trial(s) 3, 4, 5; cancelled the 1 array(s) submitted before it: sbatch: error:" in message, message


@needs_slurm
def test_a_requeued_array_element_resumes_to_an_undisturbed_segments_results_and_a_crash_fails(prepared):
    """Trials 0 (trains 'for ever') and 1 (its dataset is missing: crashes) as one array of
    throttle 1: 1 waits while 0 trains. 0 is `scontrol requeue`d after its first epoch; once
    requeued its job file is given 3 epochs more than it recorded and it restarts; it resumes
    and ends done with the results of trial 2, the same job trained undisturbed."""
    sweep = make_sweep(prepared, "requeue", trials=3, epochs=ENDLESS)
    endless, crash, twin = sweep.next_trials()
    crash = dataclasses.replace(crash, job=override(crash.job, {"data.dataset": str(prepared / "data/missing")}))
    executor = make("slurm", sweep.directory, sweep.job, 1)
    launched = executor.launch([endless, crash])
    ids = [entry.job_id for entry in launched]
    twin_ids: list[str] = []
    try:
        results = Path(endless.out) / "results.h5"
        wait_for("trial 0's first epoch", results.exists, 240, every=0.5)
        states = executor.states(ids)
        assert (states[ids[0]].state, states[ids[1]].state) == ("running", "pending"), states  # the throttle
        slurm("scontrol", "requeue", ids[0])
        wait_for(f"{ids[0]} requeued", lambda: int(job_field(ids[0], "Restarts")) >= 1, 240, every=0.5)
        assert executor.states([ids[0]])[ids[0]].state in ("pending", "running")
        epochs = read_results(endless.out)["epochs"] + 3
        trial_job = Path(endless.out) / "trial.job.toml"
        trial_job.write_text(trial_job.read_text().replace(f"epochs = {ENDLESS}", f"epochs = {epochs}"))
        start_now(ids[0])
        twin = dataclasses.replace(
            twin, job=override(endless.job, {"train.out": str(twin.out), "train.epochs": epochs})
        )
        twin_ids = [entry.job_id for entry in make("slurm", sweep.directory, sweep.job, 1).launch([twin])]
        states = wait_states(executor, ids + twin_ids, {"done", "failed"}, 300)
    finally:
        subprocess.run(["scancel", *ids, *twin_ids], timeout=60)
    assert [states[j].state for j in (*ids, *twin_ids)] == ["done", "failed", "done"], states
    disturbed, undisturbed = read_results(endless.out), read_results(twin.out)
    assert [(a["restart"], a["reason"]) for a in disturbed["attempts"]] == [(0, "preempted"), (1, "finished")]
    assert disturbed["epochs"] == undisturbed["epochs"] == epochs
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert np.array_equal(disturbed["metrics"][name], undisturbed["metrics"][name]), name
    assert np.array_equal(disturbed["steps"]["loss"], undisturbed["steps"]["loss"])

    crashed = states[ids[1]]
    assert crashed.log == str(sweep.directory / "executor/slurm" / f"{ids[1]}_0_log.err"), crashed
    assert crashed.error.startswith("Slurm FAILED, exit code 1:0: "), crashed.error
    assert "TwinError: twinhpc train" in crashed.error and "exit status 2" in crashed.error, crashed.error
    assert "missing" in Path(crashed.log).read_text()

    never = executor.states(["999999_0"])["999999_0"]  # within the grace: perhaps ended, not yet accounted
    assert (never.state, never.error) == ("running", "in neither squeue nor sacct yet"), never
    executor.unknown_grace = 0.0
    gone = executor.states(["999999_0"])["999999_0"]
    assert gone.state == "gone", gone


@needs_slurm
def test_states_of_live_jobs_come_from_the_controller_when_accounting_lags(tmp_path, monkeypatch):
    """Accounting learns of a start a moment after slurmctld (seconds, under load). Here a wrapper
    around the real sacct answers every job as PENDING, as a lagging slurmdbd would: a running
    array element is still `running` (squeue), the throttled one `pending`, and an ended job gets
    its state and exit code from sacct."""
    import shutil
    import stat

    ended = slurm("sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 3").strip()
    wait_for(f"job {ended} ended", lambda: not squeue(ended).strip(), 60, every=0.5)
    wait_for(
        f"job {ended} in accounting",
        lambda: "FAILED" in slurm("sacct", "-X", "-n", "-P", "-j", ended, "-o", "State"),
        60,
        every=0.5,
    )
    array = slurm("sbatch", "--parsable", "-a", "0-1%1", "-o", "/dev/null", "--wrap", "sleep 60").strip()
    try:
        wait_for(f"{array}_0 running", lambda: f"{array}_0 RUNNING" in squeue(f"{array}_0"), 60, every=0.5)
        lagging = tmp_path / "bin" / "sacct"
        lagging.parent.mkdir()
        real = shutil.which("sacct")
        lagging.write_text(
            f"#!/bin/sh\n{real} \"$@\" | sed -e 's/|RUNNING|/|PENDING|/' -e 's/|COMPLETING|/|PENDING|/'\n"
        )
        lagging.chmod(lagging.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{lagging.parent}:{os.environ['PATH']}")
        ids = [f"{array}_0", f"{array}_1", ended]
        rows = slurm_states(ids)
    finally:
        subprocess.run(["scancel", array], timeout=60)
    assert [rows[j]["state"] for j in ids] == ["RUNNING", "PENDING", "FAILED"], rows
    assert rows[ended]["exit_code"] == "3:0", rows[ended]
    assert rows[f"{array}_1"]["start"] == "Unknown", rows  # squeue's forecast is not a start
