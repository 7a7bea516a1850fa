"""Benchmark records: every run of a benchmark writes a new file, never overwriting an earlier one.

::

    write_results("bench-results/loader.h5", {"ranks": [{"rank": 0, "samples_per_s": 5e4}, ...]},
                  {"dataset": "data/cifar", "world_size": 2})
    # -> bench-results/loader/20261129T104555Z-d61b865.h5

Layout (format ``twinhpc-bench-record`` version 1; ``docs/benchmark-records.md`` describes it)::

    FOLDER/<benchmark>/<UTC YYYYmmddTHHMMSSZ>-<commit, 7 hex or "unknown">[-<n>].h5

    /<table>   compound, one row per dict of the table, one column per key (in the first
               row's order): int64 for integers (and booleans), S40 (UTF-8) for strings,
               float64 for the rest
    /          attrs: the caller's attributes, then the record's stamp (:data:`STAMP`):
               format, version, benchmark, created, source_commit, command, twinhpc_version,
               ranks, device, allocator, machine_* (host, cpu, cores, memory_bytes,
               memory_gbps, gpus)

One file per run, not a group per run in one file per benchmark: a record is written once,
atomically, under a name no other run takes (a crash or two runs at once cannot damage the
runs already recorded, and records from two machines or branches merge in git as new files).

A file ``FOLDER/<name>.h5`` of the single-file layout (no stamp) is read as a record of
benchmark ``<name>`` with ``legacy`` set (:func:`read_record`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import TwinError
from .atomic import fsync_directory, hdf5_image
from .results import UNKNOWN, command_line, source_commit

#: bytes of a string column (longer strings are cut by numpy)
STRING_BYTES = 40
FORMAT, VERSION = "twinhpc-bench-record", 1
#: the root attributes every record carries beside the caller's (they win over a caller's key)
STAMP = (
    "format",
    "version",
    "benchmark",
    "created",
    "source_commit",
    "command",
    "twinhpc_version",
    "ranks",
    "device",
    "allocator",
    "machine_host",
    "machine_cpu",
    "machine_cores",
    "machine_memory_bytes",
    "machine_memory_gbps",
    "machine_gpus",
)
#: environment variables that change the C allocator's behaviour (recorded in ``allocator``)
ALLOCATOR_VARS = (
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
)
#: bytes of the buffer :func:`memory_gbps` copies
BANDWIDTH_BYTES = 64 << 20
_NAME = re.compile(r"(\d{8}T\d{6}Z)-([0-9a-f]{7}|unknown)(-\d+)?\.h5")


def _column(value: Any) -> str | type[np.generic]:
    if isinstance(value, str):
        return f"S{STRING_BYTES}"
    return np.int64 if isinstance(value, (int, np.integer)) else np.float64


def table_array(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Rows (dicts with the same keys in the same order) as a numpy structured array; the
    column types follow the first row's values (see the module docstring)."""
    dtype = [(k, _column(v)) for k, v in rows[0].items()]
    return np.array([tuple(v.encode() if isinstance(v, str) else v for v in r.values()) for r in rows], dtype=dtype)


def memory_gbps(nbytes: int = BANDWIDTH_BYTES, repeat: int = 5) -> float:
    """This process's memory copy bandwidth: GB/s (10^9 bytes) copied by ``np.copyto`` of an
    ``nbytes`` buffer (each byte read once and written once), the median of ``repeat`` copies
    after one untimed copy (pages touched)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def _cpu_model(cpuinfo: Path) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def _memory_bytes(meminfo: Path) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def gpu_models(root: str | os.PathLike[str] = "/proc/driver/nvidia/gpus") -> list[str]:
    """The NVIDIA GPUs of this machine, by model (``"NVIDIA H200"``), from the driver's files
    under ``root`` (``<bus id>/information``, line ``Model:``): no process started, no torch;
    ``[]`` without the driver."""
    models = []
    try:
        entries = sorted(Path(root).iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            for line in (entry / "information").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Model":
                    models.append(value.strip())
        except OSError:
            continue
    return models


def machine_info(*, measure: bool = True) -> dict[str, Any]:
    """The machine a record was measured on: ``machine_host``, ``machine_cpu`` (model name from
    /proc/cpuinfo), ``machine_cores`` (logical CPUs this process may use), ``machine_memory_bytes``
    (MemTotal; 0 when unknown), ``machine_memory_gbps`` (:func:`memory_gbps`, NaN unless
    ``measure``) and ``machine_gpus`` (:func:`gpu_models`, ``"; "``-joined)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    return {
        "machine_host": platform.node().split(".")[0] or UNKNOWN,
        "machine_cpu": _cpu_model(Path("/proc/cpuinfo")),
        "machine_cores": cores,
        "machine_memory_bytes": _memory_bytes(Path("/proc/meminfo")),
        "machine_memory_gbps": memory_gbps() if measure else float("nan"),
        "machine_gpus": "; ".join(gpu_models()),
    }


