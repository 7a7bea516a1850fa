"""Who may write a run directory, and what ``train`` / ``train --resume`` find there.

:func:`open_run` runs before anything is set up (collective; rank 0 looks at the files and
every rank gets its verdict):

- ``RUN/twinhpc.lock`` (:mod:`twinhpc.io.rundir`) is taken by rank 0 for the whole of
  :func:`~twinhpc.train.loop.train`; a second writer is refused naming the holder, a stale lock
  is replaced.
- Leftover temporaries (``*.tmp`` of writes that a killed process never finished) are removed.
- Without ``--resume``, a directory holding a run (``results.h5`` or a checkpoint) is refused,
  saying what to do.
- With ``--resume``, the job is compared with the run's recorded job (the newest checkpoint's
  ``config``, else results.h5's): a key that differs is refused by name unless it is in
  :data:`MAY_CHANGE`; a run that is complete (its newest checkpoint has reached the job's
  end and results.h5 holds the final report) is reported complete and left untouched; a run
  written by another number of ranks is refused naming both.
- The run directory and ``RUN/ckpt`` are write-probed, and (in
  :func:`check_checkpoint_space`, once the model exists) the free space is compared with the
  checkpoints the run will keep.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..comm.world import World
from ..config import Job
from ..errors import TwinError
from ..io.checkpoint import CKPT_DIR, CheckpointError, latest, list_checkpoints, read_info
from ..io.results import RESULTS, read_results
from ..io.rundir import (
    RunLock,
    RunLocked,
    acquire_lock,
    check_free_space,
    describe_holder,
    probe_writable,
    read_lock,
    remove_temporaries,
    stale_reason,
)

log = logging.getLogger("twinhpc")

#: job keys (dotted; ``*`` matches any rest) that may differ between a run and its resume: how
#: long it runs, how often it records and checkpoints, where its files and data are, where it
#: runs and how it waits. Every other key decides what the run computes and must stay.
MAY_CHANGE = (
    "train.epochs",
    "train.max_steps",
    "train.early_stopping.patience",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.keep_best",
    "train.out",
    "train.device",
    "train.bucket_cap_mb",
    "train.stall_timeout",
    "train.progress_seconds",
    "data.dataset",
    "data.prefetch",
    "preprocess.out",
    "slurm.*",
)


@dataclass
class RunStart:
    """What :func:`open_run` found; ``lock`` is held on rank 0 (``None`` elsewhere)."""

    run_dir: Path
    lock: RunLock | None
    complete: dict[str, Any] | None  # the finished run's status, step, epoch: nothing to do

    def release(self) -> None:
        """Rank 0: remove the lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def flatten(tables: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` → ``{"optim.lr": 0.1}`` (nested tables too)."""
    out: dict[str, Any] = {}
    for name, value in tables.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def changed_keys(recorded: Mapping[str, Any], job: Job) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, job's value)`` of every key where ``job`` differs from the
    recorded job's tables (read through :meth:`Job.from_dict`, so keys added to the schema since
    take their defaults), except the keys of :data:`MAY_CHANGE`."""
    try:
        old = flatten(Job.from_dict(recorded).to_dict())
    except TwinError:  # recorded by another version of the schema: compare what is there
        old = flatten(recorded)
    new = flatten(job.to_dict())
    missing = object()
    diff = []
    for key in sorted(set(old) | set(new)):
        if any(fnmatch(key, pattern) for pattern in MAY_CHANGE):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            diff.append((key, None if a is missing else a, None if b is missing else b))
    return diff


def finished_status(job: Job, loop: Mapping[str, Any]) -> str | None:
    """``"finished"`` / ``"early_stopped"`` when a run whose loop state (a checkpoint's
    ``extra.loop``) is ``loop`` has nothing left to train under ``job``; else ``None``."""
    cfg = job.train
    if cfg.early_stopping.patience and int(loop.get("bad_epochs", 0)) >= cfg.early_stopping.patience:
        return "early_stopped"
    if int(loop.get("steps_in_epoch", 0)) > 0:  # an epoch to close
        return None
    if int(loop.get("epoch", 0)) >= cfg.epochs or (cfg.max_steps and int(loop.get("step", 0)) >= cfg.max_steps):
        return "finished"
    return None


def _describe_run(run_dir: Path, newest: Path | None) -> str:
    parts = []
    if (run_dir / RESULTS).exists():
        parts.append(RESULTS)
    found = list_checkpoints(run_dir)
    if found:
        parts.append(f"{len(found)} checkpoint(s), the newest {newest}")
    return ", ".join(parts)


def _check_resume(
    job: Job, run_dir: Path, newest: Path, ranks: int, until_epoch: int | None = None
) -> dict[str, Any] | None:
    """Rank 0, ``--resume`` with a checkpoint: refuse changed settings and another rank count;
    the run's end state when it is complete, or (``until_epoch``) has completed that epoch with
    results.h5 holding it (nothing written)."""
    info = read_info(newest)
    recorded_json, source = info["config"], str(newest)
    if recorded_json is None:  # a checkpoint of a version that did not store the job
        try:
            recorded_json, source = json.dumps(read_results(run_dir)["config"]), str(run_dir / RESULTS)
        except TwinError:
            recorded_json = None
    if recorded_json is not None:
        diff = changed_keys(json.loads(recorded_json), job)
        if diff:
            listed = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diff)
            raise TwinError(
                f"{run_dir}: --resume with settings that differ from the run's ({source}): {listed}. "
                f"A run continues with the settings it started with; resume with those, or train into "
                f"another --out. (May change on resume: {', '.join(MAY_CHANGE)})"
            )
    loop = info["extra"].get("loop", {})
    status = finished_status(job, loop)
    if status is None and until_epoch is not None and int(loop.get("epoch", 0)) >= until_epoch:
        try:
            done = read_results(run_dir)["epochs"] >= until_epoch
        except TwinError:
            done = False
        if done:
            return {"status": "until_epoch", "step": info["step"], "epoch": int(loop["epoch"])}
    if status is not None:
        try:
            results = read_results(run_dir)
        except TwinError:
            results = None
        if results is not None and results["report"] and results["epochs"] == int(info["extra"]["loop"]["epoch"]):
            return {"status": status, "step": info["step"], "epoch": int(info["extra"]["loop"]["epoch"])}
    saved = (info["loader"] or {}).get("world_size")
    if saved is not None and int(saved) != ranks:
        raise TwinError(
            f"{newest}: the run was trained on {saved} rank(s), this job runs on {ranks}. A run resumes "
            f"on the rank count that wrote it (each rank's share of the data, its place in the epoch and "
            f"its random state are its own): resume with `mpirun -n {saved}` (or `srun -n {saved}`), or "
            f"train into another --out"
        )
    return None


def open_run(
    job: Job,
    run_dir: Path,
    world: World,
    *,
    resume: bool,
    force_unlock: bool = False,
    until_epoch: int | None = None,
) -> RunStart:
    """Collective: claim ``run_dir`` for training ``job`` (module docstring).

    Raises
    ------
    TwinError
        On every rank: the lock is held (naming the holder), the directory holds a run and
        ``resume`` is false, the settings differ (naming the keys), the rank count differs
        (naming both), or the directory cannot be written (naming it).
    """
    run_dir = Path(run_dir)
    lock: RunLock | None = None

    def claim() -> dict[str, Any] | None:
        nonlocal lock
        if not world.is_root:
            return None
        newest = latest(run_dir)
        if resume and newest is not None:
            held = read_lock(run_dir)
            if held is not None and not force_unlock and stale_reason(held, run_dir / "twinhpc.lock") is None:
                who = "an unreadable lock file" if held.get("damaged") else describe_holder(held)
                raise RunLocked(
                    f"{run_dir}: the run is in use by {who}. Wait for it to end; if that process is "
                    f"gone, run again with --force-unlock or delete {run_dir / 'twinhpc.lock'}"
                )
            try:
                complete = _check_resume(job, run_dir, newest, world.size, until_epoch)
            except CheckpointError as e:
                raise TwinError(str(e)) from None
            if complete is not None:
                return complete
        lock = acquire_lock(run_dir, force=force_unlock)
        try:
            for path in remove_temporaries(run_dir):
                log.info("removed %s (an unfinished write of a process that ended)", path)
            newest = latest(run_dir)
            if not resume and (newest is not None or (run_dir / RESULTS).exists()):
                raise TwinError(
                    f"{run_dir}: holds a run already ({_describe_run(run_dir, newest)}). Continue it with "
                    f"--resume, or train into another --out (or delete {run_dir} to start over)"
                )
            probe_writable(run_dir, "results.h5")
            probe_writable(run_dir / CKPT_DIR, "checkpoints")
        except BaseException:
            lock.release()
            lock = None
            raise
        return None

    try:
        complete = world.run(claim)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    complete = world.bcast(complete)
    if complete is not None:
        log.info(
            "%s: the run is complete (%s at step %d, %d epoch(s)); nothing to do"
            if complete["status"] != "until_epoch"
            else "%s: the run has reached --until-epoch (%s at step %d, %d epoch(s)); nothing to do",
            run_dir,
            complete["status"],
            complete["step"],
            complete["epoch"],
        )
    return RunStart(run_dir, lock, complete)


def os_error_text(e: OSError) -> str:
    """The OS's words for ``e`` (``No space left on device``): from its errno (HDF5's errors
    carry the errno, and a page of text as ``strerror``), else from the text it quotes, else the
    whole text."""
    if e.errno:
        return os.strerror(e.errno)
    quoted = re.search(r"error message = '([^']*)'", str(e))
    return quoted[1] if quoted else str(e)


def checkpoint_bytes(model: Any, optimizer_name: str) -> int:
    """An estimate of one checkpoint's size: the model's state plus the optimizer's (one
    tensor per parameter for SGD's momentum, two for Adam's moments), plus 64 KiB."""
    tensors = list(model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    per_param = {"sgd": 1, "adam": 2, "adamw": 2}.get(optimizer_name, 2)
    return sum(t.numel() * t.element_size() for t in tensors) + per_param * params + 2**16


def check_checkpoint_space(job: Job, run_dir: Path, model: Any) -> None:
    """Rank 0: the file system of ``RUN/ckpt`` must hold the checkpoints the run keeps
    (``train.keep_checkpoints``, one best, and the one being written) less those already there.

    Raises
    ------
    RunDirError
        Naming the directory, the free and the needed space.
    """
    size = checkpoint_bytes(model, job.optim.name)
    cfg = job.train
    count = cfg.keep_checkpoints + (1 if cfg.keeps_best else 0) + 1
    have = sum(p.stat().st_size for _, p in list_checkpoints(run_dir))
    need = max(size, count * size - have)
    check_free_space(
        run_dir / CKPT_DIR, need, f"{count} checkpoint(s) of about {size / 2**20:.1f} MiB (train.keep_checkpoints)"
    )
