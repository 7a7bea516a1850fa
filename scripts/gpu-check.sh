#!/usr/bin/env bash
# GPU checks in one call, for a session that has the lent GPU machine (the `device` tool):
#
#   run(command="bash scripts/gpu-check.sh", timeout_s=540)
#
# It builds twinhpc._C with CUDA against the machine's own torch (TWINHPC_CUDA=1), then runs the
# GPU tests (tests/gpu, the CUDA training test), a 2-rank all-reduce benchmark of CUDA tensors and
# one ResNet-18 bf16 training-throughput run, writing every log under $OUT (the device tool's
# folder that comes back; ./gpu-results when run by hand). Copy what comes back into
# benchmarks/results/gpu/ and commit it.
#
# NOT YET RUN: no session so far had a GPU machine. The machine's image has python3 with torch,
# mpi4py, h5py, numba and pytest but may lack an MPI compiler wrapper (mpicxx) and headers, which
# the extension needs; then this script stops at the first step and says so (carry Debian's
# Open MPI packages, unpacked with dpkg -x into a folder named in `carry`, and put its bin/ first
# on PATH). Every step has its own timeout so that one hang cannot eat the device time.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
step() { printf '\n== %s\n' "$*" | tee -a "$OUT/summary.txt"; }

step "environment"
{ nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  command -v mpicxx mpirun; "$PY" -c "import mpi4py; print('mpi4py', mpi4py.__version__, mpi4py.get_config())"; } \
  > "$OUT/env.txt" 2>&1
tail -4 "$OUT/env.txt" | tee -a "$OUT/summary.txt"
if ! command -v mpicxx > /dev/null; then
  echo "no mpicxx on PATH: the extension cannot be built here (see the header of this script)" | tee -a "$OUT/summary.txt"
  exit 1
fi

step "build twinhpc._C with CUDA"
if ! TWINHPC_CUDA=1 timeout 300 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log" | tee -a "$OUT/summary.txt"
  exit 1
fi
"$PY" -c "from twinhpc import ops; print(ops.build_info())" 2>&1 | tee -a "$OUT/summary.txt"

step "GPU tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/gpu tests/unit/test_device.py \
  "tests/unit/test_train_loop.py::test_device_runs_track_the_cpu_run" > "$OUT/tests.log" 2>&1
tail -3 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

step "all-reduce of CUDA tensors on 2 ranks (one GPU shared)"
timeout 120 mpirun -n 2 "$PY" - > "$OUT/allreduce_cuda.txt" 2>&1 <<'PY'
import time, torch
from twinhpc.comm.engine import Engine
e = Engine()
for n in (1 << 18, 1 << 22):
    t = torch.full((n,), float(e.rank + 1), device="cuda")
    e.allreduce_(t); torch.cuda.synchronize()
    ok = bool((t == e.size * (e.size + 1) / 2).all())
    t0 = time.perf_counter()
    for _ in range(10): e.allreduce_(t)
    torch.cuda.synchronize()
    if e.rank == 0: print(f"{4 * n} bytes: correct={ok} {(time.perf_counter() - t0) / 10 * 1e3:.2f} ms/call")
e.close()
PY
tail -2 "$OUT/allreduce_cuda.txt" | tee -a "$OUT/summary.txt"

step "ResNet-18 training throughput on the GPU (batch 256, bf16): twinhpc vs plain PyTorch"
timeout 300 mpirun -n 1 "$PY" benchmarks/train_throughput.py --models resnet18 --batch 256 --device cuda --bf16 \
  --threads 8 --steps 20 --rounds 3 --results "$OUT" > "$OUT/train_throughput_gpu.txt" 2>&1
tail -4 "$OUT/train_throughput_gpu.txt" | tee -a "$OUT/summary.txt"
