"""Where this process runs: rank, size, host and launcher variables, and the startup table.

:func:`process_info` and :func:`launcher_vars` read only the environment the launcher
(``mpirun``, ``srun``, MPICH's hydra) set, so they work before MPI starts and without it.
:func:`startup_report` gathers one row per rank over a :class:`~twinhpc.comm.world.World`
(passed in: this module imports no MPI) and :func:`format_report` prints it as the table that
``twinhpc info`` and the start of every parallel command show.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from . import __version__

#: (variable, launcher) in order of preference, per quantity
RANK_VARS = (("OMPI_COMM_WORLD_RANK", "openmpi"), ("PMI_RANK", "pmi"), ("PMIX_RANK", "pmix"), ("SLURM_PROCID", "slurm"))
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")

#: launcher variables worth showing (plus every OMPI_MCA_* that passes the filter below)
SHOWN_VARS = (
    "SLURM_JOB_ID",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURM_NNODES",
    "SLURM_NTASKS",
    "SLURM_CPUS_PER_TASK",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMIX_RANK",
    "PMI_RANK",
    "PMI_SIZE",
)
#: name fragments of variables never shown: keys and addresses (e.g. Open MPI's
#: OMPI_MCA_orte_precondition_transports, *_uri), and per-job session plumbing
HIDDEN_FRAGMENTS = (
    "KEY",
    "TOKEN",
    "SECRET",
    "PASS",
    "CRED",
    "TRANSPORTS",
    "URI",
    "SESSION_DIR",
    "JOBID",
    "VPID",
    "JOBFAM",
)
#: OMPI_MCA_* settings mpirun makes for its own plumbing (prefixes after OMPI_MCA_), not shown
MPIRUN_INTERNAL_MCA = ("orte_", "ess", "pmix", "initial_wdir", "shmem_RUNTIME_QUERY_hint")
#: longest value shown; longer ones are left out
MAX_VALUE_CHARS = 256

#: the variables an MPI runtime sets for the processes it starts (Open MPI's ``mpirun`` and its
#: singleton ``MPI_Init``, PMIx, MPICH's PMI and hydra). A new ``mpirun`` or ``srun`` that
#: inherits them joins a job that is not its own: Open MPI's shared-memory transport then opens
#: another job's segments (same job id and transport key) and crashes at start-up. The user's
#: own ``OMPI_MCA_*`` settings (``btl``, ``rmaps_base_oversubscribe``...) are not among them.
RUNTIME_VAR_RE = re.compile(
    r"^(PMIX_|PMI_|HYDRA_|ORTE_|OMPI_COMM_WORLD_|OMPI_APP_CTX_|OMPI_MCA_orte_|OMPI_MCA_ess"
    r"|OMPI_MCA_pmix|OMPI_MCA_initial_wdir$|OMPI_MCA_shmem_RUNTIME_QUERY_hint$"
    r"|OMPI_(UNIVERSE_SIZE|NUM_APP_CTX|FIRST_RANKS|FILE_LOCATION|COMMAND|ARGV)$"
    r"|MPI_LOCALRANKID$|MPI_LOCALNRANKS$)"
)


@dataclass(frozen=True)
class ProcessInfo:
    """This process as its launcher describes it (defaults without a launcher)."""

    rank: int  # rank in the job (0 without a launcher)
    size: int  # number of processes the launcher started (1 without a launcher)
    local_rank: int  # rank among the job's processes on this host (0 if unknown)
    host: str  # host name, without the domain
    pid: int  # operating-system process id
    launcher: str  # where rank came from: "openmpi", "pmi", "pmix", "slurm" or "none"


def _lookup(environ: Mapping[str, str], names) -> tuple[str, int] | None:
    """The first of ``names`` set to an integer, and its value; ``None`` if there is none."""
    for name in names:
        try:
            return name, int(environ[name])
        except (KeyError, ValueError):
            continue
    return None


def process_info(environ: Mapping[str, str] = os.environ) -> ProcessInfo:
    """Rank, size, local rank, host and pid from the launcher's environment.

    Open MPI's ``OMPI_COMM_WORLD_*`` come first, then MPICH's ``PMI_*``, ``PMIX_RANK``, then
    Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``. Unparsable values are skipped.

    Note:
        Inside an ``sbatch`` script (not under ``srun``) ``SLURM_NTASKS`` is the allocation's task
        count while only one process runs; compare with the MPI world size before trusting it.
    """
    rank = _lookup(environ, [name for name, _ in RANK_VARS])
    size = _lookup(environ, SIZE_VARS)
    local_rank = _lookup(environ, LOCAL_RANK_VARS)
    return ProcessInfo(
        rank=rank[1] if rank else 0,
        size=size[1] if size else 1,
        local_rank=local_rank[1] if local_rank else 0,
        host=socket.gethostname().split(".")[0],
        pid=os.getpid(),
        launcher=dict(RANK_VARS)[rank[0]] if rank else "none",
    )


def launcher_vars(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The useful Slurm, Open MPI and PMI variables set for this process, sorted by name.

    :data:`SHOWN_VARS` and the ``OMPI_MCA_*`` settings (except mpirun's own,
    :data:`MPIRUN_INTERNAL_MCA`), without anything whose name contains a
    :data:`HIDDEN_FRAGMENTS` entry (keys, addresses) or whose value is longer than
    :data:`MAX_VALUE_CHARS`.
    """
    names = [
        n
        for n in environ
        if n in SHOWN_VARS or (n.startswith("OMPI_MCA_") and not n[len("OMPI_MCA_") :].startswith(MPIRUN_INTERNAL_MCA))
    ]
    return {
        n: environ[n]
        for n in sorted(names)
        if not any(f in n.upper() for f in HIDDEN_FRAGMENTS) and len(environ[n]) <= MAX_VALUE_CHARS
    }


