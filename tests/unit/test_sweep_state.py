"""The sweep's state: sweep.h5 written atomically and read back equal (with h5py alone too), the
samplers (grid order, random from the seed, TPE through Optuna), trial jobs, and a sweep saved
and loaded at any point continuing with exactly the decisions of one that never stopped."""

from __future__ import annotations

import math
import tomllib

import h5py
import numpy as np
import pytest

from twinhpc.config import Job, JobFileError
from twinhpc.config.reference import EXAMPLE
from twinhpc.errors import TwinError
from twinhpc.io.sweep import (
    FORMAT_VERSION,
    SWEEP_FILE,
    DecisionRow,
    ReportRow,
    SweepFile,
    TrialRow,
    read_sweep,
    write_sweep,
)
from twinhpc.tune import Sweep, TuneError

SPACE = """
[sweep.space."optim.lr"]
loguniform = [1e-4, 1e-1]
grid = [1e-3, 1e-2]

[sweep.space."optim.schedule"]
choice = ["cosine", "step"]

[sweep.space."model.structure.hidden"]
int = [16, 128]
log = true
grid = [32, 64]
"""


def sweep_job(settings: str, space: str = SPACE) -> Job:
    return Job.from_dict(tomllib.loads(EXAMPLE + "\n[sweep]\n" + settings + "\n" + space))


# -- sweep.h5 ---------------------------------------------------------------------------------
def a_file() -> SweepFile:
    nan = math.nan
    return SweepFile(
        sweep={"strategy": "random", "trials": 3},
        job={"data": {"dataset": "d"}},
        params={"optim.lr": "float", "data.batch_size": "int", "optim.nesterov": "bool", "optim.name": "str"}
        | {"model.structure.hidden": "json"},
        rungs=[1, 3, 9],
        metric="val_accuracy",
        direction="max",
        budget=3,
        workers=2,
        trials=[
            TrialRow(
                0,
                {
                    "optim.lr": 0.001,
                    "data.batch_size": 64,
                    "optim.nesterov": True,
                    "optim.name": "sgd",
                    "model.structure.hidden": [64, 32],
                },
                "completed",
                rung=2,
                target=-1,
                metric=[0.5, 0.7, 0.9],
                epochs=9,
                busy_s=12.5,
                started_at=100.0,
                ended_at=112.5,
                job_id="4242_0",
                node="n1",
                log="sweep/trials/0000/log",
            ),
            TrialRow(
                1,
                {
                    "optim.lr": 0.01,
                    "data.batch_size": 8,
                    "optim.nesterov": False,
                    "optim.name": "adamw ✓",
                    "model.structure.hidden": {"a": 1},
                },
                "failed",
                metric=[nan, nan, nan],
                error="exit status 1: CUDA error",
            ),
        ],
        reports=[ReportRow(0, 0, 0, 1, 0.5, 101.0), ReportRow(1, 0, 1, 3, 0.7, 105.0)],
        decisions=[
            DecisionRow(0, 0, 0, "start", nan, 0, 0, 0, nan, "new trial 1 of 3", 100.0),
            DecisionRow(1, 0, 0, "pause", 0.5, 1, 1, 0, nan, "rank 1", 101.0),
        ],
        queue=[1],
        created_at=99.0,
        updated_at=112.5,
        first_start=100.0,
        busy_s=12.5,
        utilisation=0.5,
    )


def test_sweep_h5_round_trips(tmp_path):
    f = a_file()
    path = write_sweep(tmp_path / "s" / SWEEP_FILE, f)
    back = read_sweep(path)
    assert repr(back) == repr(f)  # repr: NaN equals NaN
    assert back.trials[1].params["optim.name"] == "adamw ✓" and back.trials[0].params["optim.nesterov"] is True
    assert [p.name for p in (tmp_path / "s").iterdir()] == [SWEEP_FILE]  # no temporary file left


def test_an_empty_sweep_round_trips(tmp_path):
    f = a_file()
    f.trials, f.reports, f.decisions, f.queue = [], [], [], []
    assert repr(read_sweep(write_sweep(tmp_path / SWEEP_FILE, f))) == repr(f)


def test_sweep_h5_reads_with_h5py_alone(tmp_path):
    path = write_sweep(tmp_path / SWEEP_FILE, a_file())
    with h5py.File(path, "r") as h:
        assert h.attrs["format"] == "twinhpc-sweep" and h.attrs["version"] == FORMAT_VERSION
        assert list(h.attrs["rungs"]) == [1, 3, 9] and h.attrs["direction"] == "max"
        trials = h["trials"][()]
        assert trials.dtype.names[:6] == (
            "id",
            "optim.lr",
            "data.batch_size",
            "optim.nesterov",
            "optim.name",
            "model.structure.hidden",
        )
        assert trials.dtype["optim.lr"] == np.float64 and trials.dtype["data.batch_size"] == np.int64
        assert trials.dtype["metric"].shape == (3,)
        assert trials["status"][1] == b"failed" and trials["error"][1].decode().startswith("exit status 1")
        assert list(trials["metric"][0]) == [0.5, 0.7, 0.9]
        assert h["decisions"]["action"][1] == b"pause" and list(h["reports"]["epochs"]) == [1, 3]


