"""A run directory's ownership and housekeeping: the lock, leftover temporaries, write probes.

``RUN/twinhpc.lock`` says which process writes the run: a JSON object with ``host``, ``pid``,
``slurm_job_id`` and ``slurm_restart_count`` (``None`` outside Slurm), ``started`` (ISO time),
``boot_id`` and ``pid_start`` (the kernel's boot id and the process's start time in clock ticks,
where ``/proc`` has them: they tell a live holder from a reused pid) and ``token`` (random).
It is written complete under a temporary name and hard-linked to ``twinhpc.lock``: the link
fails when the lock exists, so exactly one of two racing writers gets it, and a lock is never
seen half-written. (Where the file system refuses hard links, ``O_CREAT | O_EXCL`` creates it.)

A lock is **stale**, and is replaced, when its holder is provably gone:

- the same host (and boot), and the pid is not running, or is running but started at another
  time (a reused pid), or is this process's own pid without this process holding the lock;
- or the same Slurm job at a later restart (a requeued job on any node: Slurm starts an attempt
  only after the previous one's processes ended).

Any other holder refuses the run with :class:`RunLocked`, naming the holder; when the holder is
known to be gone (another host after a crash), ``--force-unlock`` or deleting the file removes it.

Nothing here uses MPI: rank 0 calls these, and the caller shares the outcome with the ranks.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import TwinError
from . import atomic

LOCK = "twinhpc.lock"
#: names in a run directory (and its ckpt/) that are unfinished writes, never read by anyone
TEMPORARY_SUFFIX = ".tmp"

#: locks held by this process: path → token (a lock with our pid but not listed here is stale)
_HELD: dict[str, str] = {}


class RunLocked(TwinError):
    """Another live process holds the run directory's lock; the message names it."""


class RunDirError(TwinError):
    """The run directory cannot hold the run (not writable, not enough free space)."""


# -- the lock ---------------------------------------------------------------------------------
def _proc_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def holder_record() -> dict[str, Any]:
    """The lock record of this process."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
        "slurm_restart_count": _int_env("SLURM_RESTART_COUNT") or 0,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "boot_id": _boot_id(),
        "pid_start": _proc_start(os.getpid()),
        "token": uuid.uuid4().hex,
    }


def describe_holder(rec: dict[str, Any]) -> str:
    """``pid 123 on host n01 (Slurm job 456), since 2026-...``."""
    job = f" (Slurm job {rec['slurm_job_id']})" if rec.get("slurm_job_id") else ""
    return f"pid {rec.get('pid')} on host {rec.get('host')}{job}, since {rec.get('started')}"


def read_lock(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of ``RUN/twinhpc.lock``; ``None`` when there is none. A file that is not a lock
    record is returned as ``{"damaged": True}``."""
    path = Path(run_dir) / LOCK
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return {"damaged": True}
    return rec if isinstance(rec, dict) else {"damaged": True}


def stale_reason(rec: dict[str, Any], path: str | os.PathLike[str] | None = None) -> str | None:
    """Why the holder of lock record ``rec`` (of the lock file ``path``) is gone, or ``None``
    when it may be alive."""
    if rec.get("damaged"):
        return None
    me = holder_record()
    job = rec.get("slurm_job_id")
    if job and job == me["slurm_job_id"] and int(rec.get("slurm_restart_count") or 0) < me["slurm_restart_count"]:
        return f"an earlier attempt of this Slurm job {job}"
    if rec.get("host") != me["host"]:
        return None
    if rec.get("boot_id") and me["boot_id"] and rec["boot_id"] != me["boot_id"]:
        return "the host has rebooted since"
    pid = int(rec.get("pid") or 0)
    if pid == me["pid"]:
        held = _HELD.get(str(path)) if path is not None else None
        return None if held == rec.get("token") else "this process's pid, but this process does not hold it"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} is not running"
    except PermissionError:
        pass  # running, as another user
    if rec.get("pid_start") is not None and _proc_start(pid) not in (None, rec["pid_start"]):
        return f"pid {pid} is another process now"
    return None


