"""Trials trained in segments (``train --until-epoch``), the sweep's driver on the debug
executor: a whole sweep, a driver stopped and a new one finishing it (every segment run once),
settling the trials a dead driver left running, and the driver's lock."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import prepare_image_job
from tests.fixtures import small_cnn_job
from twinhpc.io.checkpoint import latest
from twinhpc.io.results import read_results
from twinhpc.train import train


@pytest.fixture(scope="module")
def nine_epoch_job(tmp_path_factory):
    """The tiny CNN job on 48 training images, 9 epochs of 6 steps, a cosine schedule over them."""
    body = small_cnn_job("{dir}/data", 0.05, "epochs = 9\ncheckpoint_every = 4\nkeep_checkpoints = 1\nlog_every = 1")
    body = body.replace('[optim]\nname = "sgd"', '[optim]\nname = "sgd"\nschedule = "cosine"')
    return prepare_image_job(tmp_path_factory.mktemp("nine-epochs"), body)


def weights(run) -> dict[str, np.ndarray]:
    with h5py.File(latest(run), "r") as f:
        return {name: ds[()] for name, ds in f["model"].items()}


def test_segments_1_3_9_equal_one_uninterrupted_run(nine_epoch_job, tmp_path):
    whole = train(nine_epoch_job, tmp_path / "whole", progress=False)
    assert whole.status == "finished" and whole.epoch == 9
    seg = tmp_path / "seg"
    first = train(nine_epoch_job, seg, progress=False, until_epoch=1)
    assert (first.status, first.epoch) == ("until_epoch", 1)
    assert read_results(seg)["epochs"] == 1 and not read_results(seg)["report"]
    again = train(nine_epoch_job, seg, resume=True, progress=False, until_epoch=1)  # at epoch 1 already
    assert (again.status, again.epoch) == ("complete", 1)
    mid = train(nine_epoch_job, seg, resume=True, progress=False, until_epoch=3)
    assert (mid.status, mid.epoch, read_results(seg)["epochs"]) == ("until_epoch", 3, 3)
    last = train(nine_epoch_job, seg, resume=True, progress=False, until_epoch=9)
    assert (last.status, last.step) == ("finished", whole.step)
    a, b = read_results(seg), read_results(tmp_path / "whole")
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert np.array_equal(a["metrics"][name], b["metrics"][name]), name
    for name in ("step", "loss", "lr"):
        assert np.array_equal(a["steps"][name], b["steps"][name]), name
    wa, wb = weights(seg), weights(tmp_path / "whole")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert [r["reason"] for r in a["attempts"]] == ["until_epoch", "until_epoch", "finished"]
    assert a["report"]["checkpoint_step"] == whole.step


def test_until_epoch_through_the_command_line(nine_epoch_job, tmp_path, cli):
    job_file = Path(nine_epoch_job.data.dataset).parent / "job.toml"  # prepare_image_job wrote it
    run = tmp_path / "run"
    r = cli("train", job_file, "--out", run, "--until-epoch", 2)
    assert r.returncode == 0, r.stderr
    assert "stopped at epoch 2 of 9 (--until-epoch)" in r.stdout
    assert "stopped at epoch 2 of 9 (--until-epoch)" in (run / "logs" / "twinhpc-train.rank0.log").read_text()
    r = cli("train", job_file, "--out", run, "--resume", "--until-epoch", 1)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert read_results(run)["epochs"] == 2


def test_early_stopping_before_the_segment_end_exits_0(nine_epoch_job, tmp_path):
    from twinhpc.config import override

    job = override(nine_epoch_job, {"train.early_stopping.patience": 1, "train.early_stopping.min_delta": 100.0})
    result = train(job, tmp_path / "es", progress=False, until_epoch=5)
    assert result.status == "early_stopped" and result.epoch == 2
    assert read_results(tmp_path / "es")["attempts"][-1]["reason"] == "early_stopped"


# -- the driver, on the debug executor ----------------------------------------------------------
SWEEP = """
[sweep]
strategy = "random"
trials = 4
concurrent = 2
metric = "val_loss"
seed = 3
min_epochs = 1
reduction_factor = 2
max_epochs = 4

[sweep.space."optim.lr"]
loguniform = [0.01, 0.3]
"""


@pytest.fixture(scope="module")
def sweep_job(tmp_path_factory):
    """The tiny CNN job with a 4-trial ASHA sweep over optim.lr (rungs 1, 2, 4 epochs)."""
    body = small_cnn_job("{dir}/data", 0.05, "epochs = 4\nlog_every = 1", SWEEP)
    return prepare_image_job(tmp_path_factory.mktemp("sweep-job"), body)


def debug_driver(sweep, on_event=None):
    from twinhpc.tune import executors
    from twinhpc.tune.driver import Driver

    ex = executors.make("debug", sweep.directory, sweep.job, sweep.settings.concurrent)
    return Driver(sweep, ex, poll=0.0, echo=False, on_event=on_event)


def segments_run(sweep) -> dict[int, list[tuple[int, int]]]:
    """Each trial's training processes (results.h5 /attempts): (first step, last step)."""
    return {
        t: [(a["first_step"], a["last_step"]) for a in read_results(sweep.trial_dir(t))["attempts"]]
        for t in range(len(sweep.records))
    }


