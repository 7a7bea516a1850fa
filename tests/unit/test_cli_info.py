"""``twinhpc info`` in this process, and what its rows are made of (under mpirun and without the
extension: tests/integration/test_cli_mpirun.py)."""

import json
import os

import pytest

from twinhpc import ops
from twinhpc.cli.main import main
from twinhpc.env import format_report, launcher_vars, process_info, startup_report


def test_help_describes_the_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["info", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "startup table" in out and "--json" in out


def test_json_with_one_process(cli):
    r = cli("info", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [r["rank"] for r in report["ranks"]] == [0]
    assert report["ranks"][0]["size"] == 1
    assert report["extension"]["built"] is ops.available()


def test_table_with_one_process(cli):
    out = cli("info").stdout
    assert "world       1 rank on 1 host" in out
    assert "not built" not in out or not ops.available()


# -- what the rows are made of -----------------------------------------------------------------
def test_process_info_prefers_open_mpi_over_slurm():
    environ = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "0",
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    }
    info = process_info(environ)
    assert (info.rank, info.size, info.local_rank, info.launcher) == (3, 4, 1, "openmpi")
    assert info.pid == os.getpid()


def test_process_info_under_srun_and_without_a_launcher():
    srun = process_info({"PMIX_RANK": "2", "SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"})
    assert (srun.rank, srun.size, srun.local_rank, srun.launcher) == (2, 3, 0, "pmix")
    alone = process_info({})
    assert (alone.rank, alone.size, alone.local_rank, alone.launcher) == (0, 1, 0, "none")


def test_launcher_vars_hide_keys_plumbing_and_long_values():
    environ = {
        "SLURM_JOB_ID": "42",
        "OMPI_MCA_btl": "self,vader",
        "HOME": "/root",
        "OMPI_MCA_orte_precondition_transports": "4261e0c5-e7466aa8",
        "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000",
        "OMPI_MCA_ess_base_vpid": "0",
        "SLURM_JOB_NODELIST": "n" * 300,
    }
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
