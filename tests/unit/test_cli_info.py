"""``twinhpc info`` as a user runs it: one process, under mpirun, and without the extension."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from twinhpc import ops
from twinhpc.cli.main import main
from twinhpc.env import format_report, launcher_vars, process_info, startup_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: code that runs `twinhpc info --json` as if twinhpc._C were not built
WITHOUT_EXTENSION = ("import sys; sys.modules['twinhpc._C'] = None; "
                     "from twinhpc.cli.main import main; sys.exit(main(['info', '--json']))")


def clean_env() -> dict:
    """This environment without launcher variables (the test process may be an MPI singleton)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "SLURM_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def run(cmd: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_help_describes_the_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["info", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "startup table" in out and "--json" in out


def test_json_with_one_process():
    report = json.loads(run([sys.executable, "-m", "twinhpc", "info", "--json"]))
    assert [r["rank"] for r in report["ranks"]] == [0]
    assert report["ranks"][0]["size"] == 1
    assert report["extension"]["built"] is ops.available()


def test_table_with_one_process():
    out = run([sys.executable, "-m", "twinhpc", "info"])
    assert "world       1 rank on 1 host" in out
    assert "not built" not in out or not ops.available()


def test_info_works_without_the_extension():
    report = json.loads(run([sys.executable, "-c", WITHOUT_EXTENSION]))
    assert report["extension"]["built"] is False
    assert "not built" in report["extension"]["error"]
    assert any("build_ext --inplace" in w for w in report["warnings"])


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun on PATH")
def test_json_under_mpirun_has_a_row_per_rank():
    out = run(["mpirun", "-n", "2", "--oversubscribe", sys.executable, "-m", "twinhpc", "info", "--json"])
    report = json.loads(out)  # printed by rank 0 only: exactly one JSON object
    rows = report["ranks"]
    assert [r["rank"] for r in rows] == [0, 1]
    assert all(r["size"] == 2 and r["launcher_size"] == 2 for r in rows)
    assert len({r["pid"] for r in rows}) == 2
    assert not [w for w in report["warnings"] if "launcher" in w]


# -- what the rows are made of -----------------------------------------------------------------
def test_process_info_prefers_open_mpi_over_slurm():
    environ = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0",
               "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    info = process_info(environ)
    assert (info.rank, info.size, info.local_rank, info.launcher) == (3, 4, 1, "openmpi")
    assert info.pid == os.getpid()


def test_process_info_under_srun_and_without_a_launcher():
    srun = process_info({"PMIX_RANK": "2", "SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"})
    assert (srun.rank, srun.size, srun.local_rank, srun.launcher) == (2, 3, 0, "pmix")
    alone = process_info({})
    assert (alone.rank, alone.size, alone.local_rank, alone.launcher) == (0, 1, 0, "none")


def test_launcher_vars_hide_keys_plumbing_and_long_values():
    environ = {"SLURM_JOB_ID": "42", "OMPI_MCA_btl": "self,vader", "HOME": "/root",
               "OMPI_MCA_orte_precondition_transports": "4261e0c5-e7466aa8",
               "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000", "OMPI_MCA_ess_base_vpid": "0",
               "SLURM_JOB_NODELIST": "n" * 300}
    assert launcher_vars(environ) == {"OMPI_MCA_btl": "self,vader", "SLURM_JOB_ID": "42"}


def test_report_warns_when_the_launcher_started_more_processes_than_mpi_sees(monkeypatch):
    from twinhpc.comm.world import get_world

    world = get_world()
    if world.size != 1:
        pytest.skip("needs a single-process run")
    for name in [n for n in os.environ if n.startswith(("OMPI_COMM_WORLD_", "PMI_", "PMIX_RANK"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    text = format_report(startup_report(world))
    assert "the launcher (slurm) started 2 processes but the MPI world has 1" in text
