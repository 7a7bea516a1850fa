#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), run the quality gates (scripts/gates.py: ruff, mypy
# --strict on comm/config/io, the import-linter layering contract), start a single-node Slurm
# cluster for the Slurm integration tests (scripts/slurm-up.sh; TWINHPC_SLURM=0 skips it and
# those tests), then run every test: serial tests (multi-rank tests at 1 rank included), then the
# multi-rank tests under `mpirun -n 2` and `mpirun -n 3` (oversubscribed on 2 cores). Ends with
# one line `TOTAL: N passed, M failed, K skipped` (each gate counts as one test); exit status 0
# only when nothing failed. Extra arguments go to every pytest run.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed"; echo "TOTAL: 0 passed, 1 failed, 0 skipped"; exit 1; }

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   # CI runs as root
export OMPI_MCA_rmaps_base_oversubscribe=1                         # 3 ranks on 2 cores
export PATH="$PWD/$VENV/bin:$PATH"
export TWINHPC_TEST_RESULTS="$PWD/build/test-results"
# Numba's compiled kernels are cached here: compiled once by the serial run, loaded by every
# later process (the mpirun ranks, the CLI subprocesses) and by the next test run
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/build/numba-cache}
R=$TWINHPC_TEST_RESULTS
rm -rf "$R"; mkdir -p "$R"

runs=()
printf '\n== quality gates (scripts/gates.py)\n'
"$PY" scripts/gates.py "$R/gates.xml"
runs+=("quality gates=gates.xml")
if [ "${TWINHPC_SLURM:-1}" != 0 ]; then
  printf '\n== starting a single-node Slurm cluster (scripts/slurm-up.sh; log in %s/slurm-up.log)\n' "$R"
  if ! timeout 900 bash scripts/slurm-up.sh > "$R/slurm-up.log" 2>&1; then
    tail -25 "$R/slurm-up.log"
    runs+=("Slurm cluster setup=slurm-up-failed.xml")   # no such file: counted as a failure
  else
    tail -2 "$R/slurm-up.log"
  fi
fi

printf '\n== serial tests (tests/mpi at 1 rank; tests/integration: mpirun and fresh processes, srun/sbatch where Slurm is up)\n'
timeout 2400 "$PY" -m pytest tests --junitxml="$R/serial.xml" "$@"
runs+=("serial (1 process)=serial.xml")
color=(); [ -t 1 ] || color=(--color=no)   # mpirun gives ranks a pty: no colour codes in CI logs
for n in 2 3; do
  printf '\n== multi-rank tests: mpirun -n %s (other ranks log to %s/mpi-n%s-rank*.log)\n' "$n" "$R" "$n"
  timeout 900 mpirun -n "$n" "$PY" tests/run_mpi.py tests/mpi --junitxml="$R/mpi-n$n.xml" "${color[@]}" "$@"
  runs+=("mpirun -n $n (tests/mpi)=mpi-n$n.xml")
done
"$PY" tests/summary.py "$R" "${runs[@]}"
