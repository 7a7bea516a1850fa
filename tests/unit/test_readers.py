"""Reader-level behaviour: random access, options, and the details of each format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from tests import fixtures as fx
from twinhpc.data.readers import reader_class
from twinhpc.errors import IngestError


def opened(kind, path, **options):
    source = reader_class(kind)(path, options)
    return source, source.open()


def make_source(kind, tmp_path):
    """A fixture of ``kind`` and its opened reader."""
    if kind == "csv":
        fx.write_csv(tmp_path / "t.csv", n=40)
        return opened(kind, tmp_path / "t.csv")
    if kind == "parquet":
        fx.write_parquet(tmp_path / "pq", n=40, parts=3, row_group_size=5)
        return opened(kind, tmp_path / "pq")
    if kind == "cifar10":
        fx.write_cifar10(tmp_path / "c", n_train_per_batch=5, n_test=7)
        return opened(kind, tmp_path / "c")
    if kind == "imdb":
        fx.write_imdb(tmp_path / "a", n_per_class=4)
        return opened(kind, tmp_path / "a", keep_unsup=True)
    if kind == "image-folder":
        fx.write_image_folder(tmp_path / "i", n_per_class=4)
        return opened(kind, tmp_path / "i", image_size="6x5")
    fx.write_jsonl(tmp_path / "r.jsonl", n=40)
    return opened(kind, tmp_path / "r.jsonl")


@pytest.mark.parametrize("kind", ["csv", "parquet", "cifar10", "imdb", "image-folder", "jsonl"])
def test_any_sorted_subset_reads_as_the_full_read(kind, tmp_path):
    source, info = make_source(kind, tmp_path)
    full = source.read(np.arange(info.count, dtype=np.int64))
    for spec in info.fields:
        assert full[spec.name].shape == (info.count, *spec.shape)
        assert full[spec.name].dtype == spec.numpy_dtype()
    rng = np.random.default_rng(1)
    subsets = [np.array([0]), np.array([info.count - 1]), np.arange(1, info.count, 3)]
    subsets += [np.sort(rng.choice(info.count, size=k, replace=False)) for k in (2, info.count // 2)]
    for idx in subsets:
        part = source.read(idx.astype(np.int64))
        for name, values in part.items():
            if values.dtype == object:
                assert list(values) == list(full[name][idx])
            else:
                np.testing.assert_array_equal(values, full[name][idx])


# -- csv and parquet ----------------------------------------------------------------------------
def test_csv_options_select_and_type_columns(tmp_path):
    cols = fx.write_csv(tmp_path / "t.csv", label_kind="int")
    source, info = opened("csv", tmp_path / "t.csv", fields="f2,color,f1", categorical="f2", classes="10,3,1")
    assert [f.name for f in info.fields] == ["x", "cat_f2", "cat_color", "label"]
    assert info.details["x_columns"] == ["f1"]
    levels = tuple(sorted({str(v) for v in cols["f2"]}))
    assert info.categorical["f2"] == levels
    assert info.classes == ("10", "3", "1")
    got = source.read(np.arange(info.count))
    np.testing.assert_array_equal(got["cat_f2"], [levels.index(str(v)) for v in cols["f2"]])
    np.testing.assert_array_equal(got["label"], [info.classes.index(str(v)) for v in cols["label"]])
    assert np.isnan(got["x"][cols["f1"].index(None), 0])


def test_csv_integer_labels_are_classes_in_numeric_order(tmp_path):
    cols = fx.write_csv(tmp_path / "t.csv", label_kind="int")
    source, info = opened("csv", tmp_path / "t.csv")
    distinct = sorted(set(cols["label"]))
    assert info.classes == tuple(str(v) for v in distinct)
    np.testing.assert_array_equal(
        source.read(np.arange(info.count))["label"], [distinct.index(v) for v in cols["label"]]
    )


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_float_labels_are_a_regression_target(kind, tmp_path):
    path = tmp_path / ("t.csv" if kind == "csv" else "t.parquet")
    cols = (fx.write_csv if kind == "csv" else fx.write_parquet)(path, label_kind="float")
    source, info = opened(kind, path)
    assert info.classes == () and info.fields[-1].dtype == "float32"
    np.testing.assert_array_equal(source.read(np.arange(info.count))["label"], np.float32(cols["label"]))


def test_csv_from_r_reads_na_as_missing_numbers(tmp_path):
    """R's write.csv: quoted header and text, NA for missing values, in numeric and text columns."""
    (tmp_path / "r.csv").write_text(
        '"","height","colour","label"\n"1",1.5,"red","a"\n"2",NA,NA,"b"\n"3",2.25,"blue","a"\n"4",NaN,"red","b"\n'
    )
    source, info = opened("csv", tmp_path / "r.csv", fields="height,colour")
    assert info.details["x_columns"] == ["height"] and info.categorical["colour"] == ("", "blue", "red")
    assert info.details["missing"] == {"height": 2, "colour": 1}
    got = source.read(np.arange(4))
    np.testing.assert_array_equal(got["x"][:, 0], np.float32([1.5, np.nan, 2.25, np.nan]))
    np.testing.assert_array_equal(got["cat_colour"], [2, 0, 1, 2])


