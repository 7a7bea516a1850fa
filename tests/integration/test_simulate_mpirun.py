"""``twinhpc simulate`` as a user runs it: under ``mpirun -n 2`` with per-rank logs and rank 0's
progress lines, and a bad job ending both ranks with one error each, exit status 2."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.procs import MPIRUN2, TWINHPC, run
from twinhpc.data.format import Manifest

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "plate.toml"


def test_simulate_on_two_ranks_logs_progress_per_rank(tmp_path):
    out, logs = tmp_path / "plate", tmp_path / "logs"
    sets = ["--set", "simulate.scenarios=24", "--set", "simulate.grid=[16, 16]", "--set", "simulate.steps=10"]
    r = run(
        [*MPIRUN2, *TWINHPC, "simulate", JOB, "--out", out, "--log-dir", logs, "--progress-seconds", "0", *sets],
        cwd=tmp_path,
        timeout=240,
    )
    m = Manifest.load(out)
    assert sum(s.count for s in m.splits) == 24 and m.provenance["ranks"] == 2
    progress = [line for line in r.stderr.splitlines() if "simulate (rank 0:" in line]
    assert progress and "scenarios/s" in progress[-1], r.stderr
    assert "simulate done" in r.stderr and "scenarios/s" in r.stderr
    assert sorted(os.listdir(logs)) == ["twinhpc-simulate.rank0.log", "twinhpc-simulate.rank1.log"]
    assert "simulate done" in (logs / "twinhpc-simulate.rank0.log").read_text()


def test_an_unstable_job_is_one_error_per_rank_and_exit_2(tmp_path):
    r = run(
        [*MPIRUN2, *TWINHPC, "simulate", JOB, "--out", tmp_path / "plate", "--set", "simulate.dt=2.5"],
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    # one error per rank (mpirun may join the two ranks' lines)
    assert r.stderr.count("twinhpc simulate: error: --set simulate.dt=2.5: simulate.dt: 2.5 s is unstable") == 2, (
        r.stderr
    )
    assert r.stderr.count("= 0.1558 s at the ranges' largest k = 60") == 2, r.stderr
    assert os.listdir(tmp_path) == []
