"""The environment of a job launched from a twinhpc process (twinhpc/env.py ``launch_environ``):
an MPI runtime's per-job variables stay behind, the user's settings go along, and two concurrent
``mpirun`` jobs started from a process where MPI runs both start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from twinhpc.env import is_runtime_var, launch_environ, unset_runtime_vars_line

#: what Open MPI 4's mpirun and singleton MPI_Init set, and MPICH's hydra (names taken from them)
RUNTIME = [
    "OMPI_MCA_ess",
    "OMPI_MCA_ess_base_jobid",
    "OMPI_MCA_orte_precondition_transports",
    "OMPI_MCA_orte_hnp_uri",
    "OMPI_MCA_pmix",
    "OMPI_MCA_initial_wdir",
    "OMPI_MCA_shmem_RUNTIME_QUERY_hint",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "OMPI_APP_CTX_NUM_PROCS",
    "OMPI_UNIVERSE_SIZE",
    "OMPI_FIRST_RANKS",
    "OMPI_FILE_LOCATION",
    "OMPI_NUM_APP_CTX",
    "OMPI_COMMAND",
    "ORTE_SCHIZO_DETECTION",
    "PMIX_NAMESPACE",
    "PMIX_RANK",
    "PMIX_SERVER_URI41",
    "PMI_RANK",
    "PMI_FD",
    "HYDRA_CONTROL_FD",
    "MPI_LOCALRANKID",
]
#: a user's or site's settings that every job must keep
KEPT = [
    "OMPI_MCA_btl",
    "OMPI_MCA_rmaps_base_oversubscribe",
    "OMPI_MCA_coll_tuned_use_dynamic_rules",
    "OMPI_ALLOW_RUN_AS_ROOT",
    "OMPI_MCA_mpi_warn_on_fork",
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "PATH",
    "OPAL_PREFIX",
]


@pytest.mark.parametrize("name", RUNTIME)
def test_a_runtime_variable_is_left_behind(name):
    assert is_runtime_var(name)
    assert name not in launch_environ({name: "1", "PATH": "/bin"})


@pytest.mark.parametrize("name", KEPT)
def test_a_user_setting_goes_along(name):
    assert not is_runtime_var(name)
    assert launch_environ({name: "v"}) == {name: "v"}


def test_every_pmix_variable_counts_as_the_runtime_s():
    """PMIx's own settings (PMIX_MCA_*) go too: the new launcher sets up its PMIx afresh."""
    assert is_runtime_var("PMIX_MCA_psec")


def test_extra_variables_are_added_and_the_input_is_not_changed():
    env = {"OMPI_COMM_WORLD_RANK": "1", "A": "a"}
    assert launch_environ(env, OMP_NUM_THREADS="2") == {"A": "a", "OMP_NUM_THREADS": "2"}
    assert env == {"OMPI_COMM_WORLD_RANK": "1", "A": "a"}


def test_the_batch_script_line_unsets_exactly_the_runtime_variables():
    env = {**{k: "1" for k in RUNTIME + KEPT}, "PATH": os.environ["PATH"]}
    script = f"{unset_runtime_vars_line()}\nenv\n"
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    left = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert not left & set(RUNTIME), left & set(RUNTIME)
    assert set(KEPT) <= left


def test_the_batch_script_line_is_harmless_when_nothing_is_set():
    r = subprocess.run(
        ["bash", "-c", f"{unset_runtime_vars_line()}\necho ok"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")


CHILD = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED); n = c.allreduce(1); "
    "MPI.COMM_WORLD.rank or print('sum', n, MPI.COMM_WORLD.Get_size())"
)


@pytest.mark.timeout(240)
def test_two_concurrent_jobs_launched_from_a_process_where_mpi_runs_both_start(mpi_started_here):
    """The crash this guards against: with MPI initialised here, two 2-rank mpirun jobs that
    inherit this process's C-level environment fail at start-up (Open MPI's shared-memory
    transport of one job meets the other's); with ``launch_environ`` both complete."""
    cmd = ["mpirun", "-n", "2", sys.executable, "-c", CHILD]
    procs = [
        subprocess.Popen(cmd, env=launch_environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [(p.communicate(timeout=200)[0], p.returncode) for p in procs]
    for out, rc in outs:
        assert rc == 0, out[-2000:]
        assert "sum 2 2" in out, out[-2000:]  # rank 0's line: both ranks of one job met
