"""Defaults shared by the job file and the Python API: one value per fact."""

#: Seconds a collective may wait for the other ranks before the stall inspector names the
#: missing ranks and aborts the job.
STALL_TIMEOUT_S = 300.0

#: Gradient bucket size of the data-parallel all-reduce, MiB.
BUCKET_CAP_MB = 25.0
