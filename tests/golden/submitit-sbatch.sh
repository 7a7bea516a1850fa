#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --constraint=v100
#SBATCH --cpus-per-task=2
#SBATCH --error=RUN/submitit/%j_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=digits
#SBATCH --mail-type=END
#SBATCH --mem=7680MB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=RUN/submitit/%j_0_log.out
#SBATCH --partition=cpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@300
#SBATCH --time=1441
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output RUN/submitit/%j_%t_log.out --error RUN/submitit/%j_%t_log.err COMMAND