def test_csv_spaces_after_delimiters_and_own_na_values(tmp_path):
    (tmp_path / "s.csv").write_text("f1, f2, label\n1, 2.5, x\n3, -999, y\n 5 ,7, x\n")
    source, info = opened("csv", tmp_path / "s.csv", na_values="-999")
    assert info.details["x_columns"] == ["f1", "f2"] and info.classes == ("x", "y") and not info.categorical
    got = source.read(np.arange(3))
    np.testing.assert_array_equal(got["x"], np.float32([[1, 2.5], [3, np.nan], [5, 7]]))
    _, info = opened("csv", tmp_path / "s.csv", na_values="")  # -999 is a number again, NA would be text
    assert info.details["x_columns"] == ["f1", "f2"] and "missing" not in info.details


@pytest.mark.parametrize("delimiter,option", [(";", ";"), ("\t", "tab"), ("|", "|")])
def test_csv_delimiter(tmp_path, delimiter, option):
    """European Excel writes ';', others tabs or pipes: without --delimiter the error names the one to set."""
    rows = [["a", "b", "label"], ["1", "2", "x"], ["3", "4", "y"]]
    (tmp_path / "d.csv").write_text("".join(delimiter.join(r) + "\r\n" for r in rows))
    with pytest.raises(
        IngestError, match=f"d.csv: .*delimiter ','.*--delimiter {option if option == 'tab' else repr(option)}"
    ):
        opened("csv", tmp_path / "d.csv")
    source, info = opened("csv", tmp_path / "d.csv", delimiter=option)
    assert info.details["x_columns"] == ["a", "b"] and info.classes == ("x", "y")
    np.testing.assert_array_equal(source.read(np.arange(2))["x"], np.float32([[1, 2], [3, 4]]))


def test_csv_option_naming_a_missing_column_is_an_error(tmp_path):
    fx.write_csv(tmp_path / "t.csv")
    for option in ("fields", "categorical"):
        with pytest.raises(IngestError, match=f"t.csv: --{option} names column 'nope'"):
            opened("csv", tmp_path / "t.csv", **{option: "nope"})


def test_parquet_reads_only_the_row_groups_it_needs(tmp_path):
    fx.write_parquet(tmp_path / "p.parquet", n=40, row_group_size=10)
    source, info = opened("parquet", tmp_path / "p.parquet")
    source.read(np.array([12, 15, 19]))
    assert list(source._cache) == [1]
    source.read(np.array([3, 35]))
    assert sorted(source._cache) == [0, 1, 3]


