#!/usr/bin/env bash
# The main job, end to end on one machine: a digital twin of a heated plate.
#
# Set everything up, simulate an ensemble of heated-plate scenarios on NP MPI ranks straight
# into a sharded HDF5 dataset (jobs/plate.toml), inspect and verify it, fit the preprocessing,
# train the twin — the plate's physics advanced one saved step in closed form, corrected by a
# 2-D Fourier neural operator (jobs/plate_twin.toml) — data-parallel on NP ranks, validate it on held-out
# scenarios against persistence and a linear model (rollouts to 50 steps, the plate's energy
# balance), run a what-if scenario on the twin and on the simulator (speed-up, error), and
# monitor a sensor stream with injected faults. docs/twin.md explains each step.
#
#   bash jobs/main.sh                 # NP=2 ranks, results under out/main
#   NP=4 WORK=/scratch/me bash jobs/main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

NP=${NP:-2}
WORK=${WORK:-out/main}
export PATH="$PWD/${VENV:-.venv}/bin:$PATH"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
if [ "$NP" -gt "$(nproc)" ]; then export OMPI_MCA_rmaps_base_oversubscribe=1; fi
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/build/numba-cache}
mkdir -p "$WORK"
T0=$SECONDS   # the job's own clock (setup excluded): each step's header shows it
step() { local t=$((SECONDS - T0)); printf '\n== [%d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"; }

DATA="$WORK/plate"
RUN="$WORK/runs/plate_twin"
SETS=(--set "data.dataset=$DATA" --set "preprocess.out=$WORK/plate-pre" --set "train.out=$RUN")

step "simulate the plate ensemble on $NP ranks (jobs/plate.toml -> $DATA; per-rank logs in $WORK/logs)"
mpirun -n "$NP" twinhpc simulate jobs/plate.toml --out "$DATA" --overwrite --log-dir "$WORK/logs"

step "inspect"
twinhpc inspect "$DATA"

step "verify on $NP ranks"
mpirun -n "$NP" twinhpc verify "$DATA"

step "preprocess on $NP ranks (field statistics)"
mpirun -n "$NP" twinhpc preprocess jobs/plate_twin.toml "${SETS[@]}" --log-dir "$WORK/logs"

step "train the twin on $NP ranks (run $RUN, started afresh; per-rank logs in $RUN/logs)"
rm -rf "$RUN"
# --bind-to none: Open MPI would pin each rank to one core, where the loader's prefetch thread
# and the all-reduce engine's thread would queue behind the compute thread
mpirun -n "$NP" --bind-to none twinhpc train jobs/plate_twin.toml "${SETS[@]}"

step "validate on $NP ranks: rollouts of the held-out scenarios against persistence and a linear model"
mpirun -n "$NP" twinhpc validate jobs/plate_twin.toml "${SETS[@]}" --run "$RUN" --checkpoint best

step "report"
twinhpc report "$RUN"

step "what-if: a stronger first heat source, on the twin and on the simulator"
twinhpc twin rollout "$RUN" --scenario-index 0 --set scenario.source0.power=12 --out "$WORK/whatif.h5"

step "sensor streams of one plate: a fault-free history (calibration) and a day with a drifting sensor, a stuck sensor and an extra heat source"
twinhpc simulate jobs/plate.toml --stream "$WORK/stream-calib.h5" --faults none --plate-seed 0 --stream-seed 1
twinhpc simulate jobs/plate.toml --stream "$WORK/stream-faults.h5" --faults default --plate-seed 0 --stream-seed 2

step "monitor the faulty stream with the twin"
twinhpc twin monitor "$RUN" --stream "$WORK/stream-faults.h5" --calibrate "$WORK/stream-calib.h5" \
  --out "$WORK/monitor.h5"

step "done: dataset $DATA; twin $RUN (results.h5 with /twin_validation, twin_panels.png, twin_horizon.png); what-if $WORK/whatif.h5 (+ PNGs); monitor report $WORK/monitor.h5 (+ PNG)"
