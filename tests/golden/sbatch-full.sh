#!/bin/bash
# The batch job of jobs/digits big.toml, written by `twinhpc sbatch 'jobs/digits big.toml' --set optim.lr=0.01 --set train.seed=3 --out 'runs/it'"'"'s' --resume`.
# Preprocess, train, validate and report on the allocation of the #SBATCH lines (the job
# file's [slurm] table). Near the time limit Slurm sends USR2: training checkpoints after
# its next step and exits 255, and this script requeues the job; a requeued run
# (SLURM_RESTART_COUNT > 0) resumes the same run directory. docs/jobs.md explains it.
#SBATCH --job-name=digits-big
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=4
#SBATCH --mem=64G
#SBATCH --time=1-00:00:00
#SBATCH --partition=gpu
#SBATCH --account=proj42
#SBATCH --qos=high
#SBATCH --constraint=a100
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR2@600
#SBATCH --mail-type=END,FAIL
#SBATCH --comment="a long run"
#SBATCH --exclusive
#SBATCH --output=slurm-%x-%j.log
#SBATCH --chdir="/home/user/project 2"
set -uo pipefail
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
JOB='jobs/digits big.toml'
SETS=(--set optim.lr=0.01 --set train.seed=3)
RUN='runs/it'"'"'s'
LOGS=logs/digits-big-"$SLURM_JOB_ID"
RESUME=(--resume)
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