def test_parquet_cache_bound_keeps_results_right(tmp_path, monkeypatch):
    from twinhpc.data.readers import parquet

    fx.write_parquet(tmp_path / "p.parquet", n=40, row_group_size=4)
    source, info = opened("parquet", tmp_path / "p.parquet")
    full = source.read(np.arange(info.count))
    monkeypatch.setattr(parquet, "CACHE_BYTES", 1)
    fresh, _ = opened("parquet", tmp_path / "p.parquet")
    np.testing.assert_array_equal(fresh.read(np.arange(info.count))["x"], full["x"])
    assert len(fresh._cache) == 1


def test_parquet_hive_partitions_become_a_categorical_column(tmp_path):
    cols = fx.write_parquet(tmp_path / "h", hive=True)
    source, info = opened("parquet", tmp_path / "h")
    levels = tuple(sorted({"" if c is None else c for c in cols["color"]}))
    assert info.categorical == {"color": levels}
    got = source.read(np.arange(info.count))
    np.testing.assert_array_equal(got["x"][:, 0], cols["id"])
    np.testing.assert_array_equal(got["cat_color"], [levels.index("" if c is None else c) for c in cols["color"]])


def test_parquet_schema_mismatch_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fx.write_parquet(tmp_path / "pq", parts=2)
    odd = sorted((tmp_path / "pq").glob("part-*"))[1]
    pq.write_table(pa.table({"id": [1.5], "label": ["x"]}), odd)
    with pytest.raises(IngestError, match=f"{odd.name}: schema differs"):
        opened("parquet", tmp_path / "pq")


# -- cifar10 ------------------------------------------------------------------------------------
def test_cifar10_pixels_are_height_width_rgb(tmp_path):
    fx.write_cifar10(tmp_path / "c", n_train_per_batch=1, n_test=1)
    data = np.zeros((1, 3072), np.uint8)
    data[0, 0 * 1024 + 1] = 10  # red, row 0, column 1
    data[0, 1 * 1024 + 32] = 20  # green, row 1, column 0
    data[0, 2 * 1024 + 1023] = 30  # blue, row 31, column 31
    fx.py2_pickle({b"data": data, b"labels": [7]}, tmp_path / "c" / "test_batch")
    source, info = opened("cifar10", tmp_path / "c")
    image = source.read(np.array([info.count - 1]))["image"][0]
    assert (image[0, 1, 0], image[1, 0, 1], image[31, 31, 2]) == (10, 20, 30)
    assert image.sum() == 60


def test_cifar10_without_meta_names_classes_by_number(tmp_path):
    fx.write_cifar10(tmp_path / "c", n_train_per_batch=2, n_test=2, meta=False)
    assert opened("cifar10", tmp_path / "c")[1].classes == tuple(str(i) for i in range(10))


def test_cifar10_reads_batches_pickled_by_python3(tmp_path):
    written = fx.write_cifar10(tmp_path / "c", n_train_per_batch=2, n_test=3)
    data = written["image"][-3:].transpose(0, 3, 1, 2).reshape(3, -1)
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3]}, protocol=4))
    source, info = opened("cifar10", tmp_path / "c")
    got = source.read(np.arange(info.count - 3, info.count))
    np.testing.assert_array_equal(got["image"], written["image"][-3:])
    np.testing.assert_array_equal(got["label"], [1, 2, 3])


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_cifar10_reads_every_batch_pickled_by_python3(tmp_path, protocol):
    """Batches re-saved by Python 3 (``pickle.dump(d, f, protocol)``): protocol 2 spells bytes as
    ``_codecs.encode(text, 'latin1')`` (and ``b''`` as ``bytes()``), protocol 5 arrays as ``_frombuffer``."""
    written = fx.write_cifar10(tmp_path / "c", n_train_per_batch=2, n_test=3)
    for name in (*fx.CIFAR_TRAIN_BATCHES, fx.CIFAR_TEST_BATCH, "batches.meta"):
        with open(tmp_path / "c" / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        if b"filenames" in d:
            d[b"filenames"][0] = b""
        (tmp_path / "c" / name).write_bytes(pickle.dumps(d, protocol=protocol))
    if protocol == 2:
        assert b"_codecs" in (tmp_path / "c" / "test_batch").read_bytes()
    source, info = opened("cifar10", tmp_path / "c")
    assert info.classes == fx.CIFAR_CLASSES
    got = source.read(np.arange(info.count))
    np.testing.assert_array_equal(got["image"], written["image"])
    np.testing.assert_array_equal(got["label"], written["label"])


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02c_codecs\nencode\nX\x04\x00\x00\x00abcdX\x05\x00\x00\x00rot13\x86R.",  # another codec
        b"\x80\x02c_codecs\nencode\nK\x05X\x06\x00\x00\x00latin1\x86R.",  # not a str
        b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x7f\x85R.",  # bytes(2**31): a memory bomb
        b"\x80\x02c_codecs\ndecode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00latin1\x86R.",
    ],
)
def test_cifar10_protocol2_helpers_refuse_other_calls(tmp_path, payload):
    fx.write_cifar10(tmp_path / "c", n_train_per_batch=2, n_test=2)
    (tmp_path / "c" / "data_batch_3").write_bytes(payload)
    with pytest.raises(IngestError, match="data_batch_3"):
        opened("cifar10", tmp_path / "c")


