"""``twinhpc submit`` (twinhpc/tune/submit.py): submitit's parameters and batch script from the
job's [slurm] table (golden), the submitted callable and its checkpoint, and whole submissions
through submitit's debug executor (in this process). tests/integration/test_submit.py runs the
slurm and local executors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import submitit

from tests.conftest import prepare_image_job
from tests.fixtures import small_cnn_job
from tests.unit.test_batch import check_golden
from twinhpc.config import Job, load_job
from twinhpc.errors import TwinError
from twinhpc.io.results import read_results
from twinhpc.tune.submit import RECORD, VerbCall, job_states, make_executor, read_record, submit

FULL = {
    "data": {"dataset": "data/digits", "batch_size": 64},
    "model": {"name": "cnn"},
    "slurm": {
        "partition": "cpu",
        "nodes": 2,
        "ntasks_per_node": 4,
        "cpus_per_task": 2,
        "gpus_per_node": 1,
        "mem_gb": 7.5,
        "time": "1-00:00:30",
        "account": "proj",
        "qos": "normal",
        "job_name": "digits",
        "constraint": "v100",
        "signal_seconds": 300,
        "additional": {"mail-type": "END"},
    },
}


def test_submitit_parameters_golden_and_without_deprecation_warnings(tmp_path):
    job = Job.from_dict(FULL)
    params = job.slurm.submitit_parameters()
    text = "".join(f"{k} = {v!r}\n" for k, v in params.items())
    check_golden("submitit-parameters.txt", text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated name warns: this fails
        ex = make_executor("slurm", tmp_path / "submitit", job)
    sbatch = ex._executor._make_submission_file_text("COMMAND", "UID")  # what submitit hands to sbatch
    check_golden("submitit-sbatch.sh", sbatch.replace(str(tmp_path), "RUN"))
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --time=1441",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --requeue",
        "#SBATCH --partition=cpu",
    ):
        assert line in sbatch.splitlines(), line


def test_local_executor_runs_one_task():
    """submitit's local executor: one task (it starts mpirun -n N itself), the job's time limit."""
    job = Job.from_dict(FULL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = make_executor("local", "/tmp/unused-submitit-folder", job)
    assert ex._executor.parameters["tasks_per_node"] == 1 and ex._executor.parameters["timeout_min"] == 1441
    with pytest.raises(TwinError, match="'pbs' is not one of local, slurm, debug"):
        make_executor("pbs", "/tmp/unused", job)


def test_the_call_its_command_and_its_checkpoint():
    call = VerbCall("train", "RUN/train.job.toml", "RUN", ranks=2, launcher="mpirun", python="py")
    assert call.command(restart=False) == [
        "mpirun",
        "-n",
        "2",
        "py",
        "-m",
        "twinhpc",
        "train",
        "RUN/train.job.toml",
        "--out",
        "RUN",
    ]
    assert call.command(restart=True)[-1] == "--resume"
    again = call.checkpoint()  # what submitit saves in place of the submitted pickle before it requeues
    assert isinstance(again, submitit.core.utils.DelayedSubmission) and isinstance(
        call, submitit.helpers.Checkpointable
    )
    assert again.function == VerbCall("train", "RUN/train.job.toml", "RUN", 2, "mpirun", (), True, "py")
    validate = VerbCall("validate", "J", "RUN", args=("--split", "test"), python="py")
    assert validate.command(restart=True) == [
        "py",
        "-m",
        "twinhpc",
        "validate",
        "J",
        "--run",
        "RUN",
        "--log-dir",
        "RUN/logs",
        "--split",
        "test",
    ]


JOB = small_cnn_job("{dir}/data", 0.1, "epochs = 2", "[slurm]\ntime = 5\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """48 training and 16 validation 8×8 grey images of 3 classes, preprocessed; the current
    directory during each test (its runs are written relative to it)."""
    work = tmp_path_factory.mktemp("submit")
    prepare_image_job(work, JOB)
    return work


def test_debug_executor_trains_validates_and_records(work, monkeypatch):
    monkeypatch.chdir(work)
    job = submit("job.toml", "train", "debug", overrides=["train.epochs=3"], run="runs/a")
    result = job.result()  # the debug executor runs the call here
    assert result["verb"] == "train" and result["run"] == "runs/a" and result["step"] == 3 * 6
    assert read_results(work / "runs/a")["epochs"] == 3
    frozen = load_job(work / "runs/a/train.job.toml")
    assert frozen.train.epochs == 3 and frozen.train.out == "runs/a"
    report = submit("job.toml", "validate", "debug", run="runs/a").result()["report"]
    assert report["n"] == 16 and report["split"] == "val"
    records = read_record(work / "runs/a")
    assert [(r["verb"], r["executor"], r["overrides"]) for r in records] == [
        ("train", "debug", ["train.epochs=3"]),
        ("validate", "debug", []),
    ]
    assert json.loads((work / "runs/a" / RECORD).read_text())["submissions"] == records
    states = job_states([work / "runs"])  # a folder of runs, like a sweep's
    assert [s["job_id"] for s in states] == [r["job_id"] for r in records]
    assert all(s["state"].startswith("IN-PROCESS") for s in states)


def test_resume_continues_and_a_held_run_is_refused_without_it(work, monkeypatch):
    monkeypatch.chdir(work)
    submit("job.toml", "train", "debug", run="runs/b").result()
    with pytest.raises(TwinError, match=r"runs/b: holds a run already; continue it with --resume"):
        submit("job.toml", "train", "debug", run="runs/b")
    longer = submit("job.toml", "train", "debug", overrides=["train.epochs=4"], run="runs/b", resume=True).result()
    assert longer["status"] == "finished" and longer["step"] == 4 * 6
    attempts = read_results(work / "runs/b")["attempts"]
    assert [(a["first_step"], a["last_step"]) for a in attempts] == [(0, 12), (12, 24)]


def test_default_run_directory_and_bad_requests(work, monkeypatch):
    monkeypatch.chdir(work)
    job = submit("job.toml", "train", "debug", overrides=["train.epochs=1"])
    run = Path(job.result()["run"])
    assert run.parent == Path("runs") and run.name.startswith("job-") and (work / run / "results.h5").exists()
    with pytest.raises(TwinError, match="verb 'report': submit one of train, validate, predict"):
        submit("job.toml", "report", "debug")
    with pytest.raises(TwinError, match="optim.lr"):
        submit("job.toml", "train", "debug", overrides=["optim.lr=fast"])
    assert not any(p.name.endswith(".tmp") for p in (work / run).iterdir())  # no temporary left


def test_command_line_debug_submission_and_jobs(work, monkeypatch, capsys):
    from twinhpc.cli.main import main

    monkeypatch.chdir(work)
    assert (
        main(["submit", "train", "job.toml", "--executor", "debug", "--out", "runs/c", "--set", "train.epochs=1"]) == 0
    )
    first, result = capsys.readouterr().out.splitlines()
    assert first.startswith("DEBUG_") and " runs/c (output: " in first
    assert json.loads(result) == {"verb": "train", "run": "runs/c", "status": "finished", "step": 6}
    assert main(["jobs", "runs/c"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert row.split()[:4] == [first.split()[0], "train", "debug", "1"] and "IN-PROCESS" in row
    assert main(["jobs", "runs/nothing"]) == 2
    assert "twinhpc jobs: error: runs/nothing: no such run directory" in capsys.readouterr().err


#: calls of _record: what unpickling _Boom would have run
_RAN: list[str] = []


def _record(what: str) -> None:
    _RAN.append(what)


class _Boom:
    """Unpickling it calls ``_record`` (a stand-in for any code a pickle can run)."""

    def __reduce__(self):
        return (_record, ("unpickled",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_outcome_of_a_result_file_is_read_without_unpickling_it(protocol):
    import pickle

    from twinhpc.tune.submit import result_outcome

    assert result_outcome(pickle.dumps(("success", {"report": np.arange(3)}), protocol=protocol)) == "success"
    assert result_outcome(pickle.dumps(("error", "Traceback ..."), protocol=protocol)) == "error"
    boom = pickle.dumps(("success", _Boom()), protocol=protocol)
    assert result_outcome(boom) == "success"
    assert result_outcome(boom[:3]) is None  # a file still being written
    assert _RAN == []
    pickle.loads(boom)  # the same bytes do run code when unpickled
    assert _RAN == ["unpickled"]
    _RAN.clear()
