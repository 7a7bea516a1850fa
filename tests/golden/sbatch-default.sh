#!/bin/bash
# The batch job of jobs/digits.toml, written by `twinhpc sbatch jobs/digits.toml --set train.epochs=5`.
# Preprocess, train, validate and report on the allocation of the #SBATCH lines (the job
# file's [slurm] table). Near the time limit Slurm sends USR2: training checkpoints after
# its next step and exits 255, and this script requeues the job; a requeued run
# (SLURM_RESTART_COUNT > 0) resumes the same run directory. docs/jobs.md explains it.
#SBATCH --job-name=digits
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=60
#SBATCH --output=digits-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --chdir=/home/user/project
set -uo pipefail
source "${TWINHPC_VENV:-/home/user/project/.venv}/bin/activate"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
JOB=jobs/digits.toml
SETS=(--set train.epochs=5)
RUN=runs/digits-"$SLURM_JOB_ID"
LOGS=logs/digits-"$SLURM_JOB_ID"
RESUME=()
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then RESUME=(--resume); fi  # a requeue: continue
echo "twinhpc: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, on $(hostname): run $RUN"

# run one step; its exit status 255 (stopped by a signal, work saved) requeues the job
step() {
  local what=$1 status
  shift
  "$@"
  status=$?
  if [ "$status" -eq 255 ]; then
    echo "twinhpc: $what stopped by a signal (exit status 255): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "twinhpc: scontrol requeue failed; continue later with twinhpc sbatch --out $RUN --resume" >&2
  fi
  [ "$status" -eq 0 ] || exit "$status"
}

step preprocess srun twinhpc preprocess "$JOB" "${SETS[@]}" --log-dir "$LOGS"
step train srun twinhpc train "$JOB" "${SETS[@]}" --out "$RUN" "${RESUME[@]}" --log-dir "$LOGS"
step validate srun twinhpc validate "$JOB" "${SETS[@]}" --run "$RUN" --log-dir "$LOGS"
step report twinhpc report "$RUN"
