"""The engine and DataParallel on CUDA tensors, at any world size (skipped without a CUDA device).

Runs unchanged under plain pytest (1 rank) and ``mpirun -n N python tests/run_mpi.py
tests/gpu/test_mpi_cuda.py`` (ranks may share one GPU). Which path CUDA tensors take is the MPI
library's: device pointers with a CUDA-aware MPI, else staged through pinned host memory (the
Open MPI wheel that ``scripts/gpu-check.sh`` carries is not CUDA-aware); set
``TWINHPC_MPI_CUDA_AWARE=0`` to test the staged path under a CUDA-aware MPI.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.gpu import skip_unless_cuda_extension
from tests.mpi.collective import collective

skip_unless_cuda_extension()

from tests.mpi.test_allreduce import DTYPES, FLOATS, SIZES, WIRE_EPS, expected_sum, rank_input  # noqa: E402
from tests.mpi.test_ddp import global_batches, max_rel_diff, seeded, sgd_step, share, train_reference  # noqa: E402
from twinhpc.comm.ddp import DataParallel  # noqa: E402
from twinhpc.comm.engine import ALGORITHMS, Engine  # noqa: E402
from twinhpc.models import build  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def world():
    from twinhpc.comm.world import get_world

    return get_world()


@pytest.fixture(scope="module")
def device(world):
    return torch.device("cuda", world.rank % torch.cuda.device_count())


@pytest.fixture(scope="module")
def engine(world):
    eng = collective(world, lambda: Engine(world.comm, stall_timeout=120, algorithm="mpi"))
    yield eng
    eng.close()


def test_engine_says_how_cuda_tensors_travel(world, engine):
    """Recorded in the log of the GPU check: which of the two paths this run exercises."""
    import os

    forced_off = os.environ.get("TWINHPC_MPI_CUDA_AWARE") == "0"
    print(
        f"rank {world.rank}: cuda_aware={engine.cuda_aware} "
        f"(TWINHPC_MPI_CUDA_AWARE={os.environ.get('TWINHPC_MPI_CUDA_AWARE', 'unset')})"
    )

    def body():
        assert not (forced_off and engine.cuda_aware), (
            "TWINHPC_MPI_CUDA_AWARE=0 but the engine still hands device pointers to MPI"
        )

    collective(world, body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_sum_and_average_equal_numpy(world, engine, device, dtype, algorithm):
    if algorithm not in engine.available_algorithms():
        pytest.skip(f"algorithm {algorithm} is not available here")

    def body():
        sums, means = {}, {}  # every collective first, the checks after (see test_allreduce.py)
        for n in SIZES:
            t = rank_input(n, dtype, world.rank).to(device)
            sums[n] = (t, engine.allreduce_(t, op="sum", algorithm=algorithm))
            if dtype in FLOATS:
                means[n] = rank_input(n, dtype, world.rank).to(device)
                engine.allreduce_async_(means[n], op="avg", algorithm=algorithm).wait()
        for n, (t, returned) in sums.items():
            assert returned is t and t.device == device
            np.testing.assert_array_equal(
                t.cpu().double().numpy(), expected_sum(n, dtype, world.size), err_msg=f"n={n}"
            )
        for n, t in means.items():
            mean = expected_sum(n, dtype, world.size) / world.size
            np.testing.assert_allclose(t.cpu().double().numpy(), mean, rtol=WIRE_EPS.get(dtype, 1e-7) * 2)

    collective(world, body)


@pytest.mark.parametrize("wire", WIRE_EPS, ids=str)
def test_cuda_wire_dtype_within_documented_tolerance(world, engine, device, wire):
    """The 16-bit wire cast by the CUDA kernels: the bound of tests/mpi/test_allreduce.py."""
    n = 10_001

    def inputs(r):
        return torch.randn(n, generator=torch.Generator().manual_seed(100 + r), dtype=torch.float64)

    def body():
        t = inputs(world.rank).float().to(device)
        engine.allreduce_async_(t, op="avg", wire_dtype=wire).wait()
        xs = np.stack([inputs(r).numpy() for r in range(world.size)])
        bound = (world.size + 2) * WIRE_EPS[wire] * np.abs(xs).mean(axis=0)
        assert t.dtype == torch.float32 and t.device == device
        assert np.all(np.abs(t.cpu().double().numpy() - xs.mean(axis=0)) <= bound)

    collective(world, body)


@pytest.mark.parametrize("wire", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cuda_training_equals_one_process_with_the_whole_batch(world, engine, device, wire):
    """The seed CNN on the GPU: N ranks with a share of each batch = one process with all of it.
    TF32 is off so float32 means float32; the tolerance allows for cuDNN choosing other kernels
    for the smaller per-rank batches (float32: relative 1e-4; a 16-bit wire: 2 eps of it)."""
    tolerance = 1e-4 if wire is None else 2 * torch.finfo(wire).eps

    def body():
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        batches = [(x.to(device), y.to(device)) for x, y in global_batches()]
        reference = train_reference(seeded(0, lambda: build("cnn")).to(device), batches)
        dp = DataParallel(seeded(world.rank, lambda: build("cnn")).to(device), engine=engine, wire_dtype=wire)
        for x, y in batches:
            F.cross_entropy(dp(share(x, world.rank, world.size)), share(y, world.rank, world.size)).backward()
            dp.synchronize()
            sgd_step(dp)
        dp.close()
        assert max_rel_diff(dp.module, reference) <= tolerance

    collective(world, body)
