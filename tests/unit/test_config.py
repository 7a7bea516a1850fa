"""Job files: every key validated and named in errors, ``--set`` overrides, TOML/JSON round trips,
the signature-as-schema check of ``[model.structure]``, and the generated reference."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
import warnings
from pathlib import Path

import pytest

from twinhpc.config import Job, JobFileError, OptimConfig, SlurmConfig, TrainConfig, check_structure, load_job, override
from twinhpc.config.fields import Table
from twinhpc.config.reference import EXAMPLE, reference
from twinhpc.errors import TwinError

ROOT = Path(__file__).resolve().parents[2]
MODEL = '[model]\nname = "cnn"\n'
MINIMAL = '[data]\ndataset = "data/x"\n\n' + MODEL


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- reading ----------------------------------------------------------------------------------
def test_minimal_job_takes_the_documented_defaults(tmp_path):
    job = load_job(write(tmp_path, MINIMAL, "digits.toml"))
    assert job.data.dataset == "data/x" and job.model.name == "cnn" and job.model.structure == {}
    assert job.optim == OptimConfig() and job.data.batch_size == 64
    assert job.train.out == "runs/digits" and job.slurm.job_name == "digits"  # from the file's name
    assert job.train.task_loss == "cross_entropy" and job.train.task_metric == "accuracy"
    assert job.preprocessed_dir == "data/x-pre"


def test_the_reference_example_loads(tmp_path):
    job = load_job(write(tmp_path, EXAMPLE))
    assert job.train.early_stopping.patience == 5
    assert job.optim.lr == 3e-3 and job.slurm.minutes == 30
    assert job.model.structure == {"in_channels": 1, "classes": 10, "input_size": 8}


def test_values_are_normalised(tmp_path):
    job = load_job(write(tmp_path, MINIMAL + "[optim]\nlr = 1\nbetas = [0, 0.5]\n"))
    assert job.optim.lr == 1.0 and isinstance(job.optim.lr, float)
    assert job.optim.betas == (0.0, 0.5)
    job = load_job(write(tmp_path, MINIMAL.replace('dataset = "data/x"', 'dataset = "d"\ninputs = "image"')))
    assert job.data.inputs == ("image",)


@pytest.mark.parametrize(
    "extra, key, expected",
    [
        ("[optim]\nlrr = 0.1\n", "optim.lrr", "unknown key (did you mean 'lr'?)"),
        ("[trian]\nepochs = 3\n", "trian", "unknown table (did you mean 'train'?)"),
        ('[optim]\nlr = "fast"\n', "optim.lr", "must be a number, got string 'fast'"),
        ("[train]\nepochs = true\n", "train.epochs", "must be an integer, got boolean True"),
        ("[train]\nepochs = 2.5\n", "train.epochs", "must be an integer, got float 2.5"),
        ('[optim]\nname = "rmsprop"\n', "optim.name", "must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"),
        ("[optim]\nlr = 0\n", "optim.lr", "must be > 0, got 0"),
        ("[optim]\nbetas = [0.9, 1.0]\n", "optim.betas", "must be < 1, got 1.0"),
        ("[optim]\nbetas = [0.9]\n", "optim.betas", "must be an array of 2 numbers"),
        ('[optim]\nschedule = "warmup_cosine"\n', "optim.warmup_steps", "must be > 0 with schedule"),
        ('[slurm]\ntime = "1h"\n', "slurm.time", '"HH:MM:SS"'),
        ("[slurm]\ntime = 0\n", "slurm.time", "at least one minute"),
        ("[slurm]\ntime = 01:00:00\n", "slurm.time", 'write it as a string: "01:00:00"'),
        ("[slurm.additional]\nmail = [1]\n", "slurm.additional", "option 'mail' must be a string"),
        ('[train]\ncheckpoint_every = "never"\n', "train.checkpoint_every", 'or "epoch"'),
        ('[train]\ntask = "regression"\nloss = "cross_entropy"\n', "train.loss", "does not fit task 'regression'"),
        ('[train]\nmetric = "r2"\n', "train.metric", "does not fit task 'classification'"),
        ("[train.early_stopping]\npatiense = 3\n", "train.early_stopping.patiense", "did you mean 'patience'"),
        ('[train.early_stopping]\nmetric = "val_f1"\n', "train.early_stopping.metric", "'val_loss', 'val_accuracy'"),
        ("[train]\nearly_stopping = 3\n", "train.early_stopping", "must be a table, got integer 3"),
        ('[preprocess.text]\nrepresentation = "bow"\n', "preprocess.text.representation", "'tfidf', 'sequence'"),
        ('[preprocess.text]\nstop_words = ["the", ""]\n', "preprocess.text.stop_words", "empty words"),
        (
            '[preprocess.text]\ntokenizer = "bert"\n',
            "preprocess.text.tokenizer",
            "must be one of 'auto', 'words', 'minilm', got 'bert'",
        ),
        (
            '[preprocess.text]\ntokenizer = "minilm"\n',
            "preprocess.text.representation",
            "must be \"sequence\" with tokenizer 'minilm'",
        ),
        (
            '[preprocess.text]\ntokenizer = "minilm"\nrepresentation = "sequence"\nmax_len = 600\n',
            "preprocess.text.max_len",
            "must be ≤ 512 with tokenizer 'minilm'",
        ),
        ('[data]\ndataset = "d"\ninputs = []\n', "data.inputs", "at least one field"),
    ],
)
def test_a_bad_key_is_named_with_the_file_and_what_was_expected(tmp_path, extra, key, expected):
    path = write(tmp_path, (MODEL if extra.startswith("[data]") else MINIMAL) + extra)
    with pytest.raises(JobFileError) as err:
        load_job(path)
    assert err.value.key == key
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert expected in str(err.value)


def test_a_missing_required_key_is_named(tmp_path):
    with pytest.raises(JobFileError, match=r"job.toml: data.dataset: missing \(required\)"):
        load_job(write(tmp_path, MODEL))
    with pytest.raises(JobFileError, match=r"model.name: missing \(required\)"):
        load_job(write(tmp_path, '[data]\ndataset = "d"\n'))


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(TwinError, match=r"nope.toml: no such job file"):
        load_job(tmp_path / "nope.toml")
    path = write(tmp_path, MINIMAL + "[optim\n")
    with pytest.raises(TwinError, match=rf"{path}: not valid TOML \(.*line 6"):
        load_job(path)


# -- [preprocess.text] tokenizer ----------------------------------------------------------------
MINILM = '[data]\ndataset = "d"\n\n[model]\nname = "minilm"\n\n[preprocess.text]\nrepresentation = "sequence"\n'


@pytest.mark.parametrize(
    "model, tokenizer, resolved",
    [
        ("transformer", None, "words"),
        ("transformer", "words", "words"),
        ("transformer", "minilm", "minilm"),
        ("minilm", None, "minilm"),
        ("minilm", "auto", "minilm"),
        ("minilm", "minilm", "minilm"),
    ],
)
def test_the_tokenizer_key_is_read_and_auto_follows_the_model(tmp_path, model, tokenizer, resolved):
    text = MINILM.replace('"minilm"', f'"{model}"')
    if tokenizer is not None:
        text += f'tokenizer = "{tokenizer}"\n'
    job = load_job(write(tmp_path, text))
    assert job.preprocess.text.tokenizer == (tokenizer or "auto")
    assert job.text_tokenizer == resolved
    assert load_job(write(tmp_path, job.to_toml(), "again.toml")) == job
    assert Job.from_json(job.to_json()) == job


def test_model_minilm_with_the_words_tokenizer_is_an_error_naming_the_key_and_file(tmp_path):
    path = write(tmp_path, MINILM + 'tokenizer = "words"\n', "imdb_minilm.toml")
    with pytest.raises(JobFileError) as err:
        load_job(path)
    assert err.value.key == "preprocess.text.tokenizer" and err.value.where == str(path)
    assert str(err.value).startswith(f'{path}: preprocess.text.tokenizer: is "words", but model "minilm"')
    assert 'set it to "minilm"' in str(err.value)
    # from --set, the error names the --set item
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, MINILM, "ok.toml"), overrides=["preprocess.text.tokenizer=words"])
    assert err.value.where == "--set preprocess.text.tokenizer=words"
    # model minilm (tokenizer auto) needs token ids, within MiniLM's positions
    with pytest.raises(
        JobFileError,
        match=r"job.toml: preprocess.text.representation: must be \"sequence\" "
        r"with tokenizer 'auto' and model \"minilm\"",
    ):
        load_job(write(tmp_path, MINILM.replace('representation = "sequence"', "")))
    with pytest.raises(JobFileError, match=r"preprocess.text.max_len: must be ≤ 512"):
        load_job(write(tmp_path, MINILM + "max_len = 513\n"))


# -- overrides --------------------------------------------------------------------------------
def test_overrides_are_parsed_as_toml_values_and_applied_in_order(tmp_path):
    job = load_job(
        write(tmp_path, MINIMAL),
        overrides=[
            "optim.lr=1",
            "train.epochs=3",
            "train.epochs=4",
            "data.dataset=other/dir",
            "slurm.time=01:30:00",
            "train.early_stopping.patience=2",
            "model.structure.hidden=128",
            'model.structure.name="x y"',
            "slurm.additional.mail-type=END",
            "train.out=runs/a b",
        ],
    )
    assert job.optim.lr == 1.0 and job.train.epochs == 4 and job.data.dataset == "other/dir"
    assert job.slurm.time == "01:30:00" and job.slurm.minutes == 90
    assert job.train.early_stopping.patience == 2 and job.train.out == "runs/a b"
    assert job.model.structure == {"hidden": 128, "name": "x y"}
    assert job.slurm.additional == {"mail-type": "END"}


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("optim.lrr=0.1", "optim.lrr", "did you mean 'lr'"),
        ("optimizer.lr=0.1", "optimizer.lr", "unknown table"),
        ("train.epochs.x=1", "train.epochs.x", "train.epochs is not a table"),
        ("optim.lr=fast", "optim.lr", "must be a number, got string 'fast'"),
        ("train.early_stopping.mode=up", "train.early_stopping.mode", "'auto', 'min', 'max'"),
        ("optim.lr", "optim.lr", "expected section.key=value"),
        ("lr=0.1", "lr", "expected section.key=value"),
    ],
)
def test_a_bad_override_is_named_by_its_set_item(tmp_path, item, key, expected):
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, MINIMAL), overrides=[item])
    assert err.value.key == key and err.value.where == f"--set {item}"
    assert expected in str(err.value)


def test_an_override_supplies_a_missing_required_key(tmp_path):
    job = load_job(write(tmp_path, MODEL), overrides=["data.dataset=d"])
    assert job.data.dataset == "d"


def test_override_of_a_loaded_job_for_sweeps(tmp_path):
    job = load_job(write(tmp_path, EXAMPLE))
    trial = override(job, {"optim.lr": 0.01, "model.structure.hidden": 32}, where="trial 3")
    assert trial.optim.lr == 0.01 and trial.model.structure["hidden"] == 32
    assert job.optim.lr == 3e-3 and "hidden" not in job.model.structure  # the original is unchanged
    with pytest.raises(JobFileError, match=r"^trial 3: optim.lr: must be > 0"):
        override(job, {"optim.lr": -1.0}, where="trial 3")


# -- writing back -----------------------------------------------------------------------------
def test_to_toml_and_to_json_round_trip(tmp_path):
    text = EXAMPLE + (
        '[slurm.additional]\nmail-type = "END"\n"odd key" = "quote \\" and ü"\n'
        '[preprocess.text]\nstop_words = ["a", "the"]\nmax_vocab = 5000\n'
    )
    job = load_job(write(tmp_path, text))
    again = load_job(write(tmp_path, job.to_toml(), "again.toml"))
    assert again == job
    assert Job.from_json(job.to_json()) == job
    assert tomllib.loads(job.to_toml())["optim"]["betas"] == [0.9, 0.999]


def test_tables_are_frozen_and_validate_when_built_in_python():
    with pytest.raises(dataclasses.FrozenInstanceError):
        OptimConfig().lr = 1.0
    with pytest.raises(JobFileError, match=r"^optim.momentum: must be < 1, got 1.5$"):
        dataclasses.replace(OptimConfig(), momentum=1.5)
    assert TrainConfig(early_stopping={"patience": 3}).early_stopping.patience == 3
    assert TrainConfig(task="regression").task_metric == "rmse"


@pytest.mark.parametrize("metric, direction", [("val_loss", "min"), ("val_accuracy", "max")])
def test_early_stopping_direction_from_the_metric(metric, direction):
    assert TrainConfig(early_stopping={"metric": metric}).early_stopping.direction == direction
    assert TrainConfig(early_stopping={"metric": metric, "mode": "max"}).early_stopping.direction == "max"


def test_global_batch_is_split_over_ranks():
    job = Job.from_dict({"data": {"dataset": "d", "batch_size": 96}, "model": {"name": "m"}})
    assert job.data.per_rank_batch(1) == 96 and job.data.per_rank_batch(3) == 32
    with pytest.raises(JobFileError, match=r"data.batch_size: 96 .* divisible by the 5 ranks"):
        job.data.per_rank_batch(5)


# -- [slurm] for submitit ---------------------------------------------------------------------
def test_slurm_parameters_are_submitit_parameters(tmp_path):
    """AutoExecutor takes every parameter without a deprecation warning (tests/unit/test_submit.py
    has the golden text of the batch script submitit writes from them)."""
    submitit = pytest.importorskip("submitit")
    slurm = SlurmConfig(
        partition="cpu",
        nodes=2,
        ntasks_per_node=4,
        gpus_per_node=1,
        mem_gb=7.5,
        time="1-00:00:30",
        job_name="j",
        additional={"mail-type": "END"},
    )
    params = slurm.submitit_parameters()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        submitit.AutoExecutor(tmp_path, cluster="slurm").update_parameters(**params)
    assert params["timeout_min"] == 24 * 60 + 1 and params["mem_gb"] == 7.5 and params["gpus_per_node"] == 1
    assert params["tasks_per_node"] == 4 and params["nodes"] == 2 and params["slurm_partition"] == "cpu"
    assert "slurm_account" not in params and slurm.mem == "7680M" and SlurmConfig(mem_gb=16).mem == "16G"


# -- [model.structure]: the builder's signature is the schema -----------------------------------
def dummy_builder(
    width: int,
    depth: int = 2,
    dropout: float = 0.1,
    act: str = "relu",
    bias: bool = True,
    sizes: tuple = (8, 8),
    init=None,
):
    return None


def test_structure_is_checked_against_the_builder_signature():
    assert check_structure(dummy_builder, {"width": 4, "dropout": 0, "sizes": [1, 2], "init": "x"}) == {
        "width": 4,
        "dropout": 0.0,
        "sizes": (1, 2),
        "init": "x",
    }


@pytest.mark.parametrize(
    "structure, key, expected",
    [
        ({"width": 4, "detph": 3}, "model.structure.detph", "did you mean 'depth'"),
        ({"width": 4, "depth": 2.5}, "model.structure.depth", "must be an integer like its default 2, got float"),
        ({"width": 4, "bias": 1}, "model.structure.bias", "must be a boolean"),
        ({"width": 4, "act": 3}, "model.structure.act", "must be a string"),
        ({"depth": 3}, "model.structure.width", "missing"),
    ],
)
def test_a_bad_structure_key_is_named(structure, key, expected):
    with pytest.raises(JobFileError) as err:
        check_structure(dummy_builder, structure, where="jobs/x.toml")
    assert err.value.key == key and str(err.value).startswith(f"jobs/x.toml: {key}: ")
    assert expected in str(err.value)


def test_a_builder_with_kwargs_takes_any_key():
    def builder(width: int = 1, **rest):
        return None

    assert check_structure(builder, {"width": 2, "anything": [1]}) == {"width": 2, "anything": [1]}


# -- the reference ----------------------------------------------------------------------------
def _tables(cls: type[Table]):
    """``cls`` and its sub-tables, recursively."""
    yield cls
    for hint in typing.get_type_hints(cls).values():
        if isinstance(hint, type) and issubclass(hint, Table):
            yield from _tables(hint)


def test_every_key_is_documented():
    undocumented = [
        f"{cls.TABLE}.{f.name}"
        for name in Job.TABLES
        for cls in _tables(Job.table_class(name))
        for f in dataclasses.fields(cls)
        if len(f.metadata.get("doc", "")) < 10
    ]
    assert undocumented == []


def test_docs_job_file_is_up_to_date():
    committed = (ROOT / "docs" / "job-file.md").read_text()
    assert committed == reference(), (
        "docs/job-file.md is out of date: run `python -m twinhpc.config.reference > docs/job-file.md`"
    )
