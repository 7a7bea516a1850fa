"""The engine in a fresh process: which of Open MPI's all-reduce algorithms it offers depends on
an MCA variable read once, when MPI starts (``import twinhpc`` enables the dynamic rules first)."""

import os
import subprocess
import sys

import pytest
from mpi4py import MPI

from twinhpc import ops

if not ops.available():
    pytest.skip(f"the compiled extension twinhpc._C is not built; {ops.BUILD_HINT}", allow_module_level=True)

VARIANTS_SCRIPT = """
import twinhpc  # first: it enables Open MPI's dynamic rules before mpi4py starts MPI
from mpi4py import MPI
from twinhpc.comm.engine import Engine
import torch
with Engine(MPI.COMM_SELF, algorithm="mpi") as eng:
    names = [a for a in eng.available_algorithms() if a.startswith("mpi_")]
    for a in names:  # each variant sums (a world of one: unchanged)
        assert torch.equal(eng.allreduce_(torch.arange(5.0), algorithm=a), torch.arange(5.0))
    print(",".join(names))
"""


@pytest.mark.skipif("Open MPI" not in MPI.Get_library_version(), reason="the variants are Open MPI's algorithms")
@pytest.mark.parametrize(
    "dynamic_rules, expected",
    [
        (None, "mpi_recursive_doubling,mpi_ring,mpi_segmented_ring,mpi_rabenseifner"),  # import twinhpc enables them
        ("0", ""),  # the environment says no: only the library's own choice
    ],
)
def test_open_mpi_algorithm_variants_follow_the_dynamic_rules_variable(dynamic_rules, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMPI_MCA_coll_tuned_use_dynamic_rules"}
    if dynamic_rules is not None:
        env["OMPI_MCA_coll_tuned_use_dynamic_rules"] = dynamic_rules
    out = subprocess.run([sys.executable, "-c", VARIANTS_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
