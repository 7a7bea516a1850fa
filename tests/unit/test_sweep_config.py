"""``[sweep]`` in the job file: its TOML forms, defaults, round trips, and every bad spec rejected
naming the key (the table alone, the job's schema, each value through ``override``, and model
structure keys against the builder's signature without torch)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from twinhpc.config import Job, JobFileError, SweepConfig, load_job
from twinhpc.config.reference import EXAMPLE
from twinhpc.tune.space import check_space

ROOT = Path(__file__).resolve().parents[2]
SWEEP = """
[sweep]
trials = 8

[sweep.space."optim.lr"]
loguniform = [1e-4, 1e-1]
"""


def job_of(text: str) -> Job:
    return Job.from_dict(tomllib.loads(EXAMPLE + text))


def test_a_job_without_sweep_has_none_and_writes_none(tmp_path):
    job = job_of("")
    assert job.sweep is None
    assert "sweep" not in job.to_dict() and "[sweep" not in job.to_toml()


def test_the_sweep_table_reads_with_defaults_and_round_trips():
    job = job_of(
        """
[sweep]
strategy = "random"
trials = 12
concurrent = 2

[sweep.space."optim.lr"]
loguniform = [1e-4, 1e-1]

[sweep.space."optim.schedule"]
choice = ["cosine", "step"]

[sweep.space."train.dropout"]
uniform = [0, 0.5]
grid = [0, 0.25]