def summary(sweep):
    f = sweep.to_file()
    return [
        (t.id, t.params, t.status, t.rung, [None if m != m else round(m, 12) for m in t.metric], t.epochs)
        for t in f.trials
    ], [(d.trial, d.rung, d.action) for d in f.decisions]


@pytest.fixture(scope="module")
def undisturbed(sweep_job, tmp_path_factory):
    from twinhpc.tune import Sweep

    sweep = Sweep.create(sweep_job, tmp_path_factory.mktemp("undisturbed") / "sweep", executor="debug")
    assert debug_driver(sweep).run() == 0
    return sweep


def test_a_whole_sweep_on_the_debug_executor(undisturbed):
    from twinhpc.io.sweep import read_sweep
    from twinhpc.tune import Sweep

    sweep = Sweep.load(undisturbed.directory)
    assert sweep.finished and sweep.executor == "debug"
    assert {sweep.status(t) for t in range(4)} <= {"completed", "stopped"}
    assert any(sweep.status(t) == "completed" for t in range(4))
    f = read_sweep(sweep.path)
    assert f.executor == "debug"
    steps_per_epoch = 6
    for t in f.trials:  # a trial's epochs are its last rung's, and its run holds exactly those
        assert t.epochs == f.rungs[t.rung]
        assert read_results(sweep.trial_dir(t.id))["epochs"] == t.epochs
        # one training process per segment, each continuing where the last one stopped
        spans = segments_run(sweep)[t.id]
        assert len(spans) == t.rung + 1
        assert [last for _, last in spans] == [r * steps_per_epoch for r in f.rungs[: t.rung + 1]]
        assert [first for first, _ in spans[1:]] == [last for _, last in spans[:-1]]
        # the metric reported at each rung is the run's value at that epoch
        values = read_results(sweep.trial_dir(t.id))["metrics"]["val_loss"]
        assert [t.metric[k] for k in range(t.rung + 1)] == [values[r - 1] for r in f.rungs[: t.rung + 1]]
    log = (sweep.directory / "driver.log").read_text()
    assert "launched job debug-0000-r0-" in log and "sweep finished [4/4 finished" in log


def test_a_driver_stopped_after_k_events_and_a_new_one_finish_with_each_segment_once(sweep_job, undisturbed, tmp_path):
    from twinhpc.tune import Sweep

    k, folder = 5, tmp_path / "stopped"
    sweep = Sweep.create(sweep_job, folder, executor="debug")
    events = []

    def count(line):
        events.append(line)
        if len(events) == k:
            driver.stop()

    driver = debug_driver(sweep, count)
    assert driver.run() == 128 + 15
    assert not Sweep.load(folder).finished
    assert debug_driver(Sweep.load(folder)).run() == 0
    done = Sweep.load(folder)
    trials, decisions = summary(done)
    assert trials == summary(undisturbed)[0]
    # the same decisions, but for the requeue of the segments the stopped driver had queued
    assert [d for d in decisions if d[2] != "requeue"] == summary(undisturbed)[1]
    for t, spans in segments_run(done).items():
        assert len(spans) == done.scheduler.trials[t].reached + 1, (t, spans)


def test_settle_done_failed_and_gone_segments_of_a_dead_driver(sweep_job, tmp_path):
    """A driver that died with three trials running: one's segment ended (done), one's failed,
    one's is gone; the new driver reports, fails and requeues them, and finishes the sweep."""
    import json

    from twinhpc.config import override
    from twinhpc.tune import Sweep

    job = override(sweep_job, {"sweep.concurrent": 3})
    folder = tmp_path / "sweep"
    sweep = Sweep.create(job, folder, executor="debug")
    works = sweep.next_trials()
    assert [w.trial for w in works] == [0, 1, 2]
    ex_folder = folder / "executor" / "debug"
    ex_folder.mkdir(parents=True)
    # trial 0: its segment ran to its end (as the debug executor records it)
    train(override(works[0].job, {}), works[0].out, resume=True, until_epoch=1, progress=False)
    (ex_folder / "old-0.json").write_text(json.dumps({"state": "done", "log": "log-0"}))
    sweep.started(0, job_id="old-0", log="log-0")
    # trial 1: failed; trial 2: its job is gone
    (ex_folder / "old-1.json").write_text(json.dumps({"state": "failed", "error": "boom at step 3", "log": "log-1"}))
    sweep.started(1, job_id="old-1", log="log-1")
    sweep.started(2, job_id="old-2", log="log-2")
    lines = []
    assert debug_driver(Sweep.load(folder), lines.append).run() == 0
    done = Sweep.load(folder)
    settle = [(d.trial, d.action) for d in done.decisions[3:6]]
    assert settle == [(0, "pause"), (1, "fail"), (2, "requeue")]
    assert done.status(1) == "failed" and done.records[1].error == "boom at step 3" and done.records[1].log == "log-1"
    assert "job old-2 is gone" in done.decisions[5].note
    assert done.finished
    # trial 0's first segment ran once (before the driver died), trial 2's once (after)
    assert len(read_results(done.trial_dir(0))["attempts"]) == done.scheduler.trials[0].reached + 1
    assert len(read_results(done.trial_dir(2))["attempts"]) == done.scheduler.trials[2].reached + 1


