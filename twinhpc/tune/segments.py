"""``SWEEP/trials/<id>/segment.json``: the job id of a trial's latest segment, kept beside its run.

The driver saves a segment's job id in sweep.h5 (:meth:`Sweep.started
<twinhpc.tune.sweep.Sweep.started>`) only after the executor has accepted the segment. A driver
that dies in between leaves the trial ``running`` without a job id while its segment may run. So
the job id is also written here, twice: by the driver as soon as the executor accepted the
segment, and by the segment itself when it starts (:class:`~twinhpc.tune.submit.VerbCall`: its
``submitit.JobEnvironment().job_id``; the Dask executor's task: its key; the debug executor: its
own id). A new driver settling a ``running`` trial without a job id reads this file first
(:func:`handed_out_job`): a record of the trial's current segment (the same rung and epochs) gives
the job id to ask the executor about; only without one is the segment run again.

The record is JSON: ``job_id``, ``trial``, ``rung``, ``epochs`` (the segment's ``--until-epoch``),
``by`` (``driver`` or ``segment``), ``host``, ``pid`` and ``time`` (Unix seconds), written
atomically (a temporary name, then a rename). This module imports nothing heavy: the segment's
process and ``twinhpc sweep status`` read it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..io.atomic import writing

#: the record's name in the trial's run folder
SEGMENT_FILE = "segment.json"


def write_segment_record(out: str | os.PathLike[str], job_id: str, trial: int, rung: int, epochs: int, by: str) -> Path:
    """Write ``OUT/segment.json`` for the segment ``job_id`` of ``trial`` (to ``rung``, ``epochs``
    epochs), atomically; ``by``: ``"driver"`` or ``"segment"``.

    Raises
    ------
    TwinError
        The file cannot be written (naming it).
    """
    path = Path(out) / SEGMENT_FILE
    record = {
        "job_id": str(job_id),
        "trial": int(trial),
        "rung": int(rung),
        "epochs": int(epochs),
        "by": by,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
    }
    with writing(path, lambda e: f"{path}: cannot record the job id of trial {trial}'s segment ({e})") as tmp:
        tmp.write_text(json.dumps(record) + "\n")
    return path


def read_segment_record(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record in ``OUT/segment.json``, or ``None`` when there is none (or it cannot be read:
    a segment that wrote nothing readable is treated as one that never started)."""
    try:
        value = json.loads((Path(out) / SEGMENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not value.get("job_id"):
        return None
    return value


def handed_out_job(out: str | os.PathLike[str], trial: int, rung: int, epochs: int) -> str | None:
    """The job id in ``OUT/segment.json`` when it records a segment of ``trial`` to ``rung`` and
    ``epochs`` epochs (the segment the sweep handed out last), else ``None``. An older segment's
    record (an earlier rung) does not count; one of the same rung that an earlier driver launched
    and that vanished is asked about too, and found gone."""
    record = read_segment_record(out)
    if record is None:
        return None
    if (record.get("trial"), record.get("rung"), record.get("epochs")) != (trial, rung, epochs):
        return None
    return str(record["job_id"])
