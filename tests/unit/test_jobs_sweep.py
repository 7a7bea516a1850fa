"""`twinhpc jobs SWEEP`: one row per trial handed to an executor, from sweep.h5; debug trials as
such, local trials from submitit's result file (never unpickled) and their process, Slurm
trials from one batched squeue and one sacct call (the real tools, counted through wrappers on
PATH)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import h5py
import pytest

from tests import sweep_builder as sb
from twinhpc.tune.submit import job_states


def set_executor(sweep_dir, name):
    """sweep.h5's root attribute ``executor``, as the sweep's driver writes it."""
    with h5py.File(sweep_dir / "sweep.h5", "a") as f:
        f.attrs["executor"] = name


def test_debug_and_unrecorded_executors(tmp_path, cli):
    sb.build(tmp_path, str(tmp_path / "data"))
    sweep = tmp_path / "sweep"
    rows = job_states([sweep])
    assert [r["trial"] for r in rows] == list(range(6))
    assert {r["state"] for r in rows} == {"UNKNOWN (sweep.h5 does not record the executor)"}
    set_executor(sweep, "debug")
    r = cli("jobs", sweep)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sweep {sweep}: 6 trial job(s)"
    assert lines[1].split() == ["trial", "job", "id", "executor", "state", "node", "status", "log"]
    row = lines[2 + sb.FAILS].split()
    assert row[:4] == [str(sb.FAILS), f"50{sb.FAILS}", "debug", "DEBUG"]
    assert row[-2:] == ["failed", str(sweep / "trials" / f"{sb.FAILS:04d}" / "log")]
    out = json.loads(cli("jobs", sweep, "--json").stdout)
    assert [(o["trial"], o["job_id"], o["executor"], o["node"], o["status"]) for o in out] == [
        (t, f"50{t}", "debug", "n1", s)
        for t, s in enumerate(["stopped", "completed", "stopped", "stopped", "failed", "stopped"])
    ]


def test_a_sweep_without_any_trial_started(tmp_path, cli):
    from twinhpc.config import load_job
    from twinhpc.tune import Sweep

    Sweep.create(load_job(sb.job_file(tmp_path, str(tmp_path / "data"))), tmp_path / "sweep")
    r = cli("jobs", tmp_path / "sweep")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"sweep {tmp_path / 'sweep'}: no trial handed to an executor yet"


def test_local_trials_from_result_files_and_processes(tmp_path):
    """Trial 0 runs (this process's pid), trials 1 and 3 have submitit result files (success,
    error) beside their logs, trial 2's result is in the executor's folder, the others' processes
    are gone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pids = {0: os.getpid()}
    sweep = tmp_path / "sweep"
    local = sweep / "executor" / "local"

    def job_id(trial):
        return str(pids.get(trial, gone.pid if trial not in (1, 2, 3) else 7000 + trial))

    sb.build(tmp_path, str(tmp_path / "data"), job_id=job_id)
    set_executor(sweep, "local")
    local.mkdir(parents=True)
    (sweep / "trials" / "0001" / "7001_0_result.pkl").write_bytes(pickle.dumps(("success", {"run": "x"})))
    (local / "7002_0_result.pkl").write_bytes(pickle.dumps(("error", "Traceback ...")))
    (sweep / "trials" / "0003" / "7003_0_result.pkl").write_bytes(pickle.dumps(("error", "Traceback ...")))
    states = {r["trial"]: r["state"] for r in job_states([sweep])}
    assert states == {
        0: "RUNNING",
        1: "COMPLETED",
        2: "FAILED",
        3: "FAILED",
        4: "ENDED WITHOUT RESULT",
        5: "ENDED WITHOUT RESULT",
    }


def test_the_executor_of_a_trial_is_read_from_its_log_folder(tmp_path):
    """A sweep resumed with another executor: the trials launched by the local executor keep
    their logs in SWEEP/executor/local/, whatever sweep.h5's attribute says now."""
    sweep = tmp_path / "sweep"
    sb.build(
        tmp_path,
        str(tmp_path / "data"),
        log=lambda w: str(sweep / "executor" / ("local" if w.trial < 2 else "debug") / f"{w.trial}.out"),
    )
    set_executor(sweep, "slurm")
    rows = job_states([sweep])
    assert [r["executor"] for r in rows] == ["local", "local", "debug", "debug", "debug", "debug"]


@pytest.fixture
def counted_sacct(tmp_path, monkeypatch):
    """The real sacct and squeue behind wrappers that log each call's arguments."""
    if (
        shutil.which("sacct") is None
        or subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=60).returncode
    ):
        pytest.skip("no working sacct (Slurm accounting) here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("sacct", "squeue"):
        wrapper = bin_dir / tool
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexec {shutil.which(tool)} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_slurm_trials_of_two_sweeps_with_one_squeue_and_one_sacct_call(tmp_path, counted_sacct, cli):
    """Job ids Slurm has never seen are UNKNOWN; all trials of both sweeps are asked in one call."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    sb.build(one, str(tmp_path / "data"), job_id=lambda t: f"{987650 + t}_{t}")
    sb.build(two, str(tmp_path / "data"), job_id=lambda t: f"{987660 + t}")
    set_executor(one / "sweep", "slurm")
    set_executor(two / "sweep", "slurm")
    r = cli("jobs", one / "sweep", two / "sweep")
    assert r.returncode == 0, r.stderr
    calls = counted_sacct.read_text().splitlines()
    # one squeue call for all (the controller's live view), then one sacct call for the ids the
    # controller does not hold (array elements asked by their array's id)
    assert [c.split()[0] for c in calls] == ["squeue", "sacct"], calls
    queued = calls[0].split(" -j ")[1].split()[0].split(",")
    assert sorted(queued) == sorted([f"{987650 + t}_{t}" for t in range(6)] + [f"{987660 + t}" for t in range(6)])
    asked = calls[1].split(" -j ")[1].split()[0].split(",")
    assert sorted(asked) == sorted({f"{987650 + t}" for t in range(6)} | {f"{987660 + t}" for t in range(6)})
    lines = r.stdout.splitlines()
    assert lines[0] == f"sweep {one / 'sweep'}: 6 trial job(s)" and f"sweep {two / 'sweep'}: 6 trial job(s)" in lines
    rows = [line for line in lines if line.split()[2:3] == ["slurm"]]
    assert len(rows) == 12 and all("UNKNOWN (not in sacct/squeue)" in line for line in rows)
    assert "987654_4" in rows[4] and "n1" in rows[4]  # the node sweep.h5 recorded