def test_reading_a_wrong_file_names_it(tmp_path):
    with pytest.raises(TwinError, match="no such sweep file"):
        read_sweep(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(TwinError, match="text.h5: not an HDF5 file"):
        read_sweep(tmp_path / "text.h5")
    path = write_sweep(tmp_path / SWEEP_FILE, a_file())
    with h5py.File(path, "a") as h:
        h.attrs["version"] = FORMAT_VERSION + 1
    with pytest.raises(TwinError, match=f"sweep.h5: sweep format version {FORMAT_VERSION + 1} is not supported"):
        read_sweep(path)
    with h5py.File(path, "a") as h:
        h.attrs["format"] = "twinhpc-results"
    with pytest.raises(TwinError, match="not a twinhpc sweep file"):
        read_sweep(path)


def test_an_unwritable_folder_is_named_and_leaves_nothing(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(TwinError, match="cannot write the sweep file"):
        write_sweep(tmp_path / "file" / SWEEP_FILE, a_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# -- samplers and trial jobs -------------------------------------------------------------------
def test_grid_takes_the_product_in_order_the_last_key_fastest():
    sweep = Sweep.create(sweep_job('strategy = "grid"\nconcurrent = 8'), now=0.0)
    assert sweep.settings.budget == 8
    work = sweep.next_trials(now=0.0)
    assert [tuple(w.params.values()) for w in work] == [
        (lr, schedule, hidden) for lr in (1e-3, 1e-2) for schedule in ("cosine", "step") for hidden in (32, 64)
    ]


def test_random_trials_depend_on_the_seed_only():
    def params(seed: int, concurrent: int) -> list[dict]:
        sweep = Sweep.create(sweep_job(f"trials = 6\nseed = {seed}\nconcurrent = {concurrent}"), now=0.0)
        out: dict[int, dict] = {}
        while not sweep.finished:
            for w in sweep.next_trials(now=0.0):
                out.setdefault(w.trial, w.params)
                if w.trial % 2:  # odd trials crash, even ones report
                    sweep.fail(w.trial, "x", now=1.0)
                else:
                    sweep.report(w.trial, w.rung, 0.5 + w.trial, now=1.0)
        return [out[t] for t in range(6)]

    first = params(seed=1, concurrent=1)
    assert params(seed=1, concurrent=3) == first  # whatever ran before, in whatever batches
    assert params(seed=2, concurrent=1) != first
    for p in first:
        assert 1e-4 <= p["optim.lr"] <= 1e-1 and p["optim.schedule"] in ("cosine", "step")
        assert isinstance(p["model.structure.hidden"], int) and 16 <= p["model.structure.hidden"] <= 128


def test_a_trials_job_has_its_values_its_folder_and_the_full_epochs(tmp_path):
    sweep = Sweep.create(sweep_job("trials = 2\nmax_epochs = 9\nmin_epochs = 1"), tmp_path / "sw", now=0.0)
    (work,) = sweep.next_trials(1, now=0.0)
    job = work.job
    assert job.sweep is None and job.train.epochs == 9 and work.epochs == 1 and work.start_epochs == 0
    assert job.train.out == str(tmp_path / "sw" / "trials" / "0000") and work.out == tmp_path / "sw" / "trials" / "0000"
    assert job.optim.lr == work.params["optim.lr"] and job.optim.schedule == work.params["optim.schedule"]
    assert job.model.structure["hidden"] == work.params["model.structure.hidden"]
    assert job.model.structure["in_channels"] == 1  # the rest of the base job's structure kept


def test_a_trial_whose_values_together_make_a_bad_job_fails_naming_the_key(tmp_path):
    # each value alone fits the job (lr 3e-3); lr 1e-3 with min_lr 2e-3 does not
    space = '[sweep.space."optim.lr"]\nchoice = [1e-3, 1e-2]\n[sweep.space."optim.min_lr"]\nchoice = [0.0, 2e-3]\n'
    sweep = Sweep.create(sweep_job('strategy = "grid"\nconcurrent = 2', space), tmp_path, now=0.0)
    work = sweep.next_trials(now=0.0)
    assert [w.trial for w in work] == [0, 2]  # trial 1 failed at once, trial 2 took its worker
    assert sweep.status(1) == "failed"
    error = sweep.to_file().trials[1].error
    assert "sweep trial 1" in error and "optim.min_lr" in error and "above optim.lr" in error


def test_events_for_trials_that_are_not_running_are_refused():
    sweep = Sweep.create(sweep_job("trials = 2"), now=0.0)
    with pytest.raises(TuneError):
        sweep.started(0, now=0.0)
    sweep.next_trials(1, now=0.0)
    with pytest.raises(TuneError, match="segment ends at rung 0"):
        sweep.report(0, 2, 0.5, now=1.0)


def test_tpe_samples_in_range_and_the_same_history_gives_the_same_trial():
    pytest.importorskip("optuna", reason="strategy tpe needs optuna (not installed here)")
    job = sweep_job('strategy = "tpe"\ntrials = 14\nconcurrent = 2\nscheduler = "none"\nmax_epochs = 2')
    sweep = Sweep.create(job, now=0.0)
    clock = 0.0
    while not sweep.finished:
        for w in sweep.next_trials(now=clock):
            clock += 1.0
            sweep.report(w.trial, 0, objective(w.params, 2), now=clock)
    params = [sweep.params(t) for t in range(14)]
    for p in params:
        assert 1e-4 <= p["optim.lr"] <= 1e-1 and 16 <= p["model.structure.hidden"] <= 128
    # trial 13 again, from the same history: the same values
    assert sweep.sampler.sample(13, sweep.history(13)) == params[13]


def test_tpe_learns_from_the_history():
    pytest.importorskip("optuna", reason="strategy tpe needs optuna (not installed here)")
    from twinhpc.tune import Observation

    sweep = Sweep.create(sweep_job('strategy = "tpe"\ntrials = 40'), now=0.0)
    lrs = np.geomspace(1e-4, 1e-1, 20)

    def history(sign: float) -> list:
        """20 finished trials spread over lr; larger is better: sign -1 favours small lr."""
        params = [{"optim.lr": float(lr), "optim.schedule": "cosine", "model.structure.hidden": 32} for lr in lrs]
        return [Observation(p, "completed", {20: sign * math.log10(p["optim.lr"])}) for p in params]

    small = [sweep.sampler.sample(i, history(-1.0))["optim.lr"] for i in range(20, 25)]
    large = [sweep.sampler.sample(i, history(+1.0))["optim.lr"] for i in range(20, 25)]
    assert max(small) < 1e-3 < min(large), (small, large)


# -- save, load, continue ----------------------------------------------------------------------
def objective(params: dict, epochs: int) -> float:
    """A deterministic accuracy: best near lr = 3e-3, growing with epochs."""
    return (
        1.0 - abs(math.log10(params["optim.lr"]) + 2.5) / 4 - 0.3 / epochs + 0.01 * (params["optim.schedule"] == "step")
    )


class Simulation:
    """Workers that each take ``epochs - start_epochs`` seconds; the earliest to finish reports
    (ties: the lower trial id); trial 3 crashes in its first segment."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.running: dict[int, tuple[float, object]] = {}

    def event(self, sweep: Sweep) -> None:
        """One event: fill the free workers, then the next segment to end reports or fails."""
        for w in sweep.next_trials(now=self.clock):
            sweep.started(w.trial, job_id=f"job-{w.trial}-{w.rung}", node="n1", log=f"log-{w.trial}", now=self.clock)
            self.running[w.trial] = (self.clock + (w.epochs - w.start_epochs), w)
        if not self.running:
            return
        trial = min(self.running, key=lambda t: (self.running[t][0], t))
        end, w = self.running.pop(trial)
        self.clock = end
        if trial == 3 and w.rung == 0:
            sweep.fail(trial, "exit status 1", log=f"log-{trial}", now=self.clock)
        else:
            sweep.report(trial, w.rung, objective(w.params, w.epochs), now=self.clock)


def run(sweep: Sweep, sim: Simulation, events: int | None = None) -> int:
    """Run ``events`` events (all: to the end); how many ran."""
    n = 0
    while not sweep.finished and (events is None or n < events):
        sim.event(sweep)
        n += 1
        assert n < 500, "the sweep does not end"
    return n


STRATEGIES = [
    "strategy = 'random'\ntrials = 12",
    "strategy = 'grid'",
    "strategy = 'tpe'\ntrials = 12",
]


@pytest.mark.parametrize("settings", STRATEGIES, ids=["random", "grid", "tpe"])
def test_a_saved_and_loaded_sweep_decides_exactly_as_one_that_never_stopped(tmp_path, settings):
    if "tpe" in settings:
        pytest.importorskip("optuna", reason="strategy tpe needs optuna (not installed here)")
    job = sweep_job(settings + "\nconcurrent = 3\nmin_epochs = 1\nreduction_factor = 2\nmax_epochs = 4")
    whole = Sweep.create(job, tmp_path / "whole", now=0.0)
    events = run(whole, Simulation())
    assert whole.finished and whole.rungs == (1, 2, 4)
    actions = {d.action for d in whole.decisions}
    assert {"start", "promote", "pause", "complete", "fail", "stop"} <= actions, actions
    expected = repr(whole.to_file())
    assert repr(Sweep.load(tmp_path / "whole").to_file()) == expected  # the file holds everything
    for cut in (1, events // 3, 2 * events // 3):
        folder = tmp_path / f"cut{cut}"
        sim = Simulation()
        run(Sweep.create(job, folder, now=0.0), sim, events=cut)
        resumed = Sweep.load(folder)  # the driver restarts from sweep.h5 alone
        assert not resumed.finished
        run(resumed, sim)
        assert repr(resumed.to_file()) == expected, f"after a stop at event {cut} of {events}"
        assert repr(Sweep.load(folder).to_file()) == expected


def test_the_file_tracks_the_trials_and_the_workers_busy_time(tmp_path):
    job = sweep_job("trials = 4\nconcurrent = 2\nscheduler = 'none'\nmax_epochs = 3")
    sweep = Sweep.create(job, tmp_path, now=0.0)
    run(sweep, Simulation())
    f = read_sweep(tmp_path / SWEEP_FILE)
    assert [t.status for t in f.trials] == ["completed", "completed", "completed", "failed"]
    # four trials of 3 s on two workers, always busy: 6 s of wall time, 12 s busy (trial 3 fails
    # at the end of its segment)
    assert (f.first_start, f.updated_at, f.busy_s, f.utilisation) == (0.0, 6.0, 12.0, 1.0)
    t0 = f.trials[0]
    assert (t0.epochs, t0.busy_s, t0.job_id, t0.node, t0.log, t0.rung) == (3, 3.0, "job-0-0", "n1", "log-0", 0)
    assert f.trials[3].error == "exit status 1" and f.trials[3].log == "log-3"
    assert f.metric == "val_accuracy" and f.direction == "max" and f.rungs == [3]
    assert Job.from_dict(f.job) == job and f.sweep == job.sweep.to_dict()
    metrics = {t: objective(sweep.params(t), 3) for t in range(3)}
    best = max(metrics, key=lambda t: metrics[t])
    assert sweep.best() == (best, metrics[best])


def test_create_rejects_a_job_without_a_sweep_or_with_a_bad_value():
    with pytest.raises(JobFileError, match="no \\[sweep\\] table"):
        Sweep.create(Job.from_dict(tomllib.loads(EXAMPLE)))
    bad = sweep_job("trials = 2", '[sweep.space."optim.schedule"]\nchoice = ["cosine", "linear"]\n')
    with pytest.raises(JobFileError, match="sweep.space.\"optim.schedule\": value 'linear' is not valid"):
        Sweep.create(bad)


def test_create_never_overwrites_a_sweep(tmp_path):
    Sweep.create(sweep_job("trials = 2"), tmp_path, now=0.0)
    with pytest.raises(TwinError, match="holds a sweep already"):
        Sweep.create(sweep_job("trials = 3"), tmp_path, now=1.0)
    assert Sweep.load(tmp_path).settings.trials == 2


def test_every_kind_of_choice_reads_back_as_it_was(tmp_path):
    space = (
        '[sweep.space."optim.weight_decay"]\nchoice = [0, 0.01]\n'  # an integer and a number
        '[sweep.space."optim.nesterov"]\nchoice = [true, false]\n'
        '[sweep.space."train.early_stopping"]\nchoice = [{ patience = 2, metric = "val_loss" }, { patience = 0 }]\n'
        '[sweep.space."data.batch_size"]\nchoice = [16, 32]\n'
    )
    sweep = Sweep.create(sweep_job('strategy = "grid"\nconcurrent = 16', space), tmp_path, now=0.0)
    work = sweep.next_trials(now=0.0)
    assert len(work) == 16 and {type(w.params["optim.weight_decay"]) for w in work} == {int, float}
    assert read_sweep(tmp_path / SWEEP_FILE).params == {
        "optim.weight_decay": "json",
        "optim.nesterov": "bool",
        "train.early_stopping": "json",
        "data.batch_size": "int",
    }
    loaded = Sweep.load(tmp_path)
    assert [repr(loaded.params(w.trial)) for w in work] == [repr(w.params) for w in work]
    assert loaded.trial_job(5) == work[5].job
