"""Run directories are owned: the lock (a second writer refused naming the holder, stale locks
replaced), leftover temporaries, write probes, and what ``train`` refuses on an existing run."""

from __future__ import annotations

import json
import os
import socket

import h5py
import pytest

from twinhpc.errors import TwinError
from twinhpc.io.checkpoint import list_checkpoints
from twinhpc.io.results import read_results
from twinhpc.io.rundir import (
    LOCK,
    RunDirError,
    RunLocked,
    acquire_lock,
    check_free_space,
    holder_record,
    probe_writable,
    read_lock,
    remove_temporaries,
)
from twinhpc.train import train
from twinhpc.train.rundir import MAY_CHANGE, changed_keys


@pytest.fixture(scope="module")
def job(small_image_job):
    """tests/conftest.py: 6 steps per epoch of 2, checkpoints every 4 steps."""
    return small_image_job


def dead_pid() -> int:
    """A pid that no process has now."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def plant(run, **fields) -> dict:
    """A lock record of another process, written into ``run``."""
    rec = {**holder_record(), **fields}
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK).write_text(json.dumps(rec))
    return rec


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_with_the_first(tmp_path):
    lock = acquire_lock(tmp_path)
    rec = read_lock(tmp_path)
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["started"]
    with pytest.raises(RunLocked, match=rf"in use by pid {os.getpid()} on host {socket.gethostname()}, since"):
        acquire_lock(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK).exists()
    acquire_lock(tmp_path).release()


def test_a_live_holder_on_this_host_is_refused_with_what_to_do(tmp_path):
    parent = os.getppid()  # alive, and not this process
    plant(tmp_path, pid=parent, pid_start=None, slurm_job_id="77")
    with pytest.raises(RunLocked) as e:
        acquire_lock(tmp_path)
    message = str(e.value)
    assert f"pid {parent} on host {socket.gethostname()} (Slurm job 77)" in message
    assert "--force-unlock" in message and "another --out" in message and str(tmp_path / LOCK) in message


@pytest.mark.parametrize(
    "fields",
    [
        {"pid": "dead"},
        {"pid": "parent", "pid_start": -1},  # the pid runs, but started at another time: reused
        {"pid": "self", "token": "not-held"},  # this pid, but this process holds no such lock
        {"pid": "parent", "boot_id": "another-boot"},
    ],
    ids=["pid-gone", "pid-reused", "own-pid-not-held", "rebooted"],
)
def test_a_stale_lock_on_this_host_is_replaced(tmp_path, fields):
    pids = {"dead": dead_pid(), "parent": os.getppid(), "self": os.getpid()}
    rec = plant(tmp_path, **{**fields, "pid": pids[fields["pid"]]})
    lock = acquire_lock(tmp_path)
    now = read_lock(tmp_path)
    assert now["token"] == lock.record["token"] != rec["token"] and now["pid"] == os.getpid()
    lock.release()


def test_another_host_is_refused_unless_forced_and_an_earlier_slurm_attempt_is_stale(tmp_path, monkeypatch):
    plant(tmp_path, host="node-elsewhere", pid=dead_pid())
    with pytest.raises(RunLocked, match="in use by pid .* on host node-elsewhere"):
        acquire_lock(tmp_path)
    acquire_lock(tmp_path, force=True).release()
    # the same Slurm job, requeued: the lock of its earlier attempt (on any node) is stale
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    plant(tmp_path, host="node-elsewhere", pid=1, slurm_job_id="4242", slurm_restart_count=0)
    acquire_lock(tmp_path).release()
    plant(tmp_path, host="node-elsewhere", pid=1, slurm_job_id="4242", slurm_restart_count=1)
    with pytest.raises(RunLocked):  # the same attempt: another step of this very job
        acquire_lock(tmp_path)


def test_a_damaged_lock_is_refused_unless_forced_and_release_keeps_a_lock_not_ours(tmp_path):
    (tmp_path / LOCK).write_text("")
    with pytest.raises(RunLocked, match="unreadable lock file"):
        acquire_lock(tmp_path)
    lock = acquire_lock(tmp_path, force=True)
    other = plant(tmp_path, pid=os.getppid())  # replaced behind our back (by --force-unlock elsewhere)
    lock.release()
    assert read_lock(tmp_path)["token"] == other["token"]


def test_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "ckpt").mkdir()
    for name in ("results.h5.tmp", "ckpt/.step-8.h5.tmp", "results.h5", "ckpt/step-4.h5", "notes.txt"):
        (tmp_path / name).write_text("x")
    removed = sorted(p.relative_to(tmp_path).as_posix() for p in remove_temporaries(tmp_path))
    assert removed == ["ckpt/.step-8.h5.tmp", "results.h5.tmp"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "ckpt/step-4.h5",
        "notes.txt",
        "results.h5",
    ]


def test_an_unwritable_directory_and_a_full_disk_are_named(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(RunDirError, match=rf"{tmp_path}/file/ckpt: cannot write checkpoints there \(Not a directory"):
        probe_writable(tmp_path / "file" / "ckpt", "checkpoints")
    with pytest.raises(RunDirError, match=r"MiB free, but the checkpoints need about .* train.keep_checkpoints"):
        check_free_space(tmp_path, 2**62, "the checkpoints")
    with pytest.raises(RunDirError, match="cannot create the run directory"):
        acquire_lock(tmp_path / "file" / "run")


def test_train_on_an_unwritable_out_fails_before_anything_with_one_line(job, tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(TwinError, match=r"file/run: cannot create the run directory \(Not a directory\)"):
        train(job, tmp_path / "file" / "run", progress=False)


def snapshot(run) -> dict:
    return {
        p.relative_to(run).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()
    }


def test_an_existing_run_is_refused_without_resume_and_left_as_it_was(job, tmp_path):
    train(job, tmp_path, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(TwinError) as e:
        train(job, tmp_path, progress=False)
    message = str(e.value)
    assert f"{tmp_path}: holds a run already (results.h5, 1 checkpoint(s)" in message, message
    assert "--resume" in message and "another --out" in message
    assert snapshot(tmp_path) == before


def test_a_complete_run_resumed_is_reported_complete_and_untouched(job, tmp_path):
    train(job, tmp_path, progress=False)
    before = snapshot(tmp_path)
    result = train(job, tmp_path, resume=True, progress=False)
    assert result.status == "complete" and result.step == 12 and result.epoch == 2
    assert snapshot(tmp_path) == before


def test_resume_refuses_changed_settings_by_name_and_accepts_a_longer_run(job, tmp_path):
    from twinhpc.config import override

    train(job, tmp_path, progress=False)
    before = snapshot(tmp_path)
    changed = override(job, {"optim.lr": 0.1, "train.seed": 3, "train.epochs": 3})
    with pytest.raises(TwinError) as e:
        train(changed, tmp_path, resume=True, progress=False)
    message = str(e.value)
    assert "optim.lr: 0.05 in the run, 0.1 now" in message and "train.seed: 0 in the run, 3 now" in message
    assert "train.epochs" not in message.split("(May change")[0]
    assert snapshot(tmp_path) == before
    longer = override(job, {"train.epochs": 3, "train.log_every": 2})
    result = train(longer, tmp_path, resume=True, progress=False)
    assert result.status == "finished" and result.epoch == 3 and result.step == 18
    results = read_results(tmp_path)
    assert results["epochs"] == 3 and results["config"]["train"]["epochs"] == 3
    assert results["config"]["optim"]["lr"] == 0.05


def test_resume_on_another_rank_count_names_both(job, tmp_path):
    """One process cannot change its rank count: the checkpoint says 2 ranks wrote it."""
    cut = override_stop(job)
    train(cut, tmp_path, progress=False)
    (_, newest), *_ = reversed(list_checkpoints(tmp_path))
    with h5py.File(newest, "r+") as f:
        loader = json.loads(f.attrs["loader"])
        f.attrs["loader"] = json.dumps({**loader, "world_size": 2})
    with pytest.raises(TwinError, match=r"the run was trained on 2 rank\(s\), this job runs on 1.*mpirun -n 2"):
        train(job, tmp_path, resume=True, progress=False)


def override_stop(job):
    from twinhpc.config import override

    return override(job, {"train.max_steps": 4})


def test_changed_keys_skips_what_may_change_and_names_the_rest(job):
    from twinhpc.config import override

    recorded = json.loads(job.to_json())
    now = override(
        job, {"train.epochs": 9, "slurm.time": 5, "data.prefetch": 0, "model.structure": {"channels": 5, "hidden": 8}}
    )
    assert [k for k, _, _ in changed_keys(recorded, now)] == ["model.structure.channels"]
    assert "train.epochs" in MAY_CHANGE and "optim.lr" not in MAY_CHANGE


def test_os_errors_are_told_in_the_os_words():
    from twinhpc.train.rundir import os_error_text

    hdf5 = OSError(28, "Can't synchronously write data (file write failed: ..., errno = 28, error message = 'No ...')")
    assert os_error_text(hdf5) == "No space left on device"
    assert (
        os_error_text(OSError("file write failed: error message = 'Disk quota exceeded', buf")) == "Disk quota exceeded"
    )