[sweep.space."model.structure.hidden"]
int = [16, 128]
log = true
"""
    )
    s = job.sweep
    assert s is not None and s.trials == 12 and s.concurrent == 2 and s.budget == 12
    assert (s.scheduler, s.min_epochs, s.reduction_factor, s.max_epochs, s.seed) == ("asha", 1, 3, None, 0)
    assert [(p.key, p.kind) for p in s.params] == [
        ("optim.lr", "loguniform"),
        ("optim.schedule", "choice"),
        ("train.dropout", "uniform"),
        ("model.structure.hidden", "int"),
    ]
    dropout = s.params[2]
    assert (dropout.low, dropout.high, dropout.grid) == (0.0, 0.5, (0.0, 0.25))  # integers become numbers
    assert s.params[3].log is True and s.params[3].grid_points() == tuple(range(16, 129))
    # the defaults resolved from the job: early stopping's metric (EXAMPLE: val_accuracy), its direction
    assert s.objective(job.train.early_stopping) == ("val_accuracy", "max")
    assert s.max_epochs_of(job.train.epochs) == 20
    assert Job.from_dict(tomllib.loads(job.to_toml())) == job
    assert Job.from_json(job.to_json()) == job


def test_nested_tables_are_the_dotted_keys():
    quoted = job_of(SWEEP).sweep
    nested = job_of("\n[sweep]\ntrials = 8\n[sweep.space.optim.lr]\nloguniform = [1e-4, 1e-1]\n").sweep
    inline = job_of('\n[sweep]\ntrials = 8\nspace = { "optim.lr" = { loguniform = [1e-4, 1e-1] } }\n').sweep
    assert (
        quoted == nested == inline and quoted is not None and quoted.space == {"optim.lr": {"loguniform": [1e-4, 0.1]}}
    )


def test_metric_and_direction_defaults_follow_early_stopping():
    loss = job_of(SWEEP.replace("[sweep]\n", '[sweep]\nmetric = "val_loss"\n')).sweep
    assert loss is not None and loss.objective(job_of("").train.early_stopping) == ("val_loss", "min")
    forced = SweepConfig(trials=1, metric="val_accuracy", direction="min", space={"optim.lr": {"uniform": [0.1, 1]}})
    assert forced.objective(job_of("").train.early_stopping) == ("val_accuracy", "min")


def test_grid_trials_default_to_the_grid_size():
    s = job_of(
        '\n[sweep]\nstrategy = "grid"\n[sweep.space."optim.schedule"]\nchoice = ["cosine", "step", "none"]\n'
        '[sweep.space."train.dropout"]\nuniform = [0, 0.5]\ngrid = [0.1, 0.2]\n'
    ).sweep
    assert s is not None and s.trials is None and s.grid_size() == 6 and s.budget == 6


def _space(key: str, spec: str) -> str:
    return f'\n[sweep]\ntrials = 4\n[sweep.space."{key}"]\n{spec}\n'


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("\n[sweep]\ntrials = 4\nstrategyy = 'grid'\n", "sweep.strategyy", "unknown key (did you mean 'strategy'?)"),
        (_space("optim.lr", "loguniformm = [1e-4, 1]"), 'sweep.space."optim.lr".loguniformm', "unknown key"),
        (_space("optim.lrr", "uniform = [0.1, 1]"), 'sweep.space."optim.lrr"', "unknown key (did you mean 'lr'?)"),
        (_space("optimm.lr", "uniform = [0.1, 1]"), 'sweep.space."optimm.lr"', "unknown table 'optimm'"),
        (_space("optim.lr.x", "uniform = [0.1, 1]"), 'sweep.space."optim.lr.x"', "optim.lr is not a table"),
        (_space("optim.lr", "uniform = [0.2, 0.1]"), 'sweep.space."optim.lr".uniform', "empty range [0.2, 0.1]"),
        (_space("optim.lr", "uniform = [0.1, 0.1]"), 'sweep.space."optim.lr".uniform', "empty range"),
        (_space("data.batch_size", "int = [64, 8]"), 'sweep.space."data.batch_size".int', "empty range [64, 8]"),
        (_space("data.batch_size", "int = [8.5, 64]"), 'sweep.space."data.batch_size".int', "must be an integer"),
        (_space("optim.lr", "loguniform = [0, 0.1]"), 'sweep.space."optim.lr".loguniform', "must be > 0"),
        (_space("optim.lr", "loguniform = [-1, 0.1]"), 'sweep.space."optim.lr".loguniform', "must be > 0"),
        (_space("optim.lr", "uniform = [0.1]"), 'sweep.space."optim.lr".uniform', "must be an array [low, high]"),
        (_space("optim.lr", "uniform = [0.1, 1]\nlog = true"), 'sweep.space."optim.lr".log', "int ranges only"),
        (_space("optim.lr", "uniform = [0.1, 1]\nchoice = [1]"), 'sweep.space."optim.lr"', "exactly one distribution"),
        (_space("optim.lr", "log = true"), 'sweep.space."optim.lr"', "exactly one distribution of choice"),
        (_space("optim.lr", "uniform = [0.1, 1]\ngrid = [2.0]"), 'sweep.space."optim.lr".grid', "outside the range"),
        (_space("optim.name", "choice = []"), 'sweep.space."optim.name".choice', "must be a non-empty array"),
        (_space("optim.name", 'choice = ["sgd", "sgd"]'), 'sweep.space."optim.name".choice', "lists 'sgd' twice"),
        (_space("train.epochs", "int = [1, 4]"), 'sweep.space."train.epochs"', "set sweep.max_epochs"),
        (_space("train.out", 'choice = ["a"]'), 'sweep.space."train.out"', "cannot be searched"),
        (_space("sweep.seed", "choice = [1]"), 'sweep.space."sweep.seed"', "its own settings"),
        ('\n[sweep]\ntrials = 4\n[sweep.space]\n"optim.lr" = 0.1\n', 'sweep.space."optim.lr"', "must be a table"),
        ("\n[sweep]\ntrials = 4\n", "sweep.space", "is empty"),
        (SWEEP.replace("trials = 8", "trials = 0"), "sweep.trials", "must be ≥ 1, got 0"),
        (SWEEP.replace("trials = 8", "reduction_factor = 1"), "sweep.reduction_factor", "must be ≥ 2, got 1"),
        (SWEEP.replace("trials = 8", ""), "sweep.trials", "missing (required with strategy 'random')"),
        (SWEEP.replace("trials = 8", "trials = 8\nstrategy = 'grid'"), 'sweep.space."optim.lr"', "has no grid"),
        (
            SWEEP.replace("trials = 8", "strategy = 'grid'\ntrials = 3") + "grid = [1e-3, 1e-2]\n",
            "sweep.trials",
            "3 is more than the grid's 2 points",
        ),
        (
            SWEEP.replace("trials = 8", "trials = 8\nmetric = 'val_f1'"),
            "sweep.metric",
            "must be one of 'val_loss', 'val_accuracy'",
        ),
        (SWEEP.replace("trials = 8", "trials = 8\nmin_epochs = 21"), "sweep.min_epochs", "21 is above train.epochs 20"),
        (
            SWEEP.replace("trials = 8", "trials = 8\nmin_epochs = 5\nmax_epochs = 4"),
            "sweep.min_epochs",
            "above sweep.max_epochs 4",
        ),
        (
            SWEEP.replace("trials = 8", "trials = 8\nstrategy = 'bayes'"),
            "sweep.strategy",
            "must be one of 'grid', 'random', 'tpe'",
        ),
    ],
)
def test_a_bad_sweep_spec_is_rejected_naming_the_key_and_file(tmp_path, text, key, expected):
    path = tmp_path / "job.toml"
    path.write_text(EXAMPLE + text)
    with pytest.raises(JobFileError) as err:
        load_job(path)
    assert err.value.key == key and expected in err.value.problem, str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "key, spec, expected",
    [
        # each value is applied like --set and validated with the rest of the job
        ("optim.schedule", 'choice = ["cosine", "cosin"]', "value 'cosin' is not valid: must be one of"),
        ("optim.lr", "uniform = [0, 0.1]", "value 0.0 is not valid: must be > 0"),
        ("train.dropout", "uniform = [0.1, 1.5]", "value 1.5 is not valid: must be < 1"),
        ("data.batch_size", "int = [0, 64]", "value 0 is not valid"),
        ("optim.min_lr", "choice = [0.0, 0.01]", "value 0.01 is not valid: 0.01 is above optim.lr 0.003"),
        (
            "train.metric",
            'choice = ["accuracy", "f1"]',  # EXAMPLE's early stopping watches val_accuracy
            "value 'f1' is not valid: train.early_stopping.metric: must be one of 'val_loss', 'val_f1'",
        ),
        # model structure keys against the builder's signature (cnn: in_channels, channels, hidden, ...)
        ("model.structure.hiddn", "int = [8, 64]", "model 'cnn' has no structure key 'hiddn' (did you mean 'hidden'?)"),
        ("model.structure.hidden", 'choice = [32, "wide"]', "value 'wide' is not valid: must be an integer"),
        ("model.structure.hidden", "uniform = [8, 64]", "value 8.0 is not valid: must be an integer"),
    ],
)
def test_each_value_is_checked_against_the_job(key, spec, expected):
    job = job_of(_space(key, spec))  # the table alone is well formed
    with pytest.raises(JobFileError) as err:
        check_space(job)
    assert err.value.key == f'sweep.space."{key}"' and expected in err.value.problem, str(err.value)


def test_a_good_space_passes_the_value_checks():
    check_space(
        job_of(
            _space("model.structure.hidden", "int = [8, 64]\nlog = true")
            + '[sweep.space."optim.schedule"]\nchoice = ["cosine", "step"]\n'
            + '[sweep.space."train.dropout"]\nuniform = [0.0, 0.5]\n'
        )
    )


def test_checking_and_sampling_a_space_imports_no_torch():
    code = """
import sys, tomllib
from twinhpc.config import Job
from twinhpc.config.reference import EXAMPLE
from twinhpc.tune import Sweep
job = Job.from_dict(tomllib.loads(EXAMPLE + '''
[sweep]
trials = 3
[sweep.space."model.structure.hidden"]
int = [8, 64]
'''))
sweep = Sweep.create(job)
work = sweep.next_trials(1)
assert work[0].job.model.structure["hidden"] == work[0].params["model.structure.hidden"]
print(sorted(m for m in ("torch", "mpi4py", "h5py", "submitit") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_builder_signature_read_from_source_is_the_imported_one():
    import inspect

    from twinhpc import models

    def plain(sig: inspect.Signature) -> list[tuple]:
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    for name in models.names():
        assert plain(models.signature(name)) == plain(inspect.signature(models.builder(name))), name
