#!/usr/bin/env bash
# Set up everything twinhpc needs on a fresh Debian machine (as root): Open MPI from Debian,
# a Python venv with the pinned packages, and the compiled extension. Re-running is fast:
# nothing already in place is installed again (apt is skipped when mpicxx exists, pip when
# requirements*.txt are unchanged, and the extension build is incremental).
#
#   bash scripts/setup.sh            # VENV=.venv by default
#
# Why Debian's Open MPI (not the MPI wheels on PyPI): it is the MPI a Slurm site provides here
# (srun --mpi=pmix launches it), it brings the mpicxx wrapper and headers the extension is built
# against, and mpi4py gets MPI_THREAD_MULTIPLE from it. One MPI per environment: Open MPI 4 and 5
# share the soname libmpi.so.40.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*"; }

if ! command -v mpicxx >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
  step "installing Open MPI (Debian packages openmpi-bin libopenmpi-dev)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends openmpi-bin libopenmpi-dev openssh-client
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the venv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.twinhpc-requirements.sha256"
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  step "installing Python packages (requirements.txt; torch is the 2.13.0 CPU build)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi

step "building the compiled core (twinhpc._C) and installing twinhpc in editable mode"
export MAX_JOBS=${MAX_JOBS:-2}
if ! "$VENV/bin/pip" show -q twinhpc >/dev/null 2>&1; then
  # first time: the editable install builds the extension into twinhpc/ (a few minutes)
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
else
  # later: rebuild only when a source is newer than the built extension (delete twinhpc/_C*.so
  # to force a rebuild, e.g. after changing TWINHPC_CUDA); ninja recompiles only what changed
  so=$(ls twinhpc/_C*.so 2>/dev/null | head -1 || true)
  if [ -z "$so" ] || [ -n "$(find csrc setup.py twinhpc/_build.py -newer "$so" -print -quit)" ]; then
    "$VENV/bin/python" setup.py -q build_ext --inplace
  else
    echo "twinhpc._C is up to date ($so)"
  fi
fi
"$VENV/bin/python" -c "import sys, twinhpc, twinhpc.ops as ops; cuda = ops.build_info()['cuda']; print('twinhpc', twinhpc.__version__, 'ready in', sys.prefix, '(extension built with CUDA)' if cuda else '(extension built, CPU only)')"
