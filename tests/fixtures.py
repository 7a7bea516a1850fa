"""Small sources in the real on-disk formats of every ingest KIND, for tests and benchmarks.

Each ``write_<kind>`` function writes a source and returns what it wrote, in the reader's global
sample order, so that a test can compare a dataset with its source without re-implementing the
reader. Every sample carries something unique (random pixels, an id in its text or features), so
stored samples can be mapped back to the source by content.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import struct
import uuid
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"


# -- CIFAR-10 (python version) ------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 wrote the official CIFAR-10 batches.

    Strings (``str`` and ``bytes``) become Python 2 ``str`` opcodes (``SHORT_BINSTRING`` /
    ``BINSTRING``), which Python 3 loads as ``bytes`` under ``encoding="bytes"``; globals name
    ``numpy.core`` as NumPy 1 did. (Python 3's own protocol-2 pickles would route every ``bytes``
    object through ``_codecs.encode``, a global the real files never contain.)
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("utf-8")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global


def py2_pickle(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` as a Python-2-style protocol-2 pickle."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    Path(path).write_bytes(buf.getvalue())


def write_cifar10(
    directory: str | os.PathLike, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0, meta: bool = True
) -> dict:
    """Write the CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

    Pixels are random, so every image is unique. Returns ``image`` (N, 32, 32, 3) uint8 HWC,
    ``label`` (N,) int64, ``split`` (N,) str and ``classes``, in reader order (batches 1-5, test).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels, splits = [], [], []
    for name, n in [(b, n_train_per_batch) for b in CIFAR_TRAIN_BATCHES] + [(CIFAR_TEST_BATCH, n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # row: R plane, G plane, B plane
        y = rng.integers(0, 10, size=n).tolist()
        py2_pickle(
            {
                b"batch_label": f"{name} of 6".encode(),
                b"labels": y,
                b"data": data,
                b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
            },
            directory / name,
        )
        images.append(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(y, dtype=np.int64))
        splits += ["test" if name == CIFAR_TEST_BATCH else "train"] * n
    if meta:
        py2_pickle(
            {
                b"num_cases_per_batch": n_train_per_batch,
                b"num_vis": 3072,
                b"label_names": [c.encode() for c in CIFAR_CLASSES],
            },
            directory / "batches.meta",
        )
    return {
        "image": np.concatenate(images),
        "label": np.concatenate(labels),
        "split": np.array(splits),
        "classes": CIFAR_CLASSES if meta else tuple(str(i) for i in range(10)),
    }


class Exploit:
    """Pickles to a call of ``os.system(command)``: what a hostile "batch" file would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# -- IMDB (aclImdb) -----------------------------------------------------------------------------
def write_imdb(directory: str | os.PathLike, n_per_class: int = 3, n_unsup: int = 2, seed: int = 0) -> dict:
    """Write the aclImdb layout: ``{train,test}/{neg,pos}/<id>_<rating>.txt`` and ``train/unsup``.

    Texts are unique (they hold their split, class and id) and include ``<br />`` tags, non-ASCII
    text and, in one file, an invalid UTF-8 byte. Returns ``text``, ``label``, ``rating`` and
    ``split`` arrays for every file written (unsup included, label -1), decoded as the reader must
    decode them (UTF-8, invalid bytes replaced).
    """
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    out = {"text": [], "label": [], "rating": [], "split": []}
    for split in ("train", "test"):
        for label, cls in enumerate(("neg", "pos")):
            folder = directory / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                rating = int(rng.integers(1, 5)) if cls == "neg" else int(rng.integers(7, 11))
                raw = f"{split} {cls} review {i}: caf\u00e9 <br /><br />stars {rating}".encode()
                if i == 0:
                    raw += b" bad byte \xff"
                (folder / f"{i}_{rating}.txt").write_bytes(raw)
                out["text"].append(raw.decode("utf-8", errors="replace"))
                out["label"].append(label)
                out["rating"].append(rating)
                out["split"].append(split)
    folder = directory / "train" / "unsup"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_unsup):
        raw = f"unsup review {i}".encode()
        (folder / f"{i}_0.txt").write_bytes(raw)
        out["text"].append(raw.decode())
        out["label"].append(-1)
        out["rating"].append(0)
        out["split"].append("unlabeled")
    (directory / "train" / "urls_pos.txt").write_text("http://example.invalid/\n")  # present in the real layout
    return {
        "text": np.array(out["text"], dtype=object),
        "label": np.array(out["label"], dtype=np.int64),
        "rating": np.array(out["rating"], dtype=np.int64),
        "split": np.array(out["split"]),
        "classes": ("neg", "pos"),
    }


# -- tables: CSV and Parquet --------------------------------------------------------------------
def table_columns(n: int = 30, seed: int = 0, label_kind: str = "str") -> dict[str, list]:
    """Columns of a small mixed table: ``id`` (unique int), ``f1`` (float, one missing), ``f2``
    (int), ``color`` (text with a comma and one missing value), ``label`` (``str`` class names,
    ``int`` class ids or ``float`` regression targets, by ``label_kind``).

    Missing values are ``None``.
    """
    rng = np.random.default_rng(seed)
    f1 = [float(v) for v in np.round(rng.normal(size=n), 3)]
    f1[1] = None
    color = [str(v) for v in rng.choice(["red", "green", "blue, dark"], size=n)]
    color[2] = None
    if label_kind == "str":
        label = [str(v) for v in rng.choice(["cat", "dog", "bird"], size=n)]
    elif label_kind == "int":
        label = [int(v) for v in rng.choice([1, 3, 10], size=n)]
    else:
        label = [float(v) for v in np.round(rng.normal(size=n), 3)]
    return {
        "id": list(range(100, 100 + n)),
        "f1": f1,
        "f2": [int(v) for v in rng.integers(-5, 5, size=n)],
        "color": color,
        "label": label,
    }


def write_csv(path: str | os.PathLike, n: int = 30, seed: int = 0, label_kind: str = "str") -> dict[str, list]:
    """Write :func:`table_columns` as a CSV file with a header (missing values as empty fields).

    Returns the columns as written (``None`` for missing values).
    """
    cols = table_columns(n, seed, label_kind)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in zip(*cols.values()):
            w.writerow(["" if v is None else v for v in row])
    return cols


def write_parquet(
    path: str | os.PathLike,
    n: int = 30,
    seed: int = 0,
    parts: int = 1,
    row_group_size: int = 7,
    label_kind: str = "str",
    hive: bool = False,
) -> dict[str, list]:
    """Write :func:`table_columns` as Parquet.

    ``parts == 1`` and not ``hive``: one file at ``path``. Otherwise ``path`` is a directory as
    Spark writes it: ``part-<i>-<uuid>.snappy.parquet`` files, a ``_SUCCESS`` marker and hidden
    ``.crc`` files; with ``hive`` the rows are split by ``color`` into ``color=<value>/``
    sub-directories (missing colours go to ``color=__HIVE_DEFAULT_PARTITION__``) and the files
    lose that column. Returns the columns in reader order (files sorted by relative path); with
    ``hive`` the ``color`` column holds the directory values.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = table_columns(n, seed, label_kind)
    path = Path(path)
    if parts == 1 and not hive:
        pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
        return cols
    path.mkdir(parents=True, exist_ok=True)
    (path / "_SUCCESS").write_bytes(b"")
    if hive:
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(cols["color"]):
            groups.setdefault("__HIVE_DEFAULT_PARTITION__" if c is None else c, []).append(i)
        chunks = [(f"color={key}", rows) for key, rows in groups.items()]
    else:
        bounds = [n * i // parts for i in range(parts + 1)]
        chunks = [("", list(range(bounds[i], bounds[i + 1]))) for i in range(parts)]
    files = []
    for i, (sub, rows) in enumerate(chunks):
        name = f"part-{i:05d}-{uuid.UUID(int=i)}-c000.snappy.parquet"
        (path / sub).mkdir(exist_ok=True)
        part = {k: [v[r] for r in rows] for k, v in cols.items() if not (hive and k == "color")}
        pq.write_table(pa.table(part), path / sub / name, row_group_size=row_group_size)
        (path / sub / f".{name}.crc").write_bytes(b"crc")
        files.append((f"{sub}/{name}", sub.partition("=")[2], rows))
    order = [(value, rows) for _, value, rows in sorted(files)]
    out = {k: [v[r] for _, rows in order for r in rows] for k, v in cols.items()}
    if hive:
        out["color"] = [None if value == "__HIVE_DEFAULT_PARTITION__" else value for value, rows in order for _ in rows]
    return out


# -- JSON lines ---------------------------------------------------------------------------------
def write_jsonl(path: str | os.PathLike, n: int = 25, seed: int = 0, label_key: str = "stars") -> list[dict]:
    """Write Yelp-review-style JSON lines (``review_id``, ``text``, ``label_key`` 1-5, ``useful``),
    with a blank line after every 7th record and ``\\r\\n`` line ends on some lines.

    Returns the records in file order; every ``text`` is unique and some hold newlines, quotes
    and non-ASCII characters.
    """
    rng = np.random.default_rng(seed)
    records = []
    with open(path, "wb") as f:
        for i in range(n):
            rec = {
                "review_id": f"r{i:04d}",
                "text": f'review {i}: "great"\nfood \u00e0 la carte \u2605',
                label_key: int(rng.integers(1, 6)),
                "useful": int(rng.integers(0, 3)),
            }
            records.append(rec)
            f.write(json.dumps(rec, ensure_ascii=i % 2 == 0).encode() + (b"\r\n" if i % 3 == 0 else b"\n"))
            if i % 7 == 6:
                f.write(b"\n")
    return records


# -- image folder -------------------------------------------------------------------------------
def write_image_folder(
    directory: str | os.PathLike,
    n_per_class: int = 3,
    classes=("cat", "dog", "zebra"),
    size: tuple[int, int] = (8, 12),
    seed: int = 0,
) -> dict:
    """Write ``<class>/<name>`` PNG images of random pixels, ``size`` = (H, W).

    Files mix extensions ``.png`` and ``.PNG`` and image modes (RGB, RGBA with an opaque alpha,
    and, for the first image of each class, grayscale ``L``), and each class folder also holds a
    ``notes.txt`` and a hidden file, which the reader ignores. Returns ``image`` (N, H, W, 3)
    uint8 as decoded to RGB, ``label`` int64, ``files`` and ``classes``, in reader order.
    """
    from PIL import Image

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    images, labels, files = [], [], []
    for label, cls in enumerate(classes):
        folder = directory / cls
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\0\1")
        for i in range(n_per_class):
            name = f"img{i:03d}.{'PNG' if i % 2 else 'png'}"
            if i == 0:
                gray = rng.integers(0, 256, size=size, dtype=np.uint8)
                Image.fromarray(gray, "L").save(folder / name)
                rgb = np.repeat(gray[..., None], 3, axis=2)
            else:
                rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                if i % 3 == 2:
                    Image.fromarray(np.dstack([rgb, np.full(size, 255, np.uint8)]), "RGBA").save(folder / name)
                else:
                    Image.fromarray(rgb, "RGB").save(folder / name)
            images.append(rgb)
            labels.append(label)
            files.append(folder / name)
    return {
        "image": np.stack(images),
        "label": np.array(labels, dtype=np.int64),
        "files": files,
        "classes": tuple(classes),
    }


# -- NumPy --------------------------------------------------------------------------------------
def write_npz(path: str | os.PathLike, n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """Write an ``.npz`` with ``x`` (n, 4) float32 (unique rows: column 0 is the sample id) and
    ``y`` (n,) int64 class ids 0-2. Returns the arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 0] = np.arange(n)
    arrays = {"x": x, "y": rng.integers(0, 3, size=n).astype(np.int64)}
    np.savez(path, **arrays)
    return arrays


# -- HDF5 simulation outputs (PDEBench's layouts) -----------------------------------------------
def write_pdebench_1d(path: str | os.PathLike, n: int = 40, t: int = 6, x: int = 16, seed: int = 0) -> dict:
    """Write a file in the layout of PDEBench's 1-D files (advection, Burgers): ``tensor`` float32
    (n, t, x), ``x-coordinate`` (x,) and ``t-coordinate`` (t + 1,) float32, the PDE parameter as a
    root attribute (``beta``); plus an ``units`` attribute on ``tensor``. Returns the arrays and
    attributes written."""
    import h5py

    rng = np.random.default_rng(seed)
    out = {
        "tensor": rng.normal(size=(n, t, x)).astype(np.float32),
        "x-coordinate": ((np.arange(x, dtype=np.float32) + 0.5) / x).astype(np.float32),
        "t-coordinate": np.linspace(0, 2, t + 1, dtype=np.float32),
        "attrs": {"beta": 0.4},
        "tensor_attrs": {"units": "m/s"},
    }
    with h5py.File(path, "w") as f:
        for name in ("tensor", "x-coordinate", "t-coordinate"):
            f.create_dataset(name, data=out[name])
        f.attrs["beta"] = 0.4
        f["tensor"].attrs["units"] = "m/s"
    return out


def write_pdebench_2d(
    path: str | os.PathLike, n: int = 12, t: int = 4, x: int = 8, y: int = 6, c: int = 1, seed: int = 0
) -> dict:
    """Write a file in the layout of PDEBench's 2-D files (diffusion-reaction, shallow water): one
    group per sample named ``0000``, ``0001``, ... (created in a shuffled order, as PDEBench's
    process pool writes them), each with ``data`` float32 (t, x, y, c), ``grid/x``, ``grid/y``,
    ``grid/t`` float32 and a ``config`` attribute (YAML text holding the sample's seed). Returns
    ``data`` stacked in group-name order, the grids and the configs."""
    import h5py

    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, t, x, y, c)).astype(np.float32)
    grid = {
        "x": np.linspace(-1, 1, x, dtype=np.float32),
        "y": np.linspace(-1, 1, y, dtype=np.float32),
        "t": np.linspace(0, 5, t, dtype=np.float32),
    }
    configs = [f"sim:\n  seed: {i}\n  dt: 0.01\n" for i in range(n)]
    with h5py.File(path, "w") as f:
        for i in rng.permutation(n):
            name = str(i).zfill(4)
            f.create_dataset(f"{name}/data", data=data[i], dtype="float32", compression="lzf")
            for axis, values in grid.items():
                f.create_dataset(f"{name}/grid/{axis}", data=values, dtype="float32")
            f[name].attrs["config"] = configs[i]
    return {"data": data, "grid": grid, "configs": configs}


def small_cnn_job(dataset: str, lr: float = 0.05, train: str = "epochs = 2", more: str = "") -> str:
    """The TOML of a tiny CNN job on 8×8 grey images (channels 4, hidden 8; SGD; batch 8):
    ``train`` is the body of its ``[train]`` table, ``more`` the tables after it."""
    return (
        f'[data]\ndataset = "{dataset}"\nbatch_size = 8\n[model]\nname = "cnn"\n[model.structure]\n'
        f'channels = 4\nhidden = 8\n[optim]\nname = "sgd"\nlr = {lr}\n[train]\n{train}\n{more}'
    )


# -- a tiny heat-equation ensemble (the layout of `twinhpc simulate`'s datasets) ----------------
def heat_ensemble(n: int = 48, steps: int = 20, grid: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` scenarios of the 2-D heat equation ``u_t = α ∇²u + f`` on the unit square (``grid``
    × ``grid`` cells, u = 1 outside), solved with the explicit five-point scheme (4 sub-steps per
    saved step, stable: ``α dt / dx² ≤ 0.2``). Each scenario has its diffusivity α and source
    amplitude a (``params`` = [α, a]) and a Gaussian source whose centre moves along a random line;
    ``forcing[t]`` is the source over saved step t. Returns ``field`` (n, steps+1, grid, grid),
    ``forcing`` (n, steps, grid, grid), ``params`` (n, 2), all float32."""
    rng = np.random.default_rng(seed)
    dx, substeps, dt_save = 1.0 / grid, 4, 0.02
    dt = dt_save / substeps
    xs = (np.arange(grid) + 0.5) * dx
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    fields = np.empty((n, steps + 1, grid, grid), np.float32)
    forcing = np.empty((n, steps, grid, grid), np.float32)
    params = np.empty((n, 2), np.float32)
    for i in range(n):
        alpha, amp = rng.uniform(0.005, 0.01), rng.uniform(5.0, 15.0)
        assert alpha * dt / dx**2 <= 0.2
        start, end = rng.uniform(0.2, 0.8, 2), rng.uniform(0.2, 0.8, 2)
        u = 1.0 + 0.5 * np.exp(-((X - rng.uniform(0.3, 0.7)) ** 2 + (Y - rng.uniform(0.3, 0.7)) ** 2) / 0.02)
        fields[i, 0], params[i] = u, (alpha, amp)
        for t in range(steps):
            cx, cy = start + (end - start) * t / max(steps - 1, 1)
            f = amp * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / 0.01)
            for _ in range(substeps):
                p = np.pad(u, 1, constant_values=1.0)
                lap = (p[2:, 1:-1] + p[:-2, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2] - 4 * u) / dx**2
                u = u + dt * (alpha * lap + f)
            fields[i, t + 1], forcing[i, t] = u, f
    return {"field": fields, "forcing": forcing, "params": params}


def field_job(
    dataset: str, model: str = "fno2d", structure: str = "", train: str = "epochs = 2", more: str = ""
) -> str:
    """The TOML of a small field job (``train.task = "field"``, Adam, global batch 4 scenarios):
    ``structure`` is the body of ``[model.structure]``, ``train`` of ``[train]``, ``more`` the
    tables after it."""
    return (
        f'[data]\ndataset = "{dataset}"\nbatch_size = 4\n[model]\nname = "{model}"\n[model.structure]\n{structure}\n'
        f'[optim]\nname = "adam"\nlr = 0.003\n[train]\ntask = "field"\n{train}\n{more}'
    )


def tiny_plate_twin_job(out: str = "runs/twin", epochs: int = 2, prior: str = "none", forcing_window: int = 1) -> str:
    """The TOML of a tiny plate twin: ``[simulate]`` 16 scenarios of 8 steps on a 10×10 grid
    (test and val 4 each, into data/plate) and a small fno2d field job on them (``train.out``
    ``out``, ``train.prior`` ``prior``, ``train.forcing_window`` ``forcing_window``)."""
    return (
        '[data]\ndataset = "data/plate"\nbatch_size = 4\n[model]\nname = "fno2d"\n[model.structure]\n'
        "width = 8\nmodes = 3\nlayers = 2\nprojection = 16\npadding = 2\n"
        '[optim]\nname = "adam"\nlr = 0.003\n'
        f'[train]\ntask = "field"\nepochs = {epochs}\nout = "{out}"\n'
        f'prior = "{prior}"\nforcing_window = {forcing_window}\n'
        "[simulate]\nscenarios = 16\ngrid = [10, 10]\nsteps = 8\nval_fraction = 0.25\ntest_fraction = 0.25\n"
        "shards = 2\n"
    )
