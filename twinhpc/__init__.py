"""twinhpc: build, train, validate, tune and serve digital-twin models on MPI/Slurm clusters."""

__version__ = "0.1.0"
