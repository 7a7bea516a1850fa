"""The ``dask`` sweep executor on a real ``LocalCluster`` of 2 single-threaded worker processes:
two-rank segments started by the workers as ``mpirun -n 2``, a crashing segment reported failed
with its log, a key the executor does not hold reported gone. Needs mpirun only."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_tune_slurm import make_sweep, prepared
from twinhpc.config import override
from twinhpc.io.results import read_results
from twinhpc.tune.executors import make

pytest.importorskip("dask.distributed")

__all__ = ["prepared"]  # the module's data fixture


def wait_states(executor, ids, want, deadline_s: float, polls: list | None = None) -> dict:
    """Poll ``states`` until every id is in ``want``; each poll's states go to ``polls``."""
    deadline = time.monotonic() + deadline_s
    while True:
        states = executor.states(ids)
        if polls is not None:
            polls.append({j: s.state for j, s in states.items()})
        if all(s.state in want for s in states.values()):
            return states
        assert time.monotonic() < deadline, f"not all {want} within {deadline_s:.0f} s: {states}"
        time.sleep(0.5)


def test_local_cluster_runs_two_rank_segments_a_crash_fails_with_its_log_and_an_unknown_key_is_gone(
    prepared, mpi_started_here
):
    sweep = make_sweep(prepared, "dask-sweep", trials=4, epochs=2)
    works = sweep.next_trials()
    assert len(works) == 4
    bad = works[3]
    works[3] = dataclasses.replace(bad, job=override(bad.job, {"data.dataset": str(prepared / "data/missing")}))
    executor = make("dask", sweep.directory, sweep.job, 2)
    try:
        assert len(executor.client.scheduler_info()["workers"]) == 2
        launched = executor.launch(works)
        ids = [launched_.job_id for launched_ in launched]
        assert len(set(ids)) == 4 and [launched_.trial for launched_ in launched] == [0, 1, 2, 3]
        polls: list = []
        states = wait_states(executor, ids, {"done", "failed"}, 240, polls)
        assert executor.states(["twinhpc-segment-0000-1-deadbeef"])["twinhpc-segment-0000-1-deadbeef"].state == "gone"
    finally:
        executor.close()
    assert [states[j].state for j in ids] == ["done", "done", "done", "failed"], states
    running = [sum(state == "running" for state in poll.values()) for poll in polls]
    assert 1 <= max(running) <= 2, polls  # 2 single-threaded workers
    assert polls[0][ids[3]] in ("pending", "running"), polls[0]
    for w, launched_ in zip(works[:3], launched[:3], strict=True):
        results = read_results(w.out)
        assert results["epochs"] == 2 and results["attempts"][0]["ranks"] == 2, results["attempts"]
        assert launched_.log == str(sweep.directory / "executor/dask" / f"{w.trial:04d}-1.log")
        assert "mpirun -n 2" in Path(launched_.log).read_text().splitlines()[0]
    crashed = states[ids[3]]
    assert crashed.log == str(sweep.directory / "executor/dask/0003-1.log"), crashed
    assert crashed.error.startswith("exit status 2 (failed): ") and "missing" in crashed.error, crashed.error
    assert "missing" in Path(crashed.log).read_text()
    assert np.isfinite(read_results(works[0].out)["metrics"]["val_loss"]).all()
