#!/usr/bin/env bash
# An example job, end to end on one machine (the main job is jobs/main.sh, the heated plate's
# twin): set everything up, simulate an ensemble of driven,
# damped oscillators (the physical system to twin), ingest it into a sharded HDF5 dataset on
# NP MPI ranks, inspect and verify it, benchmark the rank-aware loader on it, then fit the
# preprocessing, train the twin (jobs/oscillator_regime.toml: an MLP that tells the regime from
# the trajectory) data-parallel on NP ranks, validate it and report (PNG plots beside results.h5).
#
#   bash jobs/oscillator.sh           # NP=2 ranks, results under out/oscillator
#   NP=4 WORK=/scratch/me bash jobs/oscillator.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

NP=${NP:-2}
WORK=${WORK:-out/oscillator}
MEMBERS=${MEMBERS:-20000}
export PATH="$PWD/${VENV:-.venv}/bin:$PATH"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
if [ "$NP" -gt "$(nproc)" ]; then export OMPI_MCA_rmaps_base_oversubscribe=1; fi
mkdir -p "$WORK"
step() { printf '\n== %s\n' "$*"; }

step "simulating $MEMBERS oscillators"
python jobs/oscillator_ensemble.py --out "$WORK/oscillators.npz" --members "$MEMBERS"

step "ingest on $NP ranks (per-rank logs in $WORK/logs)"
mpirun -n "$NP" twinhpc ingest npz "$WORK/oscillators.npz" --out "$WORK/oscillators" --label regime \
  --shards 4 --val-fraction 0.1 --test-fraction 0.1 --overwrite --log-dir "$WORK/logs"

step "inspect"
twinhpc inspect "$WORK/oscillators"

step "verify on $NP ranks"
mpirun -n "$NP" twinhpc verify "$WORK/oscillators"

step "loader benchmark on $NP ranks (a new record in $WORK/bench/loader/)"
mpirun -n "$NP" twinhpc bench loader "$WORK/oscillators" --seconds 2 --results "$WORK/bench"

JOB=jobs/oscillator_regime.toml
RUN="$WORK/runs/oscillator_regime"
SETS=(--set "data.dataset=$WORK/oscillators" --set "preprocess.out=$WORK/oscillators-prep" --set "train.out=$RUN")
step "preprocess on $NP ranks ($JOB)"
mpirun -n "$NP" twinhpc preprocess "$JOB" "${SETS[@]}" --log-dir "$WORK/logs"

step "train on $NP ranks (run $RUN, started afresh; per-rank logs in $RUN/logs)"
rm -rf "$RUN"
# --bind-to none: Open MPI would pin each rank to one core, where the loader's prefetch thread
# and the all-reduce engine's thread would queue behind the compute thread
mpirun -n "$NP" --bind-to none twinhpc train "$JOB" "${SETS[@]}"

step "validate on $NP ranks"
mpirun -n "$NP" twinhpc validate "$JOB" "${SETS[@]}" --run "$RUN"

step "report"
twinhpc report "$RUN"

step "done: dataset $WORK/oscillators, loader benchmark record in $WORK/bench/loader/, run $RUN (results.h5, *.png)"
