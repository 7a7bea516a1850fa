#!/bin/bash

# Parameters
#SBATCH --array=0-5%3
#SBATCH --cpus-per-task=2
#SBATCH --error=SWEEP/executor/slurm/%A_%a_0_log.err
#SBATCH --job-name=digits-sweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --open-mode=append
#SBATCH --output=SWEEP/executor/slurm/%A_%a_0_log.out
#SBATCH --partition=cpu
#SBATCH --requeue
#SBATCH --signal=USR2@180
#SBATCH --time=90
#SBATCH --wckey=submitit

# setup
unset $(compgen -e | grep -E '^(PMIX_|PMI_|HYDRA_|ORTE_|OMPI_COMM_WORLD_|OMPI_APP_CTX_|OMPI_MCA_orte_|OMPI_MCA_ess|OMPI_MCA_pmix|OMPI_MCA_initial_wdir$|OMPI_MCA_shmem_RUNTIME_QUERY_hint$|OMPI_(UNIVERSE_SIZE|NUM_APP_CTX|FIRST_RANKS|FILE_LOCATION|COMMAND|ARGV)$|MPI_LOCALRANKID$|MPI_LOCALNRANKS$)')

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output SWEEP/executor/slurm/%A_%a_%t_log.out --error SWEEP/executor/slurm/%A_%a_%t_log.err COMMAND
