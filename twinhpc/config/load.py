"""Reading a job file: TOML → :class:`~twinhpc.config.schema.Job`, with ``--set`` overrides.

::

    job = load_job("jobs/cifar10-cnn.toml", overrides=["optim.lr=0.01", "train.epochs=3"])
    trial = override(job, {"optim.lr": 3e-4, "model.structure.hidden": 128})   # for sweeps

Every error is a :class:`~twinhpc.config.fields.JobFileError` naming the dotted key and where
the value came from: the job file, or the ``--set`` item.
"""

from __future__ import annotations

import datetime as _dt
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import TwinError
from .fields import JobFileError
from .schema import Job

#: where a job file that names no ``train.out`` writes its run: ``runs/<job file stem>``
RUNS_DIR = "runs"


def parse_override(item: str) -> tuple[str, Any]:
    """``"section.key=value"`` → ``("section.key", value)``.

    The value is read as a TOML value (``3``, ``1e-3``, ``true``, ``"x"``, ``[1, 2]``,
    ``{a = 1}``); anything that is not one, and TOML dates and times (``01:00:00`` is a Slurm
    time, not a clock time), is kept as the literal string.

    Raises
    ------
    JobFileError
        When ``item`` has no ``=`` or no dotted key before it.
    """
    dotted, eq, text = item.partition("=")
    dotted = dotted.strip()
    if not eq or "." not in dotted or not all(dotted.split(".")):
        raise JobFileError(dotted or item, "expected section.key=value", where=f"--set {item}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return dotted, text.strip()
    if isinstance(value, (_dt.date, _dt.time, _dt.datetime)):
        return dotted, text.strip()
    return dotted, value


def _apply(tables: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``tables`` (nested dicts, modified in place) with each dotted key set to its value."""
    for dotted, value in values.items():
        node = tables
        *path, last = dotted.split(".")
        for part in path:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return tables


def _build(tables: dict[str, Any], where: str | None, sources: Mapping[str, str]) -> Job:
    """:meth:`Job.from_dict`, with an error about an overridden key blamed on its ``--set`` item."""
    try:
        return Job.from_dict(tables)
    except JobFileError as e:
        for dotted, source in sources.items():
            if e.key == dotted or e.key.startswith(dotted + "."):
                raise e.at(source) from None
        raise (e.at(where) if where else e) from None


def load_job(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Job:
    """Read, override and validate a job file.

    Parameters
    ----------
    path : the TOML job file.
    overrides : ``"section.key=value"`` items (``--set``), applied in order after the file.

    Returns
    -------
    Job
        With ``train.out`` defaulting to ``runs/<file stem>`` and ``slurm.job_name`` to the file
        stem when neither the file nor an override sets them.

    Raises
    ------
    TwinError
        The file cannot be read or is not TOML (the message names the file and TOML's line).
    JobFileError
        A key is unknown, missing or invalid; the message names the dotted key and the file, or
        the ``--set`` item it came from, and says what was expected.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TwinError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TwinError(f"{path}: cannot read the job file ({e})") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TwinError(f"{path}: not valid TOML ({e})") from None
    values, sources = {}, {}
    for item in overrides:
        dotted, value = parse_override(item)
        try:
            Job.check_key(dotted)
        except JobFileError as e:
            raise e.at(f"--set {item}") from None
        values[dotted], sources[dotted] = value, f"--set {item}"
    for dotted, value in (("train.out", f"{RUNS_DIR}/{path.stem}"), ("slurm.job_name", path.stem)):
        section, name = dotted.split(".")
        if isinstance(tables.get(section, {}), dict) and name not in tables.get(section, {}) and dotted not in values:
            values[dotted] = value
    return _build(_apply(tables, values), str(path), sources)


def override(job: Job, values: Mapping[str, Any], where: str = "override") -> Job:
    """A copy of ``job`` with dotted keys set (``{"optim.lr": 0.01}``), validated like a file.

    Raises
    ------
    JobFileError
        An unknown key or an invalid value, naming the key and ``where``.
    """
    for dotted in values:
        try:
            Job.check_key(dotted)
        except JobFileError as e:
            raise e.at(where) from None
    return _build(_apply(job.to_dict(), values), where, {})
