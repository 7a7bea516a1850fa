"""The ``dask`` sweep executor with ``address = "slurm"`` on the real single-node Slurm: a
``dask_jobqueue.SLURMCluster`` whose workers are Slurm jobs of 2 tasks, each starting its
segments as ``srun --ntasks 2`` inside its own allocation. Skipped when no Slurm controller answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_tune_dask import wait_states
from tests.integration.test_tune_slurm import make_sweep, needs_slurm, prepared
from twinhpc.io.results import read_results
from twinhpc.tune.executors import make

pytest.importorskip("dask_jobqueue")

__all__ = ["prepared"]  # the module's data fixture


@needs_slurm
def test_slurm_cluster_workers_run_two_rank_segments_with_srun(prepared, mpi_started_here):
    sweep = make_sweep(prepared, "dask-slurm", trials=2, epochs=2)
    works = sweep.next_trials()
    executor = make("dask", sweep.directory, sweep.job, 2, address="slurm")
    try:
        launched = executor.launch(works)
        ids = [entry.job_id for entry in launched]
        states = wait_states(executor, ids, {"done", "failed"}, 400)
    finally:
        executor.close()
    assert [states[j].state for j in ids] == ["done", "done"], states
    for w, entry in zip(works, launched, strict=True):
        results = read_results(w.out)
        assert results["epochs"] == 2 and results["attempts"][0]["ranks"] == 2, results["attempts"]
        first = Path(entry.log).read_text().splitlines()[0]
        assert first.startswith("$ srun --ntasks 2 "), first
    assert list((sweep.directory / "executor/dask/slurm").glob("*.err")), "no Slurm worker logs"
