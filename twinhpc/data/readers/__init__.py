"""Ingest readers, one module per KIND; looked up by name so a CLI start imports only one."""

from __future__ import annotations

import importlib

from ...errors import TwinError
from ..source import Source

#: KIND -> "module:Class" (modules are imported on demand)
READERS = {
    "npz": "npz:NpzSource",
    "csv": "csv:CsvSource",
    "cifar10": "cifar10:Cifar10Source",
    "imdb": "imdb:ImdbSource",
    "image-folder": "image_folder:ImageFolderSource",
    "parquet": "parquet:ParquetSource",
    "jsonl": "jsonl:JsonlSource",
    "hdf5": "hdf5:Hdf5Source",
}


def reader_class(kind: str) -> type[Source]:
    """The :class:`Source` subclass for ``kind``; an unknown kind is an error listing the kinds."""
    try:
        target = READERS[kind]
    except KeyError:
        raise TwinError(f"unknown KIND {kind!r}; choose one of {', '.join(READERS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
