"""Defaults shared by the job file and the Python API: one value per fact."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from ..errors import TwinError

#: Seconds a rank may wait in a collective for the other ranks before the wait is reported (the
#: ranks that have not arrived, this rank, the collective) and the job aborted.
STALL_TIMEOUT_S = 300.0
#: Environment variable setting that default for every verb and the Python API (seconds, a
#: number >= 0; 0 turns the bound off). A job file's ``train.stall_timeout`` (or ``--set``) wins.
STALL_TIMEOUT_ENV = "TWINHPC_STALL_TIMEOUT"

#: Gradient bucket size of the data-parallel all-reduce, MiB.
BUCKET_CAP_MB = 25.0


def stall_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """The default stall timeout: ``$TWINHPC_STALL_TIMEOUT`` when set, else :data:`STALL_TIMEOUT_S`.

    Raises
    ------
    TwinError
        Naming the variable, when it is not a finite number >= 0.
    """
    text = environ.get(STALL_TIMEOUT_ENV, "").strip()
    if not text:
        return STALL_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise TwinError(f"${STALL_TIMEOUT_ENV}: expected seconds (a number >= 0, 0: no bound), got {text!r}")
    return value
