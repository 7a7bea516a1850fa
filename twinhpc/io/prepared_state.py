"""``state.h5``: the fitted state of a preprocessed dataset (format ``twinhpc-preprocess-state``
version 1; ``docs/preprocess.md`` is the user-facing description).

Layout (``h5dump state.h5`` shows it)::

    /            attrs: format, version, kind (the transform's), settings (JSON), and the
                        caller's: fingerprint, config, source, label, twinhpc_version
    /<name>      one dataset per fitted array, numbers as they are, an array of Python strings
                 (dtype object) as UTF-8 strings: /mean /std /terms /idf ...

This module reads and writes the file; what the arrays and settings mean belongs to the
transform of each ``kind`` (:mod:`twinhpc.preprocess.transform`), which
:mod:`twinhpc.preprocess.prepared` builds from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TwinError
from .atomic import hdf5_image, replace_durably

STATE = "state.h5"
STATE_FORMAT = "twinhpc-preprocess-state"
STATE_VERSION = 1


def write_prepared_state(
    path: Path, kind: str, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any], attrs: Mapping[str, Any]
) -> None:
    """Write ``state.h5`` at ``path`` atomically (``path.tmp`` first, then renamed over it).

    Parameters
    ----------
    kind : the transform's kind (attribute ``kind``).
    arrays : name → array, one dataset each (in this order); an object array holds strings.
    settings : the transform's settings, stored as the JSON attribute ``settings``.
    attrs : further attributes (strings and numbers), written after ``kind`` and ``settings``.

    Raises
    ------
    OSError
        When the folder cannot be written; no ``path.tmp`` is left behind.
    """
    import h5py

    tmp = path.with_name(path.name + ".tmp")
    try:
        with hdf5_image(tmp, track_order=True) as f:
            f.attrs["format"] = STATE_FORMAT
            f.attrs["version"] = STATE_VERSION
            f.attrs["kind"] = kind
            f.attrs["settings"] = json.dumps(settings)
            for k, v in attrs.items():
                f.attrs[k] = v
            for name, arr in arrays.items():
                if arr.dtype == object:
                    f.create_dataset(name, data=arr, shape=arr.shape, dtype=h5py.string_dtype("utf-8"))
                else:
                    f.create_dataset(name, data=arr)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def read_prepared_state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the attributes of the ``state.h5`` at ``path``.

    Returns
    -------
    arrays : name → array; strings come back as an object array of ``str``.
    attrs : name → ``str`` or Python number (``format``, ``version``, ``kind``, ``settings`` as
        its JSON text, and the caller's).

    Raises
    ------
    TwinError
        Naming the file: missing, not HDF5, another format or version, or damaged.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if attrs.get("format") != STATE_FORMAT:
                raise TwinError(
                    f"{path}: not a twinhpc preprocessing state (attribute 'format' is {attrs.get('format')!r})"
                )
            if attrs.get("version") != STATE_VERSION:
                raise TwinError(
                    f"{path}: state version {attrs.get('version')} is not supported "
                    f"(this twinhpc reads {STATE_VERSION})"
                )
            arrays = {
                name: (np.array(ds.asstr()[()], dtype=object) if h5py.check_string_dtype(ds.dtype) else ds[()])
                for name, ds in f.items()
            }
    except TwinError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise TwinError(f"{path}: unreadable preprocessing state ({type(e).__name__}: {e})") from None
    return arrays, attrs
