"""Every KIND end to end: a source in its real format -> ``ingest`` -> shards that hold exactly the
source's samples; and bad sources -> an IngestError naming the path, exit status 2 from the CLI,
and nothing left behind."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests import fixtures as fx
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.errors import IngestError


# -- reading a dataset back ---------------------------------------------------------------------
def read_dataset(out: Path) -> tuple[Manifest, dict[str, dict[str, np.ndarray]]]:
    """The manifest and, per split, every field over all its shards (shard order)."""
    manifest = Manifest.load(out)
    data = {}
    for split in manifest.splits:
        parts: dict[str, list] = {f.name: [] for f in manifest.fields}
        for shard in split.shards:
            with h5py.File(out / shard.file, "r") as f:
                assert f.attrs["count"] == shard.count
                for spec in manifest.fields:
                    ds = f[spec.name]
                    assert ds.shape == (shard.count, *spec.shape), (shard.file, spec)
                    if spec.is_text:
                        assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8"
                        parts[spec.name].append(ds.asstr()[:].astype(object))
                    else:
                        assert ds.dtype == np.dtype(spec.dtype), (shard.file, spec)
                        parts[spec.name].append(ds[:])
        data[split.name] = {k: np.concatenate(v) for k, v in parts.items()}
    return manifest, data


def _key(value) -> object:
    return value if isinstance(value, str) else np.ascontiguousarray(value).tobytes()


def assert_holds_exactly(
    out: Path, expected: dict[str, np.ndarray], key: str, given_split: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Check the dataset at ``out`` holds each sample of ``expected`` (field -> array in source
    order, samples unique in field ``key``) exactly once, with equal values, and that given splits
    were kept (a given ``train`` sample may land in ``train`` or ``val``). Returns, per split, the
    source indices of its samples."""
    manifest, data = read_dataset(out)
    assert sorted(f.name for f in manifest.fields) == sorted(expected)
    where = {_key(v): i for i, v in enumerate(expected[key])}
    assert len(where) == len(expected[key]), "fixture samples must be unique in the key field"
    found = {}
    for split, fields in data.items():
        idx = np.array([where[_key(v)] for v in fields[key]], dtype=np.int64)
        for name, values in fields.items():
            want = expected[name][idx]
            if values.dtype == object:
                assert list(values) == list(want), name
            else:
                np.testing.assert_array_equal(values, want.astype(values.dtype), err_msg=name)
        if given_split is not None:
            assert set(given_split[idx]) == ({"train"} if split in ("train", "val") else {split}), split
        found[split] = idx
    everything = np.concatenate(list(found.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(expected[key])))
    return found


