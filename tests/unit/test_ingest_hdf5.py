"""``ingest hdf5``: PDEBench-style files (whole arrays; one group per sample) -> datasets whose values
are the source's bytes, attributes and coordinates in the provenance; bad files -> an error naming
the file and path, exit status 2, nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests import fixtures as fx
from twinhpc.data.format import Manifest
from twinhpc.data.ingest import ingest
from twinhpc.data.readers import hdf5 as hdf5_reader
from twinhpc.data.readers import reader_class
from twinhpc.data.shards import write_shard
from twinhpc.data.split import assign_splits
from twinhpc.errors import IngestError


def stored(out: Path, split: str) -> dict[str, np.ndarray]:
    """Every field of ``split`` over its shards, in stored order."""
    m = Manifest.load(out)
    parts: dict[str, list] = {f.name: [] for f in m.fields}
    for sh in m.split(split).shards:
        with h5py.File(out / sh.file, "r") as f:
            for name in parts:
                parts[name].append(f[name][:])
    return {k: np.concatenate(v) for k, v in parts.items()}


def assert_byte_equal(out: Path, source: dict[str, np.ndarray], seed: int, val: float, test: float) -> None:
    """Each split holds exactly the planned source samples, in stored order, with the source's bytes."""
    n = len(next(iter(source.values())))
    for split, idx in assign_splits(n, val, test, seed).items():
        got = stored(out, split)
        assert sorted(got) == sorted(source)
        for name, values in got.items():
            want = source[name][idx]
            assert values.dtype == want.dtype and values.shape == want.shape, (name, values.dtype, values.shape)
            assert values.tobytes() == want.tobytes(), f"{split}/{name}: values differ from the source"


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if ".tmp-" in p.name or p.name.endswith(".part"))


# -- the two layouts ----------------------------------------------------------------------------
def test_pdebench_1d_tensor_with_coordinates(tmp_path):
    src = fx.write_pdebench_1d(tmp_path / "1D_Advection_Sols_beta0.4.hdf5", n=40, t=6, x=16)
    out = tmp_path / "adv"
    m = ingest(
        "hdf5",
        tmp_path / "1D_Advection_Sols_beta0.4.hdf5",
        out,
        shards=3,
        seed=5,
        val_fraction=0.2,
        test_fraction=0.1,
        options={"field": ["u=tensor"]},
    )
    assert [(f.name, f.dtype, f.shape) for f in m.fields] == [("u", "float32", (6, 16))]
    assert m.label_field is None
    assert_byte_equal(out, {"u": src["tensor"]}, 5, 0.2, 0.1)
    d = Manifest.load(out).provenance["details"]
    assert d["layout"] == "arrays"
    assert d["file_attrs"] == {"beta": 0.4}
    assert d["fields"]["u"] == {"path": "/tensor", "dtype": "float32", "shape": [40, 6, 16], "attrs": {"units": "m/s"}}
    for name in ("x-coordinate", "t-coordinate"):
        entry = d["arrays"][name]
        assert entry["shape"] == [len(src[name])] and entry["dtype"] == "float32"
        assert np.array_equal(np.asarray(entry["values"], dtype=np.float32), src[name]), name
    assert "tensor" not in d["arrays"]
    assert leftovers(tmp_path) == []