def is_runtime_var(name: str) -> bool:
    """Whether ``name`` is one of an MPI runtime's per-job variables (:data:`RUNTIME_VAR_RE`)."""
    return RUNTIME_VAR_RE.match(name) is not None


def launch_environ(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a new MPI job (``mpirun``, ``srun``, ``sbatch``, a detached driver)
    started from this process: ``environ`` (default ``os.environ``) without an MPI runtime's
    per-job variables (:data:`RUNTIME_VAR_RE`), plus ``extra``.

    Always pass it explicitly (``env=``): a child started without ``env`` inherits the C-level
    environment, where ``MPI_Init`` of this process (mpi4py) put its variables without Python's
    ``os.environ`` seeing them.
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not is_runtime_var(k)} | extra


def unset_runtime_vars_line() -> str:
    """A bash line that unsets the MPI runtime variables (:data:`RUNTIME_VAR_RE`) a batch script
    inherited from the shell or process that submitted it (``sbatch`` exports everything)."""
    return f"unset $(compgen -e | grep -E '{RUNTIME_VAR_RE.pattern}')"


def devices() -> list[str]:
    """The CUDA devices this process sees (``"cuda:0 <name>"``), else ``["cpu"]``."""
    import torch

    if not torch.cuda.is_available():
        return ["cpu"]
    return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]


def rank_row(world) -> dict:
    """This rank's row of the startup table (no communication)."""
    import torch

    info = process_info()
    return {
        "rank": world.rank,
        "size": world.size,
        "host": info.host,
        "local_rank": info.local_rank,
        "pid": info.pid,
        "threads": torch.get_num_threads(),
        "devices": devices(),
        "launcher": info.launcher,
        "launcher_size": info.size,
        "vars": launcher_vars(),
    }


def _extension_info() -> dict:
    """``build_info()`` of the extension with ``built: True``, or why it is not available."""
    from . import ops
    from .errors import TwinError

    try:
        return {"built": True, **ops.build_info()}
    except TwinError as e:
        return {"built": False, "error": str(e)}


def _mpi_runtime(MPI) -> dict:
    """The MPI library mpi4py loaded, the standard it implements, mpi4py and the thread level."""
    levels = {
        MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE",
        MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
        MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED",
        MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE",
    }
    major, minor = MPI.Get_version()
    return {
        "library": MPI.Get_library_version().strip("\0\n "),
        "standard": f"{major}.{minor}",
        "mpi4py": sys.modules["mpi4py"].__version__,
        "thread_level": levels.get(MPI.Query_thread(), str(MPI.Query_thread())),
    }


def startup_report(world) -> dict | None:
    """Collective: the startup table, with one row per rank, on rank 0 (``None`` elsewhere).

    Parameters
    ----------
    world : twinhpc.comm.world.World
        Every rank of it must call this.

    Returns
    -------
    dict or None
        On rank 0: ``twinhpc``, ``python``, ``torch``, ``extension`` (see
        :func:`twinhpc.ops.build_info`, or ``built: False`` and the reason), ``mpi``, ``ranks``
        (one :func:`rank_row` per rank, in rank order) and ``warnings`` (list of str).

    Raises
    ------
    TwinError
        On every rank, if collecting a row failed on any rank (naming the ranks).
    """
    import torch

    rows = world.gather(world.run(lambda: rank_row(world)))
    if world.rank != 0:
        return None
    report = {
        "twinhpc": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda},
        "extension": _extension_info(),
        "mpi": _mpi_runtime(world.MPI),
        "ranks": rows,
    }
    report["warnings"] = _warnings(report)
    return report


