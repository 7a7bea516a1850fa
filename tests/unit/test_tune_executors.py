"""The slurm and dask sweep executors without a cluster: how works are split into throttled
arrays, the batch script submitit would hand to sbatch for a sweep's array (golden), how sacct's
rows and submitit's result files become segment states, and the Dask workers' launcher."""

from __future__ import annotations

import pickle
import tomllib
import warnings

import pytest

from tests.unit.test_batch import check_golden
from twinhpc.config import Job
from twinhpc.tune.executors import slurm as slurm_executor
from twinhpc.tune.executors.dask import _error_line, launcher_prefix
from twinhpc.tune.executors.slurm import ArrayPlan, SlurmTrials, array_plan
from twinhpc.tune.submit import _array_elements, result_error

JOB = """
[data]
dataset = "data/digits"
[model]
name = "mlp"
[slurm]
partition = "cpu"
nodes = 2
ntasks_per_node = 2
cpus_per_task = 2
time = "01:30:00"
job_name = "digits-sweep"
signal_seconds = 180
[sweep]
strategy = "random"
trials = 20
concurrent = 3
[sweep.space."optim.lr"]
loguniform = [1e-4, 1e-1]
"""


def executor(tmp_path) -> SlurmTrials:
    job = Job.from_dict(tomllib.loads(JOB))
    return SlurmTrials(tmp_path / "sweep", job, 3)


@pytest.mark.parametrize(
    "n, max_array_size, concurrent, plan",
    [
        (6, 1001, 3, [(0, 6, 3, None)]),  # one array, throttle %3
        (6, 4, 2, [(0, 3, 1, None), (3, 6, 1, None)]),  # two even arrays in two lanes of %1
        (10, 4, 2, [(0, 4, 1, None), (4, 7, 1, None), (7, 10, 1, 0)]),  # the third waits for the first
        (7, 2, 3, [(0, 2, 1, None), (2, 4, 1, None), (4, 6, 1, None), (6, 7, 1, 0)]),
        (5, 4, 5, [(0, 3, 3, None), (3, 5, 2, None)]),  # throttles add up to concurrent
        (3, 0, 2, [(0, 1, 1, None), (1, 2, 1, None), (2, 3, 1, 0)]),  # no arrays at the site: single jobs
        (0, 4, 2, []),
    ],
)
def test_array_plan_splits_at_max_array_size_and_keeps_the_throttle_over_all_arrays(
    n, max_array_size, concurrent, plan
):
    got = array_plan(n, max_array_size, concurrent)
    assert got == [ArrayPlan(*p) for p in plan]
    assert sum(p.stop - p.start for p in got) == n
    assert all(p.stop - p.start <= max(1, max_array_size) for p in got)
    lanes = [p for p in got if p.after is None]
    assert sum(p.throttle for p in lanes) <= max(concurrent, 1)


