"""Writing and opening shard files (``<split>-<i>-of-<n>.h5``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ..errors import DatasetError, IngestError
from .format import FORMAT_VERSION, FieldSpec, ShardInfo, chunk_rows, sha256_file

COMPRESSIONS = ("none", "gzip", "lzf")


def write_shard(
    path: Path,
    fields: tuple[FieldSpec, ...],
    indices: np.ndarray,
    read: Callable[[np.ndarray], dict[str, np.ndarray]],
    compression: str = "none",
    piece: int = 8192,
    piece_bytes: int = 64 << 20,
) -> ShardInfo:
    """Write one shard holding the samples ``indices`` (global, in stored order).

    Samples are fetched with ``read`` in pieces of ``piece`` rows, fewer when a piece would hold
    more than ``piece_bytes`` (large samples such as simulated fields; at least one row), each
    piece sorted for the reader, then put back in stored order, so memory stays bounded. Datasets are created with
    ``track_times=False`` so that the same samples always give the same bytes and checksum.
    """
    if compression not in COMPRESSIONS:
        raise IngestError(f"--compression must be one of {COMPRESSIONS}, got {compression!r}")
    comp = None if compression == "none" else compression
    count = len(indices)
    piece = max(1, min(piece, piece_bytes // max(1, sum(spec.sample_bytes for spec in fields))))
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=True) as f:
        f.attrs["format"] = "twinhpc-dataset-shard"
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["count"] = count
        dsets = {}
        for spec in fields:
            dsets[spec.name] = f.create_dataset(
                spec.name,
                shape=(count, *spec.shape),
                dtype=spec.h5_dtype(),
                chunks=(chunk_rows(spec, count), *spec.shape),
                compression=comp,
                track_times=False,
            )
        for a in range(0, count, piece):
            want = np.asarray(indices[a : a + piece], dtype=np.int64)
            order = np.argsort(want, kind="stable")
            got = read(want[order])
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            for spec in fields:
                arr = got[spec.name]
                if arr.shape != (len(want), *spec.shape):
                    raise IngestError(
                        f"field {spec.name!r}: reader gave shape {arr.shape}, schema says {(len(want), *spec.shape)}"
                    )
                dsets[spec.name][a : a + len(want)] = arr[inverse]
    os.replace(tmp, path)
    return ShardInfo(path.name, count, sha256_file(path))


def open_shard(path: Path) -> h5py.File:
    """Open a shard read-only; a missing or unreadable file raises :class:`DatasetError` naming it."""
    if not path.exists():
        raise DatasetError(f"{path}: shard file is missing")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: shard is not a readable HDF5 file ({e})") from None


def check_shard_schema(f: h5py.File, path: Path, fields: tuple[FieldSpec, ...], count: int) -> list[str]:
    """Problems of one open shard against the manifest (empty list when it matches)."""
    problems = []
    for spec in fields:
        if spec.name not in f:
            problems.append(f"{path}: field {spec.name!r} is missing")
            continue
        ds = f[spec.name]
        want_shape = (count, *spec.shape)
        if ds.shape != want_shape:
            problems.append(f"{path}: field {spec.name!r} has shape {ds.shape}, manifest says {want_shape}")
        if spec.is_text:
            if h5py.check_string_dtype(ds.dtype) is None:
                problems.append(f"{path}: field {spec.name!r} has dtype {ds.dtype}, manifest says str")
        elif ds.dtype != np.dtype(spec.dtype):
            problems.append(f"{path}: field {spec.name!r} has dtype {ds.dtype}, manifest says {spec.dtype}")
    return problems
