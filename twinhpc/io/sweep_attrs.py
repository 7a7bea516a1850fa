"""Root attributes of ``SWEEP/sweep.h5`` that :func:`twinhpc.io.sweep.read_sweep` does not
return: read one at a time, with a default for a file written without it."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TwinError


def sweep_executor(path: str | os.PathLike[str]) -> str:
    """The ``executor`` attribute of sweep.h5 at ``path`` (``local``, ``slurm``, ``debug``,
    ``dask``): which executor the sweep's driver launched its trials with; ``""`` when the file
    does not say.

    Raises
    ------
    TwinError
        Naming the file when it is missing or not HDF5.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("executor", "")
    except (FileNotFoundError, OSError) as e:
        raise TwinError(f"{path}: cannot read the sweep file ({e})") from None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
