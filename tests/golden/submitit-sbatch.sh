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

# setup
unset $(compgen -e | grep -E '^(PMIX_|PMI_|HYDRA_|ORTE_|OMPI_COMM_WORLD_|OMPI_APP_CTX_|OMPI_MCA_orte_|OMPI_MCA_ess|OMPI_MCA_pmix|OMPI_MCA_initial_wdir$|OMPI_MCA_shmem_RUNTIME_QUERY_hint$|OMPI_(UNIVERSE_SIZE|NUM_APP_CTX|FIRST_RANKS|FILE_LOCATION|COMMAND|ARGV)$|MPI_LOCALRANKID$|MPI_LOCALNRANKS$)')

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output RUN/submitit/%j_%t_log.out --error RUN/submitit/%j_%t_log.err COMMAND