class RunLock:
    """The lock of one run directory, held by this process (:func:`acquire_lock`)."""

    def __init__(self, path: Path, record: dict[str, Any]):
        self.path, self.record = path, record

    def release(self) -> None:
        """Remove the lock file if it is still this lock (the token matches); idempotent."""
        _HELD.pop(str(self.path), None)
        rec = read_lock(self.path.parent)
        if rec is not None and rec.get("token") == self.record["token"]:
            atomic.remove_durably(self.path)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record``, complete, unless it exists; True when created."""
    data = json.dumps(record, indent=1).encode()
    tmp = path.with_name(f".{path.name}.{record['host']}.{record['pid']}{TEMPORARY_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:  # no hard links here: create it exclusively instead
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        return True
    finally:
        tmp.unlink(missing_ok=True)


def acquire_lock(run_dir: str | os.PathLike[str], *, force: bool = False) -> RunLock:
    """Take ``RUN/twinhpc.lock`` (creating ``RUN``); replace a stale lock (module docstring), or
    any lock with ``force``.

    Raises
    ------
    RunLocked
        A live (or not provably gone) process holds it: names the holder and what to do.
    RunDirError
        ``RUN`` cannot be created or written (names it and the OS error).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{run_dir}: cannot create the run directory ({e.strerror or e})") from None
    record = holder_record()
    for _ in range(3):  # a stale lock replaced by us may be replaced by a racer first: retry
        try:
            if _create(path, record):
                _HELD[str(path)] = record["token"]
                return RunLock(path, record)
        except OSError as e:
            raise RunDirError(f"{path}: cannot write the run's lock ({e.strerror or e})") from None
        rec = read_lock(run_dir)
        if rec is None:
            continue  # released in between
        reason = "--force-unlock" if force else stale_reason(rec, path)
        if reason is None:
            who = "an unreadable lock file" if rec.get("damaged") else describe_holder(rec)
            raise RunLocked(
                f"{run_dir}: the run is in use by {who} (lock {path}). Wait for it to end, or train into "
                f"another --out; if that process is gone (e.g. its node crashed), run again with "
                f"--force-unlock or delete {path}"
            )
        _remove_if_unchanged(path, rec)
    raise RunLocked(f"{path}: could not take the lock (other processes keep taking it)")


def _remove_if_unchanged(path: Path, rec: dict[str, Any]) -> None:
    """Remove a stale lock unless another process replaced it since it was read: rename it to
    a name of our own first (atomic), then check that what we moved is what we judged."""
    grave = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    try:
        moved = json.loads(grave.read_text())
    except ValueError:
        moved = {"damaged": True}
    if not rec.get("damaged") and moved.get("token") != rec.get("token"):
        # a racer put a fresh lock there between our read and our rename: put it back
        try:
            os.link(grave, path)
        except FileExistsError:
            pass
    grave.unlink(missing_ok=True)


# -- housekeeping -------------------------------------------------------------------------------
def remove_temporaries(run_dir: str | os.PathLike[str], subdirs: Iterable[str] = ("ckpt",)) -> list[Path]:
    """Delete unfinished writes (``*.tmp``) left in ``RUN`` and its ``subdirs`` by a process that
    died while writing; call it only while holding the lock. Returns what was removed."""
    removed = []
    for directory in [Path(run_dir), *(Path(run_dir) / s for s in subdirs)]:
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name.endswith(TEMPORARY_SUFFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def probe_writable(directory: str | os.PathLike[str], what: str) -> None:
    """Create ``directory`` if needed, then write, fsync and delete a small file in it.

    Raises
    ------
    RunDirError
        Naming ``directory``, ``what`` it is for, and the OS error (read-only, no permission,
        no space, no such parent ...).
    """
    directory = Path(directory)
    probe = directory / f".write-probe.{socket.gethostname()}.{os.getpid()}{TEMPORARY_SUFFIX}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise RunDirError(f"{directory}: cannot write {what} there ({e.strerror or e})") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def check_free_space(directory: str | os.PathLike[str], need: int, what: str) -> None:
    """Raise :class:`RunDirError` when the file system of ``directory`` has fewer than ``need``
    bytes free (for ``what``, said in the message)."""
    free = shutil.disk_usage(directory).free
    if free < need:
        raise RunDirError(
            f"{directory}: {_mib(free)} free, but {what} need about {_mib(need)}; free space, "
            f"lower train.keep_checkpoints, or train into another --out"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