# -- imdb, jsonl --------------------------------------------------------------------------------
def test_imdb_ignores_unsup_unless_asked(tmp_path):
    written = fx.write_imdb(tmp_path / "a")
    _, info = opened("imdb", tmp_path / "a")
    assert info.count == (written["split"] != "unlabeled").sum()
    assert set(info.given_split) == {"train", "test"}


def test_imdb_bad_file_name_is_named(tmp_path):
    fx.write_imdb(tmp_path / "a")
    (tmp_path / "a" / "train" / "pos" / "review.txt").write_text("x")
    with pytest.raises(IngestError, match="review.txt: review file name"):
        opened("imdb", tmp_path / "a")


def test_jsonl_options(tmp_path):
    records = fx.write_jsonl(tmp_path / "r.jsonl", label_key="label")
    source, info = opened("jsonl", tmp_path / "r.jsonl", text_field="review_id", classes="5,4,3,2,1")
    got = source.read(np.arange(info.count))
    assert list(got["text"]) == [r["review_id"] for r in records]
    np.testing.assert_array_equal(got["label"], [5 - r["label"] for r in records])


def test_jsonl_text_labels_sort_as_text(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"text": "a", "y": "pos"}\n{"text": "b", "y": "neg"}\n{"text": "c", "y": 3}\n')
    source, info = opened("jsonl", tmp_path / "r.jsonl", label="y")
    assert info.classes == ("3", "neg", "pos")
    np.testing.assert_array_equal(source.read(np.arange(3))["label"], [2, 1, 0])


# -- image-folder -------------------------------------------------------------------------------
def test_image_folder_resizes_and_converts(tmp_path):
    colour = (200, 30, 90)
    for cls, fmt, ext in (("a", "JPEG", "JPG"), ("b", "PNG", "png")):
        (tmp_path / "i" / cls).mkdir(parents=True)
        Image.new("RGB", (640, 480), colour).save(tmp_path / "i" / cls / f"big.{ext}", format=fmt)
    Image.new("L", (3, 7), 77).save(tmp_path / "i" / "b" / "small.jpeg", format="JPEG")
    source, info = opened("image-folder", tmp_path / "i", image_size=16)
    assert info.fields[0].shape == (16, 16, 3) and info.classes == ("a", "b") and info.count == 3
    images = source.read(np.arange(3))["image"].astype(int)
    assert np.abs(images[0] - colour).max() <= 3  # JPEG is lossy
    assert (images[1] == colour).all()
    assert np.abs(images[2] - 77).max() <= 3


def test_image_folder_empty_class_is_named(tmp_path):
    fx.write_image_folder(tmp_path / "i")
    (tmp_path / "i" / "empty_class").mkdir()
    with pytest.raises(IngestError, match="empty_class: class folder holds no"):
        opened("image-folder", tmp_path / "i")