def test_a_segment_taken_before_its_driver_died_is_found_by_its_segment_json(sweep_job, undisturbed, tmp_path):
    """The driver died after the executor took trials 0 and 1 but before it saved their job ids:
    trial 0's segment started (and ran to its end), trial 1's never did. The next driver finds
    0's job in 0's segment.json and reports its outcome (no second segment), and requeues 1."""
    import json

    from twinhpc.io.sweep import read_sweep
    from twinhpc.tune import Sweep, executors

    folder = tmp_path / "sweep"
    sweep = Sweep.create(sweep_job, folder, executor="debug")
    works = sweep.next_trials()
    assert [(t.status, t.job_id) for t in read_sweep(sweep.path).trials] == [("running", "")] * 2
    ex = executors.make("debug", folder, sweep.job, 2)
    first, second = ex.launch(works)
    assert ex.states([first.job_id])[first.job_id].state == "done"  # the debug executor runs it now
    record = json.loads((sweep.trial_dir(0) / "segment.json").read_text())
    assert (record["job_id"], record["trial"], record["rung"], record["epochs"], record["by"]) == (
        first.job_id,
        0,
        0,
        1,
        "segment",
    )
    assert not (sweep.trial_dir(1) / "segment.json").exists()
    # ... and the driver is gone: sweep.h5 knows no job id
    assert [t.job_id for t in read_sweep(sweep.path).trials] == ["", ""]

    lines = []
    assert debug_driver(Sweep.load(folder), lines.append).run() == 0
    done = Sweep.load(folder)
    assert [(d.trial, d.action) for d in done.decisions[2:4]] == [(0, "pause"), (1, "requeue")]
    log = (folder / "driver.log").read_text()
    assert f"settling 2 trial(s) left running: 0 (job {first.job_id}, from its segment.json), 1 (job none)" in log
    assert "no segment of it recorded one in" in done.decisions[3].note
    trials, decisions = summary(done)
    assert trials == summary(undisturbed)[0]
    assert [d for d in decisions if d[2] != "requeue"] == summary(undisturbed)[1]
    for t, spans in segments_run(done).items():  # each segment once
        assert len(spans) == done.scheduler.trials[t].reached + 1, (t, spans)
    assert read_sweep(done.path).trials[0].job_id != ""


def test_a_trial_handed_out_again_is_saved_running_before_any_executor_gets_it(sweep_job, tmp_path):
    """A requeued trial handed out again makes no decision; sweep.h5 still says `running` (with no
    job id) before the executor is asked, so a driver that dies then leaves it to be settled."""
    from twinhpc.io.sweep import read_sweep
    from twinhpc.tune import Sweep

    sweep = Sweep.create(sweep_job, tmp_path / "sweep", executor="debug")
    sweep.next_trials(1)
    sweep.started(0, job_id="old-0")
    sweep.requeue(0, "job old-0 is gone")
    assert read_sweep(sweep.path).trials[0].status == "queued"
    decisions = len(sweep.decisions)
    (work,) = sweep.next_trials(1)
    assert work.trial == 0 and len(sweep.decisions) == decisions
    assert [(t.status, t.job_id) for t in read_sweep(sweep.path).trials] == [("running", "")]


def test_a_second_driver_on_a_sweep_is_refused_naming_the_holder(sweep_job, tmp_path):
    import os
    import socket

    from twinhpc.tune import Sweep
    from twinhpc.tune.driver import DriverLock, DriverLocked, lock_holder

    sweep = Sweep.create(sweep_job, tmp_path / "sweep", executor="debug")
    assert lock_holder(sweep.directory) is None
    held = DriverLock(sweep.directory)
    held.acquire()
    try:
        assert lock_holder(sweep.directory) == f"pid {os.getpid()} on {socket.gethostname()}"
        with pytest.raises(DriverLocked, match=f"driven by pid {os.getpid()} on {socket.gethostname()}"):
            debug_driver(sweep).lock.acquire(wait_s=0.2)
    finally:
        held.release()
    assert lock_holder(sweep.directory) is None