def _mpi_major(text: str) -> str | None:
    """``"Open MPI 4"`` or ``"MPICH 4"`` from a version string, ``None`` if unrecognised."""
    m = re.search(r"(Open MPI|MPICH)\D*(\d+)\.", text)
    return f"{m.group(1)} {m.group(2)}" if m else None


def _warnings(report: dict) -> list[str]:
    """Problems visible in a report that would break or slow a parallel run."""
    out = []
    ext, mpi, rows = report["extension"], report["mpi"], report["ranks"]
    if not ext["built"]:
        out.append(f"compiled extension: {ext['error']}")
    else:
        compiled, loaded = _mpi_major(ext["mpi_compiled"]), _mpi_major(mpi["library"])
        if compiled and loaded and compiled != loaded:
            out.append(
                f"the extension was compiled against {ext['mpi_compiled']} but mpi4py runs "
                f"{mpi['library'].splitlines()[0]}; rebuild it in this environment"
            )
        elif ext["mpi_library"] != mpi["library"]:
            out.append("the extension and mpi4py loaded different MPI libraries; keep one MPI per environment")
        if not ext["cuda"] and any(d != "cpu" for r in rows for d in r["devices"]):
            out.append("GPUs are visible but the extension was built without CUDA (TWINHPC_CUDA)")
    for r in rows:
        if r["launcher"] != "none" and r["launcher_size"] != r["size"]:
            out.append(
                f"rank {r['rank']}: the launcher ({r['launcher']}) started {r['launcher_size']} "
                f"processes but the MPI world has {r['size']}; under srun check --mpi (pmix for "
                "Open MPI, pmi2 for MPICH), in a batch script start the ranks with srun or mpirun"
            )
    return out


def _table(header: list[str], rows: list[list]) -> list[str]:
    """Left-aligned columns separated by two spaces."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def format_report(report: dict) -> str:
    """The startup table as text: versions, one row per rank, launcher variables, warnings."""
    ext, mpi, rows = report["extension"], report["mpi"], report["ranks"]
    if ext["built"]:
        ext_line = (
            f"built: CUDA {'yes' if ext['cuda'] else 'no'}, {ext['mpi_compiled']} "
            f"(MPI {ext['mpi_standard']}), {ext['compiler']}, torch {ext['torch']}"
        )
    else:
        ext_line = "not built"
    torch_info = report["torch"]
    hosts = sorted({r["host"] for r in rows})
    lines = [
        f"twinhpc     {report['twinhpc']}",
        f"python      {report['python']['version']} ({report['python']['executable']})",
        f"torch       {torch_info['version']} (CUDA {torch_info['cuda'] or 'no'})",
        f"extension   {ext_line}",
        f"MPI         {mpi['library'].splitlines()[0]} (MPI {mpi['standard']})",
        f"mpi4py      {mpi['mpi4py']}, {mpi['thread_level']}",
        f"world       {len(rows)} rank{'s' * (len(rows) != 1)} on {len(hosts)} host{'s' * (len(hosts) != 1)}",
        "",
    ]
    lines += _table(
        ["rank", "size", "host", "local", "pid", "threads", "devices"],
        [
            [r["rank"], r["size"], r["host"], r["local_rank"], r["pid"], r["threads"], ", ".join(r["devices"])]
            for r in rows
        ],
    )
    common = {k: v for k, v in rows[0]["vars"].items() if all(r["vars"].get(k) == v for r in rows)}
    if common:
        lines += ["", "launcher variables (all ranks):"] + [f"  {k}={v}" for k, v in common.items()]
    per_rank = [(r["rank"], {k: v for k, v in r["vars"].items() if k not in common}) for r in rows]
    if any(v for _, v in per_rank):
        lines += ["", "launcher variables (per rank):"]
        lines += [f"  rank {rank}: " + " ".join(f"{k}={v}" for k, v in v.items()) for rank, v in per_rank]
    if report["warnings"]:
        lines += ["", "warnings:"] + [f"  - {w}" for w in report["warnings"]]
    return "\n".join(lines)