def test_image_folder_scales_16bit_greyscale(tmp_path):
    """A 16-bit greyscale PNG (and TIFF) as scientific cameras write it: scaled to 8 bits, not clipped."""
    (tmp_path / "i" / "depth").mkdir(parents=True)
    values = np.array([[0, 257, 1000, 30000], [40000, 50000, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i" / "depth" / "a.png")
    Image.fromarray(values).save(tmp_path / "i" / "depth" / "b.tif")
    source, info = opened("image-folder", tmp_path / "i", image_size="2x4")
    got = source.read(np.arange(2))["image"]
    expected = np.round(values.astype(float) * 255 / 65535).astype(np.uint8)
    for image in got:
        np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=2))


def test_image_folder_reads_what_pillow_reads_and_counts_the_rest(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    folder = tmp_path / "i" / "cls"
    folder.mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "a.webp", lossless=True)
    Image.fromarray(rgb).save(folder / "b.BMP", format="BMP")
    Image.fromarray(rgb).save(folder / "c.tif")
    Image.fromarray(rgb).save(folder / "d.tiff")
    flat = np.zeros((5, 6, 3), np.uint8) + np.array([10, 200, 30], np.uint8)  # a GIF holds a palette
    Image.fromarray(flat).save(folder / "e.gif")
    for name in ("notes.txt", "readme.txt", "raw.cr2"):
        (folder / name).write_text("x")
    source, info = opened("image-folder", tmp_path / "i", image_size="5x6")
    assert info.count == 5
    assert info.details["skipped_by_extension"] == {".cr2": 1, ".txt": 2}
    got = source.read(np.arange(5))["image"]
    for k in range(4):
        np.testing.assert_array_equal(got[k], rgb)
    np.testing.assert_array_equal(got[4], flat)


def test_image_folder_applies_exif_orientation(tmp_path):
    """A phone photo stored landscape with orientation 6 (rotate 90 degrees clockwise to view)."""
    stored = np.random.default_rng(4).integers(0, 256, size=(2, 4, 3), dtype=np.uint8)  # H 2, W 4
    (tmp_path / "i" / "cls").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "i" / "cls" / "phone.png", exif=exif)
    source, info = opened("image-folder", tmp_path / "i", image_size="4x2")
    np.testing.assert_array_equal(source.read(np.arange(1))["image"][0], np.rot90(stored, k=-1))


def test_image_folder_bad_images_are_all_named_or_skipped(tmp_path):
    from twinhpc.data.ingest import ingest

    written = fx.write_image_folder(tmp_path / "i", n_per_class=3)
    garbage, truncated = written["files"][1], written["files"][-1]
    garbage.write_bytes(b"this is no PNG")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(IngestError) as e:
        opened("image-folder", tmp_path / "i")
    assert str(garbage) in str(e.value) and str(truncated) in str(e.value) and "--skip-bad" in str(e.value)
    m = ingest("image-folder", tmp_path / "i", tmp_path / "out", options={"skip_bad": True, "image_size": "8x12"})
    assert sum(s.count for s in m.splits) == len(written["files"]) - 2
    skipped = m.provenance["details"]["skipped_bad"]
    assert [s["file"] for s in skipped] == [str(p.relative_to(tmp_path / "i")) for p in (garbage, truncated)]


# -- npz ----------------------------------------------------------------------------------------
def test_npz_object_array_is_left_out_by_fields_or_named(tmp_path):
    """An npz as analysis code often saves it: numeric arrays beside an object array of names."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 1, 0])
    names = np.array(["a", None, "c", 4], dtype=object)
    np.savez(tmp_path / "a.npz", x=x, y=y, names=names)
    source, info = opened("npz", tmp_path / "a.npz", fields="x,y")
    assert [f.name for f in info.fields] == ["x", "y"] and info.classes == ("0", "1")
    np.testing.assert_array_equal(source.read(np.arange(4))["x"], x)
    for options in ({}, {"fields": "y,names"}):
        with pytest.raises(IngestError, match=r"a\.npz: array 'names' cannot be loaded.*--fields"):
            opened("npz", tmp_path / "a.npz", **options)
