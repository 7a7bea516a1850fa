"""The table ``[slurm]``: resources of the Slurm job (sbatch options), a frozen dataclass (see
:mod:`.fields`), and Slurm's time limits in minutes. ``twinhpc sbatch`` (:mod:`twinhpc.batch`)
writes a job's batch script from it.

``[slurm.additional]`` is a free table: any other sbatch option, passed through as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from .fields import Table, key, toml_type_name

_SLURM_TIME_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?P<h>\d+):(?P<m>[0-5]?\d):(?P<s>[0-5]?\d)$")


def slurm_minutes(value: int | str) -> int:
    """Minutes of a Slurm time limit: an integer of minutes or ``"[D-]HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int):
        return value
    m = _SLURM_TIME_RE.match(value)
    if m is None:
        raise ValueError(f"not a time: {value!r}")
    seconds = (((int(m["d"] or 0) * 24 + int(m["h"])) * 60 + int(m["m"])) * 60) + int(m["s"])
    return -(-seconds // 60)


def _time_problem(value: Any) -> str | None:
    try:
        minutes = slurm_minutes(value)
    except ValueError:
        return f'must be minutes (an integer) or "HH:MM:SS" / "D-HH:MM:SS", got {value!r}'
    return None if minutes >= 1 else f"must be at least one minute, got {value!r}"


def _additional_problem(value: dict[str, Any]) -> str | None:
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            return f"option {k!r} must be a string, number or boolean, got {toml_type_name(v)} {v!r}"
    return None


@dataclass(frozen=True)
class SlurmConfig(Table):
    """``[slurm]``: resources of the Slurm job (sbatch options), for submission scripts and sweeps."""

    TABLE: ClassVar[str] = "slurm"
    partition: str | None = key(None, "Partition (`--partition`).", default_doc="the cluster's default")
    nodes: int = key(1, "Nodes (`--nodes`).", ge=1)
    ntasks_per_node: int = key(1, "MPI ranks per node (`--ntasks-per-node`).", ge=1)
    cpus_per_task: int = key(1, "CPU cores per rank (`--cpus-per-task`); also torch's thread count.", ge=1)
    gpus_per_node: int = key(0, "GPUs per node (`--gpus-per-node`).", ge=0)
    mem_gb: float | None = key(None, "Memory per node in GiB (`--mem`).", gt=0, default_doc="the cluster's default")
    time: int | str = key(60, 'Time limit: minutes, or `"HH:MM:SS"` / `"D-HH:MM:SS"` (`--time`).', check=_time_problem)
    account: str | None = key(None, "Account charged (`--account`).", default_doc="your default")
    qos: str | None = key(None, "Quality of service (`--qos`).", default_doc="your default")
    job_name: str | None = key(None, "Job name (`--job-name`).", default_doc="the job file's name")
    constraint: str | None = key(None, "Node features required (`--constraint`).", default_doc="none")
    signal_seconds: int = key(
        120,
        "Seconds before the time limit at which Slurm sends SIGUSR2 (`--signal=USR2@<seconds>`; Slurm may send it "
        "up to a minute earlier): training checkpoints after its next step and `twinhpc sbatch`'s script requeues "
        "the job. Allow for a step, a checkpoint and the start of the job.",
        ge=1,
    )
    additional: dict[str, Any] = key(
        {},
        '`[slurm.additional]`: any other sbatch option, written as `--<key>=<value>` (e.g. `mail-type = "END"`).',
        check=_additional_problem,
    )

    @property
    def minutes(self) -> int:
        """The time limit in minutes (seconds rounded up)."""
        return slurm_minutes(self.time)

    @property
    def mem(self) -> str | None:
        """``mem_gb`` as sbatch's ``--mem`` value (``"16G"``, or MiB when fractional), or None."""
        if self.mem_gb is None:
            return None
        return f"{int(self.mem_gb)}G" if self.mem_gb.is_integer() else f"{round(self.mem_gb * 1024)}M"

    def submitit_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's ``AutoExecutor.update_parameters`` (unset ones left
        out): its generic names where it has one (``name``, ``timeout_min``, ``nodes``,
        ``tasks_per_node``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``), ``slurm_``-prefixed
        names for the rest, so that submitit warns about none of them. On the Slurm executor a job
        of ``nodes`` × ``ntasks_per_node`` ranks is one job of that many tasks, started by ``srun``.
        ``time`` becomes whole minutes.
        """
        params = {
            "name": self.job_name,
            "timeout_min": self.minutes,
            "nodes": self.nodes,
            "tasks_per_node": self.ntasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "gpus_per_node": self.gpus_per_node or None,
            "mem_gb": self.mem_gb,
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "slurm_signal_delay_s": self.signal_seconds,
            "slurm_additional_parameters": dict(self.additional) or None,
        }
        return {k: v for k, v in params.items() if v is not None}