def test_several_arrays_and_a_label(tmp_path):
    """PDEBench's CFD layout (density, Vx, ... of one first axis) plus an integer label; float64
    and a big-endian array keep their values."""
    rng = np.random.default_rng(3)
    n = 30
    arrays = {
        "density": rng.random((n, 3, 8)).astype(np.float32),
        "Vx": rng.normal(size=(n, 3, 8)),  # float64
        "regime": rng.integers(0, 4, n).astype(np.int64),
        "be": rng.random((n, 2)).astype(">f4"),
    }
    with h5py.File(tmp_path / "cfd.h5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(f"sim/{k}", data=v)
        f["sim/big"] = np.zeros(hdf5_reader.SMALL_VALUES + 1, dtype=np.float32)
    fields = ["density=sim/density", "vx=sim/Vx", "regime=sim/regime", "be=/sim/be"]
    m = ingest("hdf5", tmp_path / "cfd.h5", tmp_path / "out", shards=2, options={"field": fields, "label": "regime"})
    assert [(f.name, f.dtype) for f in m.fields] == [
        ("density", "float32"),
        ("vx", "float64"),
        ("regime", "int64"),
        ("be", "float32"),
    ]
    assert m.label_field == "regime" and m.classes == tuple(str(i) for i in range(int(arrays["regime"].max()) + 1))
    source = {"density": arrays["density"], "vx": arrays["Vx"], "regime": arrays["regime"], "be": arrays["be"]}
    source["be"] = source["be"].astype(np.float32)  # stored in native byte order, same values
    assert_byte_equal(tmp_path / "out", source, 0, 0.1, 0.1)
    big = Manifest.load(tmp_path / "out").provenance["details"]["arrays"]["sim/big"]
    assert big == {"dtype": "float32", "shape": [hdf5_reader.SMALL_VALUES + 1]}  # too big for its values


def test_pdebench_2d_one_group_per_sample(tmp_path):
    src = fx.write_pdebench_2d(tmp_path / "2D_diff-react_NA_NA.h5", n=12, t=4, x=8, y=6, c=2)
    out = tmp_path / "dr"
    m = ingest("hdf5", tmp_path / "2D_diff-react_NA_NA.h5", out, shards=2, seed=1, options={"field": ["u=*/data"]})
    assert [(f.name, f.dtype, f.shape) for f in m.fields] == [("u", "float32", (4, 8, 6, 2))]
    # sample i is group str(i).zfill(4), whatever order the groups were created in
    assert_byte_equal(out, {"u": src["data"]}, 1, 0.1, 0.1)
    d = Manifest.load(out).provenance["details"]
    assert d["layout"] == "sample_groups"
    assert d["fields"]["u"]["path"] == "*/data" and d["fields"]["u"]["shape"] == [4, 8, 6, 2]
    g = d["sample_groups"]
    assert g["parent"] == "/" and g["count"] == 12 and g["names"] == [str(i).zfill(4) for i in range(12)]
    assert g["first_group_attrs"] == {"config": src["configs"][0]}
    assert g["attrs_differing_from_first"] == {"config": 11}  # the seed differs in every other group
    for axis, values in src["grid"].items():
        entry = g["first_group_arrays"][f"grid/{axis}"]
        assert np.array_equal(np.asarray(entry["values"], dtype=np.float32), values)
        assert "groups_differing_from_first" not in entry  # the same grid in every group
    assert d["arrays"] == {}


def test_a_channel_of_the_last_axis_in_both_layouts(tmp_path):
    src = fx.write_pdebench_2d(tmp_path / "dr.h5", n=12, t=4, x=8, y=6, c=2)
    out = tmp_path / "uv"
    fields = ["u=*/data[0]", "v=*/data[ 1 ]"]
    m = ingest("hdf5", tmp_path / "dr.h5", out, shards=2, seed=1, options={"field": fields})
    assert [(f.name, f.shape) for f in m.fields] == [("u", (4, 8, 6)), ("v", (4, 8, 6))]
    assert_byte_equal(out, {"u": src["data"][..., 0].copy(), "v": src["data"][..., 1].copy()}, 1, 0.1, 0.1)
    d = Manifest.load(out).provenance["details"]["fields"]
    assert d["u"]["channel"] == 0 and d["v"]["channel"] == 1 and d["u"]["shape"] == [4, 8, 6, 2]
    # whole arrays: the same, read in slabs
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["tensor"] = src["data"]
    out2 = tmp_path / "t"
    m2 = ingest("hdf5", tmp_path / "t.h5", out2, shards=2, seed=1, options={"field": ["v=tensor[1]"]})
    assert [(f.name, f.shape) for f in m2.fields] == [("v", (4, 8, 6))]
    assert_byte_equal(out2, {"v": src["data"][..., 1].copy()}, 1, 0.1, 0.1)


def test_diffusion_sorption_layout_with_many_root_attributes(tmp_path):
    """PDEBench's 1-D diffusion-sorption file: ``0000/data`` (T, X, 1) per sample and one root
    attribute ``0000/config`` per sample; the provenance keeps the first 100 attributes."""
    n = 120
    data = np.random.default_rng(4).random((n, 3, 5, 1)).astype(np.float32)
    with h5py.File(tmp_path / "1D_diff-sorp_NA_NA.h5", "w") as f:
        for i in range(n):
            f.create_dataset(f"{i:04d}/data", data=data[i], compression="lzf")
            f[f"{i:04d}/grid/x"] = np.linspace(0, 1, 5, dtype=np.float32)
            f[f"{i:04d}/grid/t"] = np.linspace(0, 500, 3, dtype=np.float32)
            f.attrs[f"{i:04d}/config"] = f"sim:\n  seed: {i}\n"
    m = ingest("hdf5", tmp_path / "1D_diff-sorp_NA_NA.h5", tmp_path / "out", options={"field": ["u=*/data"]})
    assert_byte_equal(tmp_path / "out", {"u": data}, 0, 0.1, 0.1)
    attrs = m.provenance["details"]["file_attrs"]
    assert list(attrs)[:2] == ["0000/config", "0001/config"] and attrs["0099/config"] == "sim:\n  seed: 99\n"
    assert len(attrs) == 101 and attrs["..."] == "20 more attribute(s) not listed"


def test_nested_sample_groups_natural_order_and_varying_arrays(tmp_path):
    """``runs/*/u`` with two fields; group names ``2`` < ``10``; a per-group array that differs
    between groups is flagged; a dataset beside the groups is recorded."""
    rng = np.random.default_rng(0)
    names = ["10", "2", "1", "33", "3"]
    order = sorted(names, key=int)
    u = {k: rng.random((3, 5)).astype(np.float32) for k in names}
    p = {k: np.array([int(k), -int(k)], dtype=np.int32) for k in names}
    with h5py.File(tmp_path / "runs.h5", "w") as f:
        for k in names:
            f[f"runs/{k}/u"] = u[k]
            f[f"runs/{k}/params"] = p[k]
            f[f"runs/{k}/dt"] = np.float64(0.5 if k != "33" else 0.25)
        f["runs/mesh"] = np.arange(4.0)
        f["runs"].attrs["solver"] = b"fd-2"
    m = ingest(
        "hdf5",
        tmp_path / "runs.h5",
        tmp_path / "out",
        val_fraction=0.2,
        test_fraction=0.0,
        options={"field": ["u=runs/*/u", "p=runs/*/params"]},
    )
    assert [(f.name, f.dtype, f.shape) for f in m.fields] == [("u", "float32", (3, 5)), ("p", "int32", (2,))]
    assert_byte_equal(
        tmp_path / "out",
        {"u": np.stack([u[k] for k in order]), "p": np.stack([p[k] for k in order])},
        0,
        0.2,
        0.0,
    )
    d = m.provenance["details"]
    assert d["sample_groups"]["names"] == order and d["sample_groups"]["parent"] == "/runs"
    assert d["sample_groups"]["first_group_arrays"]["dt"] == {
        "dtype": "float64",
        "shape": [],
        "values": 0.5,
        "groups_differing_from_first": 1,
    }
    assert d["arrays"] == {"runs/mesh": {"dtype": "float64", "shape": [4], "values": [0.0, 1.0, 2.0, 3.0]}}


# -- chunked reads ------------------------------------------------------------------------------
def test_slabs_cover_the_indices_within_bounded_slabs():
    rng = np.random.default_rng(0)
    for rows in (1, 3, 7, 100):
        idx = np.sort(rng.choice(200, size=60, replace=False)).astype(np.int64)
        runs = list(hdf5_reader.slabs(idx, rows))
        assert np.array_equal(np.concatenate([idx[a:b] for a, b, _, _ in runs]), idx)
        for a, b, lo, hi in runs:
            assert lo == idx[a] and hi == idx[b - 1] + 1 and hi - lo <= rows, (rows, a, b, lo, hi)


def test_reads_in_small_slabs_give_the_same_rows(tmp_path, monkeypatch):
    src = fx.write_pdebench_1d(tmp_path / "a.h5", n=50, t=3, x=4)
    source = reader_class("hdf5")(tmp_path / "a.h5", {"field": ["u=tensor"]})
    info = source.open()
    rng = np.random.default_rng(2)
    subsets = [np.arange(50), np.array([49]), np.arange(0, 50, 9), np.sort(rng.choice(50, 20, replace=False))]
    for block_rows, dense_rows in ((1, 256), (4, 256), (6, 2), (1000, 256)):
        monkeypatch.setattr(hdf5_reader, "BLOCK_BYTES", block_rows * info.fields[0].sample_bytes)
        monkeypatch.setattr(hdf5_reader, "DENSE_ROWS", dense_rows)
        for idx in subsets:
            got = source.read(idx.astype(np.int64))["u"]
            assert got.tobytes() == src["tensor"][idx].tobytes(), (block_rows, dense_rows, idx)


def test_write_shard_reads_pieces_of_bounded_bytes(tmp_path):
    """Large samples are fetched a few at a time: no read asks for more than ``piece_bytes``."""
    fx.write_pdebench_1d(tmp_path / "a.h5", n=30, t=8, x=32)
    source = reader_class("hdf5")(tmp_path / "a.h5", {"field": ["u=tensor"]})
    info = source.open()
    asked = []

    def read(indices):
        asked.append(len(indices))
        return source.read(indices)

    per_sample = info.fields[0].sample_bytes  # 1 KiB
    write_shard(tmp_path / "s.h5", info.fields, np.arange(30)[::-1].copy(), read, piece_bytes=4 * per_sample + 5)
    assert asked == [4] * 7 + [2]
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["u"][:].tobytes() == source.read(np.arange(30))["u"][::-1].tobytes()


# -- the command line ---------------------------------------------------------------------------
def test_cli_both_layouts_and_overwrite(cli, tmp_path):
    src1 = fx.write_pdebench_1d(tmp_path / "a.h5", n=20)
    r = cli("ingest", "hdf5", tmp_path / "a.h5", "--out", tmp_path / "ds", "--field", "u=tensor", "--shards", "2")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["provenance"]["options"] == {"field": ["u=tensor"]}
    assert sum(s["count"] for s in m["splits"].values()) == 20
    r = cli("ingest", "hdf5", tmp_path / "a.h5", "--out", tmp_path / "ds", "--field", "u=tensor")
    assert r.returncode == 2 and "already exists (use --overwrite" in r.stderr, r.stderr
    src2 = fx.write_pdebench_2d(tmp_path / "b.h5", n=10)
    r = cli("ingest", "hdf5", tmp_path / "b.h5", "--out", tmp_path / "ds", "--field", "u=*/data", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert_byte_equal(tmp_path / "ds", {"u": src2["data"]}, 0, 0.1, 0.1)
    assert src1["tensor"].shape[1:] != src2["data"].shape[1:]
    r = cli("ingest", "--help")
    assert "--field NAME=PATH" in r.stdout and "hdf5" in r.stdout


# -- bad input ----------------------------------------------------------------------------------
def _file(tmp: Path, build) -> Path:
    path = tmp / "sim.h5"
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _tensor_and_coords(f):
    f["tensor"] = np.zeros((5, 3, 4), np.float32)
    f["x-coordinate"] = np.arange(4, dtype=np.float32)
    f["grid/x"] = np.arange(4, dtype=np.float32)


def _groups(f, shapes=((2, 3),) * 3, extra=None):
    for i, shape in enumerate(shapes):
        f[f"{i:04d}/data"] = np.zeros(shape, np.float32)
        f[f"{i:04d}/grid/x"] = np.arange(3, dtype=np.float32)
    if extra:
        extra(f)


BAD = [
    # id, build, --field values, other options, words the error holds (besides the file)
    ("no-such-path", _tensor_and_coords, ["u=tensr"], {}, ["'tensr'", "/ holds", "tensor (dataset float32 (5, 3, 4))"]),
    (
        "no-such-nested-path",
        _tensor_and_coords,
        ["u=grid/z"],
        {},
        ["'grid/z'", "/grid holds", "x (dataset float32 (4,))"],
    ),
    ("path-is-a-group", _tensor_and_coords, ["u=grid"], {}, ["/grid is a group", "*/data"]),
    (
        "first-axis-disagrees",
        lambda f: (_tensor_and_coords(f), f.create_dataset("nu", data=np.zeros((4, 3)))),
        ["u=tensor", "nu=nu"],
        {},
        ["first (sample) axis", "/tensor has 5", "/nu has 4"],
    ),
    ("text-dtype", lambda f: f.create_dataset("names", data=[b"a", b"b"]), ["n=names"], {}, ["/names", "not numeric"]),
    (
        "compound-dtype",
        lambda f: f.create_dataset("rec", data=np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])),
        ["r=rec"],
        {},
        ["/rec", "not numeric"],
    ),
    ("complex-dtype", lambda f: f.create_dataset("z", data=np.zeros(3, np.complex64)), ["z=z"], {}, ["not numeric"]),
    ("empty-file", lambda f: None, ["u=tensor"], {}, ["empty", "holds no dataset"]),
    ("only-groups", lambda f: f.create_group("a/b"), ["u=a/b"], {}, ["empty", "holds no dataset"]),
    ("zero-samples", lambda f: f.create_dataset("tensor", shape=(0, 3), dtype="f4"), ["u=tensor"], {}, ["0 samples"]),
    ("scalar", lambda f: f.create_dataset("dt", data=0.1), ["dt=dt"], {}, ["/dt is a scalar"]),
    ("no-field", _tensor_and_coords, [], {}, ["--field NAME=PATH", "tensor (dataset"]),
    ("field-syntax", _tensor_and_coords, ["tensor"], {}, ["must be NAME=PATH"]),
    ("field-name", _tensor_and_coords, ["a/b=tensor"], {}, ["field name 'a/b'"]),
    ("field-twice", _tensor_and_coords, ["u=tensor", "u=x-coordinate"], {}, ["name one field twice"]),
    ("two-stars", _groups, ["u=*/*/data"], {}, ["one '*'"]),
    ("star-last", _groups, ["u=*"], {}, ["followed by the dataset"]),
    (
        "group-lacks-path",
        lambda f: _groups(f, extra=lambda g: g.create_group("0003/grid")),
        ["u=*/data"],
        {},
        ["sample group /0003 has no 'data'", "/0003 holds: grid (group"],
    ),
    (
        "groups-disagree",
        lambda f: _groups(f, shapes=((2, 3), (2, 3), (2, 4))),
        ["u=*/data"],
        {},
        ["sample groups disagree", "/0000/data is float32 (2, 3)", "/0002/data is float32 (2, 4)"],
    ),
    ("no-sample-groups", _tensor_and_coords, ["u=x-coordinate/*/data"], {}, ["no group 'x-coordinate'"]),
    (
        "mixed-layouts",
        lambda f: _groups(f, extra=lambda g: g.create_dataset("tensor", data=np.zeros((3, 2)))),
        ["u=*/data", "t=tensor"],
        {},
        ["one layout"],
    ),
    ("label-not-a-field", _tensor_and_coords, ["u=tensor"], {"label": "y"}, ["--label", "'y'"]),
    ("label-not-integer", _tensor_and_coords, ["u=tensor"], {"label": "u"}, ["--label u", "integer field"]),
    ("unknown-option", _tensor_and_coords, ["u=tensor"], {"text_field": "t"}, ["--text-field"]),
    ("channel-past-the-axis", _tensor_and_coords, ["u=tensor[4]"], {}, ["/tensor has 4 channel(s)", "0..3"]),
    ("channel-of-a-group-array", _groups, ["u=*/data[3]"], {}, ["/0000/data has 3 channel(s)", "0..2"]),
    ("channel-of-a-vector", lambda f: f.create_dataset("v", data=np.zeros(3)), ["u=v[0]"], {}, ["no per-sample axis"]),
    ("channel-syntax", _tensor_and_coords, ["u=tensor[a]"], {}, ["one integer in brackets"]),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_an_error_naming_file_and_path(tmp_path, case):
    _, build, fields, options, words = case
    src = _file(tmp_path, build)
    with pytest.raises(IngestError) as e:
        ingest("hdf5", src, tmp_path / "out", options={"field": fields, **options})
    msg = str(e.value)
    assert str(src) in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_not_an_hdf5_file(tmp_path):
    (tmp_path / "x.h5").write_text("time,u\n0,1\n")
    with pytest.raises(IngestError, match="x.h5: not a readable HDF5 file"):
        ingest("hdf5", tmp_path / "x.h5", tmp_path / "out", options={"field": ["u=u"]})
    with pytest.raises(IngestError, match="nope.h5: source does not exist"):
        ingest("hdf5", tmp_path / "nope.h5", tmp_path / "out", options={"field": ["u=u"]})
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


CLI_CASES = ["no-such-path", "first-axis-disagrees", "text-dtype", "empty-file", "groups-disagree"]


@pytest.mark.parametrize("case", [c for c in BAD if c[0] in CLI_CASES], ids=CLI_CASES)
def test_bad_input_through_the_cli(cli, tmp_path, case):
    _, build, fields, options, words = case
    src = _file(tmp_path, build)
    flags = [a for v in fields for a in ("--field", v)]
    r = cli("ingest", "hdf5", src, "--out", tmp_path / "out", *flags)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "sim.h5" in r.stderr and all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_read_error_while_writing_leaves_the_old_dataset(tmp_path):
    """A chunk that cannot be decoded (a corrupt gzip chunk) fails while the shards are written,
    naming the file, the field and the path; the dataset already at --out stays as it was."""
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=np.ones((6, 64), np.float32), chunks=(1, 64), compression="gzip")
    ingest("hdf5", path, tmp_path / "out", options={"field": ["u=tensor"]})
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with h5py.File(path, "r") as f:
        info = f["tensor"].id.get_chunk_info(3)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = b"\xff" * info.size
    path.write_bytes(bytes(raw))
    with pytest.raises(IngestError) as e:
        ingest("hdf5", path, tmp_path / "out", overwrite=True, options={"field": ["u=tensor"]})
    assert f"{path}: field 'u' (/tensor): cannot read" in str(e.value), str(e.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert leftovers(tmp_path) == []


def test_jsonable_attributes():
    j = hdf5_reader.jsonable
    assert j(np.float32(0.5)) == 0.5 and j(np.int64(3)) == 3 and j(np.bool_(True)) is True
    assert j(b"yaml: 1") == "yaml: 1" and j(np.bytes_(b"x")) == "x"
    assert j(np.array([1.0, np.nan, np.inf])) == [1.0, "nan", "inf"]
    assert j(np.array([b"a", b"b"])) == ["a", "b"]
    assert j(np.zeros(hdf5_reader.SMALL_VALUES + 1)) == {"dtype": "float64", "shape": [hdf5_reader.SMALL_VALUES + 1]}
    assert j(h5py.Empty("f4")) is None
    assert hdf5_reader.natural_key("2") < hdf5_reader.natural_key("10") < hdf5_reader.natural_key("a")