def test_sweep_array_sbatch_golden(tmp_path):
    """What submitit hands to sbatch for a sweep's array of 6 segments (throttle %3 = concurrent),
    and for an array that waits for another in its lane; the parameters as submitit holds them."""
    ex = executor(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # submitit warns about no parameter name
        first = ex.sbatch_text(6)
        later = ex.sbatch_text(4, ArrayPlan(6, 10, 1, 0), after="1234")
    folder = str(tmp_path / "sweep")
    check_golden("tune-slurm-array.sh", first.replace(folder, "SWEEP"))
    check_golden("tune-slurm-array-after.sh", later.replace(folder, "SWEEP"))
    params = ex.executor(ArrayPlan(0, 6, 3, None), None)._executor.parameters
    check_golden("tune-slurm-parameters.txt", "".join(f"{k} = {params[k]!r}\n" for k in sorted(params)))
    lines = first.splitlines()
    for line in ("#SBATCH --array=0-5%3", "#SBATCH --ntasks-per-node=2", "#SBATCH --nodes=2", "#SBATCH --requeue"):
        assert line in lines, line
    assert "#SBATCH --dependency=afterany:1234" in later.splitlines() and "#SBATCH --array=0-3%1" in later
    assert "%A_%a_0_log.err" in first and str(tmp_path / "sweep/executor/slurm") in first


def test_sacct_rows_of_pending_array_elements_expand():
    assert _array_elements("12_[1-3,7%2]") == ["12_1", "12_2", "12_3", "12_7"]
    assert _array_elements("12_[5]") == ["12_5"]
    assert _array_elements("12_4") == ["12_4"] and _array_elements("99") == ["99"]


def test_segment_states_from_slurm_and_submitit_results(tmp_path):
    ex = executor(tmp_path)

    def row(state: str, code: str = "0:0") -> dict:
        return {"state": state, "exit_code": code, "nodes": "n1", "submit": "", "start": "", "end": ""}

    for state in ("PENDING", "REQUEUED", "PREEMPTED", "REQUEUE_HOLD"):
        assert ex._state("7_1", row(state)).state == "pending", state
    for state in ("RUNNING", "COMPLETING"):
        assert ex._state("7_1", row(state)).state == "running", state
    ex.unknown_grace = 0.0
    assert ex._state("7_1", None).state == "gone"
    missing = ex._state("7_1", row("COMPLETED"))  # COMPLETED without submitit's result
    assert missing.state == "failed" and "no result from submitit" in missing.error
    (ex.folder / "7_1_0_result.pkl").write_bytes(pickle.dumps(("success", {"verb": "train"})))
    done = ex._state("7_1", row("COMPLETED"))
    assert (done.state, done.node, done.log) == ("done", "n1", str(ex.folder / "7_1_0_log.err"))
    last = "twinhpc.errors.TwinError: twinhpc train t.toml ended with exit status 2"
    traceback = f'Traceback (most recent call last):\n  File "x"\n{last}\n'
    (ex.folder / "7_2_0_result.pkl").write_bytes(pickle.dumps(("error", traceback)))
    failed = ex._state("7_2", row("FAILED", "1:0"))
    assert failed.state == "failed" and failed.log == str(ex.folder / "7_2_0_log.err")
    assert (
        failed.error
        == "Slurm FAILED, exit code 1:0: twinhpc.errors.TwinError: twinhpc train t.toml ended with exit status 2"
    )
    for state in ("TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL"):
        s = ex._state("7_3", row(state, "0:9"))
        assert s.state == "failed" and s.error == f"Slurm {state}, exit code 0:9; see the log", s


def test_result_error_reads_the_traceback_without_unpickling():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    data = pickle.dumps(("error", "Traceback ...\nValueError: bad\n\n", Boom()))
    assert result_error(data) == "ValueError: bad"
    assert result_error(pickle.dumps(("success", "x"))) is None
    assert result_error(data[:5]) is None


def test_dask_workers_start_segments_with_mpirun_or_srun(tmp_path):
    assert launcher_prefix(1, {}) == []
    assert launcher_prefix(4, {}) == ["mpirun", "-n", "4"]
    assert launcher_prefix(4, {"SLURM_JOB_ID": "12"})[:3] == ["srun", "--ntasks", "4"]
    log = tmp_path / "0001-1.log"
    log.write_text("$ mpirun ...\n[rank 0] twinhpc train: error: no data\n-----\nmpirun detected that ...\n----\n")
    assert _error_line(str(log)) == "[rank 0] twinhpc train: error: no data"


def test_the_dask_slurm_cluster_worker_script_carries_the_slurm_table(tmp_path):
    """The batch script of a ``SLURMCluster`` worker (dask_jobqueue writes it; nothing is
    submitted): the job's partition, account, QOS (a directive: SLURMCluster has no argument for
    it), tasks and time."""
    pytest.importorskip("dask_jobqueue")
    from twinhpc.tune.executors.dask import slurm_cluster

    text = JOB.replace('partition = "cpu"', 'partition = "cpu"\naccount = "proj7"\nqos = "debug"')
    cluster = slurm_cluster(Job.from_dict(tomllib.loads(text)), 3, tmp_path)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in ("-p cpu", "-A proj7", "--qos=debug", "--nodes=2", "--ntasks-per-node=2", "-t 01:30:00"):
        assert any(line.endswith(expected) for line in directives), (expected, directives)
    assert "--resources twinhpc_segment=1" in script


def test_a_job_neither_squeue_nor_sacct_lists_counts_as_running_for_the_grace(tmp_path, monkeypatch):
    """A job that has just ended can have left squeue before accounting records it: within the
    grace it is running, unless submitit's result says it succeeded; past the grace an error
    result fails it, no result leaves it gone; a listed job clears its clock."""
    ex = executor(tmp_path)
    now = [1000.0]
    monkeypatch.setattr(slurm_executor.time, "monotonic", lambda: now[0])
    waiting = ex._state("8_0", None)
    assert (waiting.state, waiting.error) == ("running", "in neither squeue nor sacct yet")
    now[0] += ex.unknown_grace - 1
    assert ex._state("8_0", None).state == "running"
    now[0] += 2
    assert ex._state("8_0", None).state == "gone"
    traceback = "Traceback (most recent call last):\nValueError: batch of 7\n"
    (ex.folder / "8_1_0_result.pkl").write_bytes(pickle.dumps(("error", traceback)))
    assert ex._state("8_1", None).state == "running"
    now[0] += ex.unknown_grace
    failed = ex._state("8_1", None)
    assert failed.state == "failed" and failed.error == "Slurm state unknown (not in sacct): ValueError: batch of 7"
    (ex.folder / "8_2_0_result.pkl").write_bytes(pickle.dumps(("success", {"verb": "train"})))
    assert ex._state("8_2", None).state == "done"  # success needs no accounting
    assert ex._state("8_3", None).state == "running"
    ex._state("8_3", {"state": "RUNNING", "exit_code": "", "nodes": "n1", "submit": "", "start": "", "end": ""})
    now[0] += ex.unknown_grace + 1
    assert ex._state("8_3", None).state == "running"  # its clock started again
