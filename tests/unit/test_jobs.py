"""Every job file in jobs/ is valid: known keys, a registered model, structure keys the model's
builder accepts; the sbatch script runs the four steps with srun; the digits writer works."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from twinhpc.config import JobFileError, check_structure, load_job
from twinhpc.models import builder, input_kind, names

JOBS = Path(__file__).resolve().parents[2] / "jobs"
JOB_FILES = sorted(JOBS.glob("*.toml"))


def test_there_are_job_files_for_every_workload():
    models = {load_job(p).model.name for p in JOB_FILES}
    assert {"cnn", "resnet18", "mlp", "transformer", "minilm"} <= models
    assert {p.stem for p in JOB_FILES} >= {
        "digits",
        "cifar10_cnn",
        "cifar10_resnet18",
        "imdb_tfidf_mlp",
        "imdb_transformer",
        "imdb_minilm",
        "tabular_csv",
    }


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_file_is_valid(path):
    job = load_job(path)
    assert job.model.name in names()
    check_structure(builder(job.model.name), job.model.structure, where=str(path))
    if job.data.inputs == ("text",):  # what `twinhpc preprocess` would refuse (it needs the data)
        wanted = "sequence" if input_kind(job.model.name) == "tokens" else "tfidf"
        assert job.preprocess.text.representation == wanted
    if job.model.name == "minilm":  # said in the file, not left to "auto"
        assert job.preprocess.text.tokenizer == "minilm" and job.text_tokenizer == "minilm"


def test_jobs_that_prepare_a_dataset_differently_write_different_preprocessed_dirs():
    """Two jobs with one preprocess.out must prepare it the same way, or each `twinhpc preprocess`
    would replace the other's data (and its training then finds it stale)."""
    seen = {}
    for path in JOB_FILES:
        job = load_job(path)
        how = (
            job.data.dataset,
            job.data.train_split,
            job.data.inputs,
            job.data.label,
            job.text_tokenizer,
            {k: v for k, v in job.preprocess.to_dict().items() if k != "out"},
        )
        other = seen.setdefault(job.preprocessed_dir, (path.name, how))
        assert other[1] == how, f"{path.name} and {other[0]} both write {job.preprocessed_dir}, differently"


def test_train_sbatch_submits_through_twinhpc_sbatch():
    """jobs/train.sbatch is a wrapper: the steps are in the script `twinhpc sbatch` writes
    (tests/unit/test_batch.py, tests/golden/sbatch-*.sh)."""
    text = (JOBS / "train.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(JOBS / "train.sbatch")]).returncode == 0
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert commands[-1] == 'exec twinhpc sbatch "$@" --submit'
    assert not any(line.lstrip().startswith(("srun", "twinhpc report")) for line in commands)
    assert "#SBATCH --ntasks=1" in text


def test_digits_to_npz(tmp_path):
    out = tmp_path / "digits.npz"
    spec = importlib.util.spec_from_file_location("digits_to_npz", JOBS / "digits_to_npz.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(out)]) == 0
    from sklearn.datasets import load_digits

    d = load_digits()
    with np.load(out) as f:
        assert f["image"].dtype == np.uint8 and f["image"].shape == (len(d.target), 8, 8, 1)
        assert f["image"].max() == 255 and f["label"].tolist() == d.target.tolist()
        np.testing.assert_allclose(f["image"][..., 0] / 255 * 16, d.images, atol=16 / 255)


@pytest.mark.parametrize(
    "structure, defaults, key, expected",
    [
        (
            {"in_features": 30000},
            {"in_features": 29000},
            "in_features",
            "is 30000, but the preprocessed data data/imdb-pre has 29000 features per sample (model 'mlp' needs "
            "exactly that many)",
        ),
        ({"classes": 3}, {"classes": 2}, "classes", "has 2 outputs"),
        ({"vocab_size": 100}, {"vocab_size": 102}, "vocab_size", "needs at least that many"),
        ({"max_len": 16}, {"max_len": 32}, "max_len", "32 tokens per sample"),
    ],
)
def test_a_structure_key_that_contradicts_the_data_is_named(structure, defaults, key, expected):
    from twinhpc.train.model import check_structure_against_data

    with pytest.raises(JobFileError) as err:
        check_structure_against_data("mlp", structure, defaults, "data/imdb-pre")
    assert err.value.key == f"model.structure.{key}" and str(err.value).startswith(f"model.structure.{key}: ")
    assert expected in str(err.value) and "leave the key out" in str(err.value)


def test_structure_keys_that_fit_the_data_pass():
    from twinhpc.train.model import check_structure_against_data

    check_structure_against_data(
        "transformer",
        {"vocab_size": 20002, "max_len": 256, "width": 8, "classes": 2},
        {"vocab_size": 50, "max_len": 32, "classes": 2},
        "x",
    )