def levels_and_codes(values: list) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted text levels (missing = "") and the code of every value."""
    text = ["" if v is None else str(v) for v in values]
    levels = tuple(sorted(set(text)))
    return levels, np.array([levels.index(t) for t in text], dtype=np.int64)


def table_expected(cols: dict[str, list]) -> dict[str, np.ndarray]:
    """What the csv/parquet readers must store for :func:`fixtures.table_columns`."""
    x = np.array([[np.nan if v is None else v for v in cols[c]] for c in ("id", "f1", "f2")], dtype=np.float32).T
    return {"x": x, "cat_color": levels_and_codes(cols["color"])[1], "label": levels_and_codes(cols["label"])[1]}


# -- one round trip per KIND --------------------------------------------------------------------
def test_npz(tmp_path):
    arrays = fx.write_npz(tmp_path / "a.npz")
    m = ingest("npz", tmp_path / "a.npz", tmp_path / "out", shards=2)
    assert_holds_exactly(tmp_path / "out", arrays, key="x")
    assert m.label_field == "y"


@pytest.mark.parametrize("layout", ["file", "spark-dir"])
def test_table_kinds(tmp_path, layout):
    kind, src = ("csv", tmp_path / "t.csv") if layout == "file" else ("parquet", tmp_path / "t.parquet")
    cols = fx.write_csv(src) if kind == "csv" else fx.write_parquet(src, parts=3)
    m = ingest(kind, src, tmp_path / "out", shards=2)
    assert_holds_exactly(tmp_path / "out", table_expected(cols), key="x")
    assert m.classes == levels_and_codes(cols["label"])[0]
    assert m.categorical == {"color": levels_and_codes(cols["color"])[0]}
    assert m.field("x").shape == (3,) and m.field("x").dtype == "float32"
    assert m.provenance["details"]["x_columns"] == ["id", "f1", "f2"]


def test_cifar10(tmp_path):
    written = fx.write_cifar10(tmp_path / "cifar", n_train_per_batch=12, n_test=15)
    m = ingest("cifar10", tmp_path / "cifar", tmp_path / "out", shards=2)
    found = assert_holds_exactly(
        tmp_path / "out",
        {"image": written["image"], "label": written["label"]},
        key="image",
        given_split=written["split"],
    )
    assert len(found["test"]) == (written["split"] == "test").sum()
    assert m.classes == written["classes"]


@pytest.mark.parametrize("keep_unsup", [False, True])
def test_imdb(tmp_path, keep_unsup):
    written = fx.write_imdb(tmp_path / "aclImdb")
    kept = written["split"] != "unlabeled" if not keep_unsup else np.ones(len(written["split"]), bool)
    expected = {k: written[k][kept] for k in ("text", "label", "rating")}
    m = ingest(
        "imdb", tmp_path / "aclImdb", tmp_path / "out", shards=2, options={"keep_unsup": True} if keep_unsup else None
    )
    found = assert_holds_exactly(tmp_path / "out", expected, key="text", given_split=written["split"][kept])
    assert ("unlabeled" in found) == keep_unsup
    assert m.classes == ("neg", "pos")


def test_jsonl(tmp_path):
    records = fx.write_jsonl(tmp_path / "r.jsonl")
    stars = [r["stars"] for r in records]
    expected = {
        "text": np.array([r["text"] for r in records], dtype=object),
        "label": np.searchsorted(np.unique(stars), stars).astype(np.int64),
    }
    m = ingest("jsonl", tmp_path / "r.jsonl", tmp_path / "out", shards=2)
    assert_holds_exactly(tmp_path / "out", expected, key="text")
    assert m.classes == tuple(str(s) for s in np.unique(stars))


def test_text_that_hdf5_cannot_hold_is_replaced_and_counted(tmp_path):
    """Yelp-style JSONL with a NUL and a truncated emoji (a lone surrogate escape), and an IMDB
    review with a NUL byte: stored with U+FFFD, counted, and the places recorded."""
    lines = [
        '{"text": "fine", "stars": 1}',
        '{"text": "nul\\u0000here", "stars": 2}',
        '{"text": "ok", "stars": 1}',
        '{"text": "cut \\ud83d emoji \\ud83d\\ude00 whole", "stars": 2}',
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    m = ingest("jsonl", tmp_path / "r.jsonl", tmp_path / "out", shards=2, test_fraction=0)
    _, data = read_dataset(tmp_path / "out")
    texts = sorted(t for split in data.values() for t in split["text"])
    assert texts == sorted(["fine", "nul\ufffdhere", "ok", "cut \ufffd emoji \U0001f600 whole"])
    where = str(tmp_path / "r.jsonl")
    assert m.provenance["details"]["replaced_characters"] == {"count": 2, "first": [f"{where}:2", f"{where}:4"]}

    written = fx.write_imdb(tmp_path / "aclImdb", n_per_class=2, n_unsup=0)
    victim = sorted((tmp_path / "aclImdb" / "test" / "pos").glob("*.txt"))[0]
    victim.write_bytes(b"first line\nsecond \x00 line")
    m = ingest("imdb", tmp_path / "aclImdb", tmp_path / "imdb-out")
    _, data = read_dataset(tmp_path / "imdb-out")
    assert "first line\nsecond \ufffd line" in list(data["test"]["text"])
    assert m.provenance["details"]["replaced_characters"] == {"count": 1, "first": [f"{victim}:2"]}
    assert len(written["text"]) == sum(s.count for s in m.splits)


def test_nan_inf_and_labels_outside_the_classes_are_counted_and_shown(tmp_path):
    """NaN/inf features (R's NA, Inf in a CSV) and an npz label of -1 in a labelled split: counted
    over every sample at ingest, kept in the manifest, shown by inspect."""
    from twinhpc.data.inspect import format_report, inspect_dataset

    rows = ["a,b,label"] + [f"{i},{'NA' if i % 5 == 0 else i / 2},{'x' if i % 2 else 'y'}" for i in range(20)]
    rows[4] = "3,Inf,x"
    rows[8] = "-inf,1,y"
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    m = ingest("csv", tmp_path / "t.csv", tmp_path / "csv-out", shards=3, val_fraction=0, test_fraction=0)
    assert m.statistics == {"train": {"x": {"nan": 4, "inf": 2}, "label": {"outside_classes": {}}}}
    assert Manifest.load(tmp_path / "csv-out").statistics == m.statistics

    y = np.array([0, 1, 2, -1, 1, -1, 0, 2, 1, 0])
    np.savez(tmp_path / "a.npz", x=np.arange(10, dtype=np.float32), y=y)
    m = ingest("npz", tmp_path / "a.npz", tmp_path / "npz-out", val_fraction=0, test_fraction=0)
    assert m.statistics["train"] == {"x": {"nan": 0, "inf": 0}, "y": {"outside_classes": {"-1": 2}}}
    text = format_report(inspect_dataset(tmp_path / "npz-out"))
    assert "y                every sample (counted at ingest): labels outside the classes: -1 (2 samples)" in text
    assert "nan=0  inf=0" in text


def test_image_folder(tmp_path):
    written = fx.write_image_folder(tmp_path / "imgs", size=(8, 12))
    m = ingest("image-folder", tmp_path / "imgs", tmp_path / "out", shards=2, options={"image_size": "8x12"})
    assert_holds_exactly(tmp_path / "out", {"image": written["image"], "label": written["label"]}, key="image")
    assert m.classes == written["classes"]


def test_cli_ingest_cifar10(cli, tmp_path):
    written = fx.write_cifar10(tmp_path / "cifar", n_train_per_batch=6, n_test=9)
    r = cli("ingest", "cifar10", tmp_path / "cifar", "--out", tmp_path / "out", "--shards", "2")
    assert r.returncode == 0, r.stderr
    assert_holds_exactly(
        tmp_path / "out",
        {"image": written["image"], "label": written["label"]},
        key="image",
        given_split=written["split"],
    )


def test_cli_reader_options_reach_the_readers(cli, tmp_path):
    """--delimiter, --na-values and --skip-bad on the command line; --overwrite of a non-dataset."""
    (tmp_path / "eu.csv").write_text("a;b;label\r\n1;-;x\r\n2;3;y\r\n")
    r = cli("ingest", "csv", tmp_path / "eu.csv", "--out", tmp_path / "csv", "--delimiter", ";", "--na-values", "-")
    assert r.returncode == 0, r.stderr
    m = Manifest.load(tmp_path / "csv")
    assert m.provenance["details"]["missing"] == {"b": 1} and m.provenance["details"]["x_columns"] == ["a", "b"]
    written = fx.write_image_folder(tmp_path / "imgs", n_per_class=2)
    written["files"][0].write_bytes(b"no image")
    r = cli("ingest", "image-folder", tmp_path / "imgs", "--out", tmp_path / "img", "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert str(written["files"][0].name) in r.stderr  # the warning names it
    r = cli("ingest", "csv", tmp_path / "eu.csv", "--out", tmp_path / "imgs", "--delimiter", ";", "--overwrite")
    assert r.returncode == 2 and f"--out {tmp_path / 'imgs'}: is a directory without manifest.json" in r.stderr
    assert written["files"][1].exists()


# -- bad sources --------------------------------------------------------------------------------
def _cifar_with(tmp: Path, name: str, content: bytes | None) -> Path:
    fx.write_cifar10(tmp / "cifar", n_train_per_batch=2, n_test=2)
    if content is None:
        (tmp / "cifar" / name).unlink()
    else:
        (tmp / "cifar" / name).write_bytes(content)
    return tmp / "cifar"


def _cifar_truncated(tmp: Path, name: str) -> Path:
    src = _cifar_with(tmp, name, b"")
    fx.write_cifar10(tmp / "whole", n_train_per_batch=2, n_test=2)
    (src / name).write_bytes((tmp / "whole" / name).read_bytes()[:100])
    return src


def _images_with(tmp: Path, damage: str | None) -> Path:
    written = fx.write_image_folder(tmp / "imgs", n_per_class=2)
    victim = written["files"][-1]
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "garbage":
        victim.write_bytes(b"this is no PNG")
    return tmp / "imgs"


def _jsonl_with(tmp: Path, line3: str) -> Path:
    fx.write_jsonl(tmp / "r.jsonl", n=5)
    lines = (tmp / "r.jsonl").read_text().splitlines()
    lines[2] = line3
    (tmp / "r.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "r.jsonl"


def _csv_without_label(tmp: Path) -> Path:
    (tmp / "t.csv").write_text("a,b\n1,2\n3,4\n")
    return tmp / "t.csv"


def _imdb_without(tmp: Path, folder: str) -> Path:
    fx.write_imdb(tmp / "aclImdb", n_per_class=1, n_unsup=1)
    shutil.rmtree(tmp / "aclImdb" / folder)
    return tmp / "aclImdb"


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _file(tmp: Path, name: str, content: bytes) -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _parquet_with_corrupt_part(tmp: Path) -> Path:
    fx.write_parquet(tmp / "pq", parts=2)
    part = sorted((tmp / "pq").glob("part-*"))[1]
    part.write_bytes(b"PAR1 not really")
    return tmp / "pq"


def _png(tmp: Path, name: str) -> Path:
    from PIL import Image

    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(tmp / name, format="PNG")
    return tmp / name


def _emptied_imdb(t: Path) -> Path:
    fx.write_imdb(t / "aclImdb", n_per_class=1, n_unsup=1)
    for txt in (t / "aclImdb").rglob("*_*.txt"):
        txt.unlink()
    return t / "aclImdb"


def _table_parquet(t: Path, cols: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), t / "n.parquet")
    return t / "n.parquet"


# (id, kind, make the source -> path, options, the path the message must name, other words it must hold)
BAD = [
    ("missing-npz", "npz", lambda t: t / "nope.npz", None, "nope.npz", ["does not exist"]),
    ("missing-csv", "csv", lambda t: t / "nope.csv", None, "nope.csv", ["does not exist"]),
    ("missing-cifar", "cifar10", lambda t: t / "nope", None, "nope", ["does not exist"]),
    ("missing-imdb", "imdb", lambda t: t / "nope", None, "nope", ["does not exist"]),
    ("missing-images", "image-folder", lambda t: t / "nope", None, "nope", ["does not exist"]),
    ("missing-parquet", "parquet", lambda t: t / "nope", None, "nope", ["does not exist"]),
    ("missing-jsonl", "jsonl", lambda t: t / "nope.jsonl", None, "nope.jsonl", ["does not exist"]),
    (
        "cifar-text-batch",
        "cifar10",
        lambda t: _cifar_with(t, "data_batch_3", b"hello, I am text\n"),
        None,
        "data_batch_3",
        ["not a CIFAR-10"],
    ),
    (
        "cifar-missing-batch",
        "cifar10",
        lambda t: _cifar_with(t, "data_batch_4", None),
        None,
        "data_batch_4",
        ["missing"],
    ),
    (
        "cifar-truncated-batch",
        "cifar10",
        lambda t: _cifar_truncated(t, "test_batch"),
        None,
        "test_batch",
        ["not a CIFAR-10"],
    ),
    ("cifar-empty", "cifar10", _empty_dir, None, "empty", ["empty"]),
    ("imdb-missing-folder", "imdb", lambda t: _imdb_without(t, "test/pos"), None, "test/pos", ["missing"]),
    (
        "imdb-unsup-missing",
        "imdb",
        lambda t: _imdb_without(t, "train/unsup"),
        {"keep_unsup": True},
        "train/unsup",
        ["--keep-unsup"],
    ),
    ("imdb-empty", "imdb", _emptied_imdb, None, "aclImdb", ["empty"]),
    (
        "images-truncated",
        "image-folder",
        lambda t: _images_with(t, "truncated"),
        None,
        "img001.PNG",
        ["not a readable image"],
    ),
    (
        "images-corrupt",
        "image-folder",
        lambda t: _images_with(t, "garbage"),
        None,
        "img001.PNG",
        ["not a readable image"],
    ),
    ("images-empty", "image-folder", _empty_dir, None, "empty", ["empty"]),
    (
        "images-bad-size",
        "image-folder",
        lambda t: _images_with(t, None),
        {"image_size": "big"},
        "imgs",
        ["--image-size"],
    ),
    ("jsonl-malformed", "jsonl", lambda t: _jsonl_with(t, '{"text": "x", "stars": '), None, "r.jsonl", ["line 3"]),
    (
        "jsonl-no-text",
        "jsonl",
        lambda t: _jsonl_with(t, '{"body": "x", "stars": 2}'),
        None,
        "r.jsonl",
        ["line 3", "--text-field"],
    ),
    ("jsonl-no-label", "jsonl", lambda t: _jsonl_with(t, '{"text": "x"}'), None, "r.jsonl", ["line 3", "--label"]),
    ("jsonl-empty", "jsonl", lambda t: _file(t, "e.jsonl", b"\n\n"), None, "e.jsonl", ["empty"]),
    ("csv-no-label", "csv", _csv_without_label, None, "t.csv", ["--label"]),
    ("csv-unknown-label", "csv", _csv_without_label, {"label": "z"}, "t.csv", ["--label", "'z'"]),
    ("csv-ragged", "csv", lambda t: _file(t, "r.csv", b"a,label\n1,x\n2,y,3\n"), None, "r.csv", []),
    ("csv-png", "csv", lambda t: _png(t, "p.csv"), None, "p.csv", ["not a readable CSV"]),
    ("csv-empty", "csv", lambda t: _file(t, "e.csv", b""), None, "e.csv", ["empty"]),
    ("csv-header-only", "csv", lambda t: _file(t, "h.csv", b"a,label\n"), None, "h.csv", ["empty"]),
    ("csv-missing-label-value", "csv", lambda t: _file(t, "m.csv", b"a,label\n1,x\n2,\n"), None, "m.csv", ["row 2"]),
    (
        "csv-class-not-listed",
        "csv",
        lambda t: _file(t, "c.csv", b"a,label\n1,x\n2,y\n"),
        {"classes": "x"},
        "c.csv",
        ["--classes", "'y'"],
    ),
    (
        "csv-unknown-option",
        "csv",
        lambda t: _file(t, "c.csv", b"a,label\n1,x\n"),
        {"image_size": "3"},
        "c.csv",
        ["--image-size"],
    ),
    (
        "parquet-text-file",
        "parquet",
        lambda t: _file(t, "x.parquet", b"just text\n"),
        None,
        "x.parquet",
        ["not a readable parquet"],
    ),
    ("parquet-corrupt-part", "parquet", _parquet_with_corrupt_part, None, "part-00001", ["not a readable parquet"]),
    ("parquet-empty-dir", "parquet", _empty_dir, None, "empty", ["empty"]),
    ("parquet-no-label", "parquet", lambda t: _table_parquet(t, {"a": [1, 2]}), None, "n.parquet", ["--label"]),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_source_is_an_error_naming_it(tmp_path, case):
    _, kind, make, options, names, words = case
    src = make(tmp_path)
    with pytest.raises(IngestError) as e:
        ingest(kind, src, tmp_path / "out", options=options)
    assert names in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


CLI_CASES = [
    "missing-npz",
    "csv-no-label",
    "cifar-text-batch",
    "imdb-missing-folder",
    "images-truncated",
    "parquet-corrupt-part",
    "jsonl-malformed",
]


@pytest.mark.parametrize("case", [c for c in BAD if c[0] in CLI_CASES], ids=CLI_CASES)
def test_bad_source_through_the_cli(cli, tmp_path, case):
    _, kind, make, options, names, words = case
    src = make(tmp_path)
    flags = [a for k, v in (options or {}).items() for a in ([f"--{k.replace('_', '-')}"] + ([] if v is True else [v]))]
    r = cli("ingest", kind, src, "--out", tmp_path / "out", *flags)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert names in r.stderr and all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_forbidden_pickle_global_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    src = _cifar_with(tmp_path, "data_batch_2", pickle.dumps(fx.Exploit(f"touch {marker}"), protocol=2))
    with pytest.raises(IngestError) as e:
        ingest("cifar10", src, tmp_path / "out")
    assert str(src / "data_batch_2") in str(e.value) and "system" in str(e.value), str(e.value)
    assert not marker.exists()
    pickle.loads((src / "data_batch_2").read_bytes())  # the same file does execute under plain pickle
    assert marker.exists()