def allocator_setting(environ: Mapping[str, str] = os.environ) -> str:
    """``"default"``, or the :data:`ALLOCATOR_VARS` set in ``environ`` (``"NAME=VALUE ..."``)."""
    settings = [f"{n}={environ[n]}" for n in ALLOCATOR_VARS if environ.get(n)]
    return " ".join(settings) or "default"


def device_name(device: str, gpus: str) -> str:
    """What a record says it ran on: ``"cpu"``, or for a CUDA device the first GPU model of
    ``gpus`` (``"cuda"`` when none is known)."""
    if not device.startswith("cuda"):
        return "cpu"
    return gpus.split("; ")[0] if gpus else "cuda"


def launched_ranks(environ: Mapping[str, str] = os.environ) -> int:
    """The processes the launcher started (Open MPI's, PMI's or Slurm's size variable; 1 without
    a launcher)."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"):
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            continue
    return 1


def record_stamp(
    benchmark: str,
    *,
    device: str = "cpu",
    command: str | None = None,
    created: str | None = None,
    commit: str | None = None,
    machine: Mapping[str, Any] | None = None,
    allocator: str | None = None,
) -> dict[str, Any]:
    """The attributes of :data:`STAMP` for a run of ``benchmark`` by this process; each keyword
    replaces what would be found out (``machine``: :func:`machine_info`'s keys)."""
    mach = dict(machine_info() if machine is None else machine)
    return {
        "format": FORMAT,
        "version": VERSION,
        "benchmark": benchmark,
        "created": created or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_commit": commit or source_commit(),
        "command": command_line() if command is None else command,
        "twinhpc_version": __version__,
        "ranks": launched_ranks(),
        "device": device_name(device, str(mach.get("machine_gpus", ""))),
        "allocator": allocator_setting() if allocator is None else allocator,
        **mach,
    }


def record_name(created: str, commit: str) -> str:
    """``<YYYYmmddTHHMMSSZ>-<7 hex of the commit, or "unknown">.h5`` for a record created at the
    ISO 8601 UTC time ``created``."""
    stamp = re.sub(r"[-:]", "", created).removesuffix("+0000").removesuffix("Z") + "Z"
    return f"{stamp}-{commit[:7] if commit != UNKNOWN else UNKNOWN}.h5"


def _publish(tmp: Path, folder: Path, name: str) -> Path:
    """Give the finished ``tmp`` a name in ``folder`` that no file has: ``name``, else
    ``<stem>-2.h5``, ``-3``, ... (a hard link fails when the name exists, so two writers never
    take the same name; where links are refused, a rename after a check)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    stem = name.removesuffix(".h5")
    for n in range(1, 10_000):
        final = folder / (name if n == 1 else f"{stem}-{n}.h5")
        try:
            os.link(tmp, final)
        except FileExistsError:
            continue
        except OSError:
            if final.exists():
                continue
            os.replace(tmp, final)
        tmp.unlink(missing_ok=True)
        fsync_directory(folder)
        return final
    raise FileExistsError(f"{folder / name}: 9,999 records of this second already")


def write_record(
    folder: str | os.PathLike[str],
    benchmark: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    attrs: Mapping[str, Any],
    *,
    device: str | None = None,
    command: str | None = None,
    created: str | None = None,
    commit: str | None = None,
    machine: Mapping[str, Any] | None = None,
    allocator: str | None = None,
) -> Path:
    """Write a new record of ``benchmark`` into ``FOLDER/<benchmark>/`` (its name from the time
    and the commit, :func:`record_name`; never an existing file's): one compound dataset per
    table (:func:`table_array`), the attributes ``attrs``, then the stamp (:func:`record_stamp`;
    ``device`` defaults to ``attrs["device"]``, else ``"cpu"``). Written under a temporary name
    first, so a reader never sees half a record.

    Call on one rank only (it measures the memory bandwidth: a fraction of a second).

    Returns
    -------
    Path
        The record's path.

    Raises
    ------
    TwinError
        Naming the folder (as ``--results FOLDER``) when it cannot be created or written; no
        temporary file is left behind.
    """

    folder = Path(folder) / benchmark
    stamp = record_stamp(
        benchmark,
        device=str(attrs.get("device", "cpu")) if device is None else device,
        command=command,
        created=created,
        commit=commit,
        machine=machine,
        allocator=allocator,
    )
    name = record_name(stamp["created"], stamp["source_commit"])
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with hdf5_image(tmp) as f:
            for table, rows in tables.items():
                f.create_dataset(table, data=table_array(rows))
            for key, value in {**attrs, **stamp}.items():
                f.attrs[key] = value
        return _publish(tmp, folder, name)
    except OSError as e:
        raise TwinError(f"--results {folder.parent}: cannot write {benchmark}/{name} ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_results(
    path: str | os.PathLike[str],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    attrs: Mapping[str, Any],
    *,
    created: bool = True,
) -> Path:
    """A new record of benchmark ``NAME`` for ``path`` = ``FOLDER/NAME.h5``:
    :func:`write_record` into ``FOLDER/NAME/``. ``created`` is accepted for callers of the
    single-file layout; every record carries its time of writing.

    Returns
    -------
    Path
        The record's path, ``FOLDER/NAME/<time>-<commit>.h5``.
    """
    path = Path(path)
    return write_record(path.parent, path.stem, tables, attrs)


@dataclass
class Record:
    """One recorded run: the stamp and the caller's attributes (``attrs``, numpy scalars as
    Python values, byte strings decoded) and the tables (structured arrays, string columns
    decoded to ``str`` objects)."""

    path: Path
    attrs: dict[str, Any]
    tables: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def benchmark(self) -> str:
        return str(self.attrs["benchmark"])

    @property
    def created(self) -> str:
        return str(self.attrs.get("created", ""))

    @property
    def legacy(self) -> bool:
        return bool(self.attrs.get("legacy", False))

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of ``table`` as dicts (``[]`` when the record has no such table)."""
        if table not in self.tables:
            return []
        t = self.tables[table]
        return [{k: _python(r[k]) for k in t.dtype.names or ()} for r in t]


def _python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        return [_python(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


def read_record(path: str | os.PathLike[str], benchmark: str | None = None) -> Record:
    """The record at ``path``. A file without the stamp (the single-file layout,
    ``FOLDER/NAME.h5``) is read with ``legacy`` True, ``benchmark`` = ``benchmark`` or the
    file's stem, and :data:`~twinhpc.io.results.UNKNOWN` for what it does not say.

    Raises
    ------
    TwinError
        Naming the file when it is missing or not HDF5.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _python(v) for k, v in f.attrs.items()}
            tables = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
    except OSError as e:
        raise TwinError(f"{path}: not a readable benchmark record ({e})") from None
    if attrs.get("format") != FORMAT:
        attrs = {"legacy": True, **attrs}
        attrs.setdefault("benchmark", benchmark or path.stem)
        for key in STAMP:
            attrs.setdefault(key, UNKNOWN if key in ("source_commit", "command", "device", "allocator") else "")
    for name, t in list(tables.items()):
        if t.dtype.names is None:  # a column per dataset (an early ingest_cifar layout)
            continue
        strings = [n for n in t.dtype.names if t.dtype[n].kind == "S"]
        if strings:
            t = t.astype([(n, object if n in strings else t.dtype[n]) for n in t.dtype.names])
            for n in strings:
                t[n] = [v.decode(errors="replace") for v in t[n]]
            tables[name] = t
    return Record(path, attrs, tables)


def read_records(folder: str | os.PathLike[str]) -> dict[str, list[Record]]:
    """Every record under ``folder``: ``FOLDER/<benchmark>/*.h5`` (the records) and, read as
    legacy records, ``FOLDER/*.h5``; per benchmark, oldest first (by ``created``, then name).

    Raises
    ------
    TwinError
        Naming ``folder`` when it is not a folder, or a file that cannot be read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TwinError(f"{folder}: not a folder of benchmark records")
    found: dict[str, list[Record]] = {}
    paths = sorted(folder.glob("*.h5")) + sorted(p for p in folder.glob("*/*.h5") if not p.name.startswith("."))
    for p in paths:
        r = read_record(p, p.stem if p.parent == folder else p.parent.name)
        found.setdefault(r.benchmark, []).append(r)
    return {k: sorted(v, key=_order) for k, v in sorted(found.items())}


def _order(record: Record) -> tuple[str, int, str]:
    """Oldest first: by ``created``, then a second's records in the order written (``-2``...)."""
    m = _NAME.fullmatch(record.path.name)
    return record.created, int(m.group(3)[1:]) if m and m.group(3) else 1, record.path.name
