"""Run directories under ``mpirun -n 2``, as an operator meets them: two ``train`` on one
``--out``, ``--resume`` with changed settings or another rank count, and SIGKILL of a rank at
random instants followed by ``--resume``, which must record exactly what an uninterrupted run
records.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from twinhpc.io.results import read_results

from . import test_train_cli
from .test_train_cli import ENV, JOB, MPIRUN2, TWINHPC, run

digits = test_train_cli.digits  # the fixture: the digits data, ingested and preprocessed

#: a short run with frequent commits: 2 epochs of 44 steps, a checkpoint every 3 steps, a record every step
SHORT = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=3", "--set", "train.log_every=1"]
TIMES = (
    "epoch_time_s",
    "samples_per_s",
    "step_time_s",
    "data_wait_s",
    "forward_backward_s",
    "communication_s",
    "optimizer_s",
)


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def wait_for(predicate, proc, timeout=120.0, what="") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"ended ({proc.returncode}) before {what}:\n{proc.communicate()[0]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ranks_of(mpirun_pid: int) -> dict[int, int]:
    """``rank → pid`` of the processes mpirun started (from their environment)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            env = dict(
                kv.split("=", 1)
                for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in kv
            )
        except (OSError, ValueError):
            continue
        if "OMPI_COMM_WORLD_RANK" in env:
            out[int(env["OMPI_COMM_WORLD_RANK"])] = int(proc.name)
    return out


def assert_same_records(run_dir: Path, reference: Path) -> None:
    a, b = read_results(run_dir), read_results(reference)
    assert a["epochs"] == b["epochs"] == 2
    for group in ("metrics", "steps"):
        assert set(a[group]) == set(b[group])
        for name in a[group]:
            if name not in TIMES:
                assert np.array_equal(a[group][name], b[group][name], equal_nan=True), f"{run_dir}: /{group}/{name}"
    assert a["report"]["accuracy"] == b["report"]["accuracy"]
    with h5py.File(run_dir / "ckpt" / "step-88.h5") as fa, h5py.File(reference / "ckpt" / "step-88.h5") as fb:
        for name in fb["model"]:
            assert np.array_equal(fa["model"][name][()], fb["model"][name][()]), name
    left = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name == "twinhpc.lock"]
    assert not left, left


@pytest.fixture(scope="module")
def whole(digits) -> Path:
    """The uninterrupted run of :data:`SHORT` at two ranks."""
    run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", "runs/whole"] + SHORT, digits)
    return digits / "runs" / "whole"


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP: state T in /proc/PID/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


def test_a_second_train_on_the_same_out_is_refused_and_the_first_completes(digits, whole):
    """The first run's rank 0 stops itself at its second step (TWINHPC_FAULT), so that however
    fast the machine, the first run holds its lock mid-training while the second is refused;
    continued, it completes with the records of the uninterrupted run."""
    first = subprocess.Popen(
        MPIRUN2 + TWINHPC + ["train", JOB, "--out", "runs/busy"] + SHORT,
        cwd=digits,
        env={**ENV, "TWINHPC_FAULT": "0:step:stop:2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        lock = digits / "runs" / "busy" / "twinhpc.lock"
        wait_for(lock.is_file, first, what="the first run's lock")
        holder = json.loads(lock.read_text())
        wait_for(lambda: stopped(holder["pid"]), first, what="rank 0 of the first run stopped at its second step")
        second = run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", "runs/busy"] + SHORT, digits, check=False)
        os.kill(holder["pid"], signal.SIGCONT)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"the run is in use by pid {holder['pid']} on host {holder['host']}" in second.stderr, second.stderr
        output = first.communicate(timeout=240)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, output
    assert_same_records(digits / "runs" / "busy", whole)


def test_resume_refuses_a_changed_setting_and_another_rank_count(digits):
    out = digits / "runs" / "partial"
    run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", out, "--set", "train.max_steps=5"], digits)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    longer = ["--out", out, "--set", "train.max_steps=9"]  # the run's length may change on resume
    r = run(MPIRUN2 + TWINHPC + ["train", JOB, "--resume", "--set", "optim.lr=0.1"] + longer, digits, check=False)
    assert r.returncode == 2 and "optim.lr: 0.003 in the run, 0.1 now" in r.stderr, r.stderr
    r = run(TWINHPC + ["train", JOB, "--resume"] + longer, digits, check=False)
    assert r.returncode == 2 and "the run was trained on 2 rank(s), this job runs on 1" in r.stderr, r.stderr
    r = run(MPIRUN2 + TWINHPC + ["train", JOB] + longer, digits, check=False)  # no --resume
    assert r.returncode == 2 and "holds a run already" in r.stderr and "--resume" in r.stderr, r.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    r = run(MPIRUN2 + TWINHPC + ["train", JOB, "--resume", "--out", out, "--set", "train.max_steps=5"], digits)
    assert "the run is complete (5 steps, 1 epoch(s)); nothing to do" in r.stdout, r.stdout
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    run(MPIRUN2 + TWINHPC + ["train", JOB, "--resume"] + longer, digits)
    assert (out / "ckpt" / "step-9.h5").is_file() and read_results(out)["epochs"] == 2  # max_steps closes an epoch


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_of_a_rank_at_a_random_instant_then_resume_equals_the_uninterrupted_run(digits, whole, seed):
    rng = random.Random(seed)
    victim, out = rng.choice([0, 1]), f"runs/kill-{seed}"
    proc = start(MPIRUN2 + TWINHPC + ["train", JOB, "--out", out] + SHORT, digits)
    log0 = digits / out / "logs" / "twinhpc-train.rank0.log"
    try:
        wait_for(lambda: log0.is_file() and "training cnn" in log0.read_text(), proc, what="training to start")
        pids = ranks_of(proc.pid)
        assert set(pids) == {0, 1}, pids
        time.sleep(rng.uniform(0.1, 2.0))  # training takes 2-5 s
        ended = proc.poll() is not None
        if not ended:
            subprocess.run(["kill", "-KILL", str(pids[victim])], check=False)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ended or proc.returncode != 0, output
    run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", out, "--resume"] + SHORT, digits)
    assert_same_records(digits / out, whole)


def test_an_unwritable_out_ends_at_once_with_one_line(digits):
    (digits / "in-the-way").write_text("a file")
    r = run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", "in-the-way/run"] + SHORT, digits, check=False, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: rank 0: in-the-way/run: cannot create the run directory (Not a directory)" in r.stderr, r.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (skipped where this process may not mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)


def test_a_disk_that_fills_up_mid_run_ends_with_one_line_and_resume_completes(digits, whole, small_disk):
    out = small_disk / "run"
    proc = start(MPIRUN2 + TWINHPC + ["train", JOB, "--out", out] + SHORT, digits)
    log0 = out / "logs" / "twinhpc-train.rank0.log"
    try:
        wait_for(lambda: log0.is_file() and "training cnn" in log0.read_text(), proc, what="training to start")
        time.sleep(0.3)
        subprocess.run(["dd", "if=/dev/zero", f"of={small_disk}/filler", "bs=64k", "count=100"], capture_output=True)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, output
    assert "error: rank 0: cannot write " in output and "(No space left on device)" in output, output
    assert not [p.name for p in out.rglob("*.tmp")]
    (small_disk / "filler").unlink()
    run(MPIRUN2 + TWINHPC + ["train", JOB, "--out", out, "--resume"] + SHORT, digits)
    assert_same_records(out, whole)
