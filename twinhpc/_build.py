"""Build-time decisions for ``setup.py``: whether to compile CUDA, and the MPI compiler flags.

Importable without building anything and without torch (tests check these decisions directly).

Note:
    CUDA is built from what is *installed* (the CUDA toolkit and a CUDA-enabled torch), never
    from whether a GPU is visible: login and build nodes usually have none, and a package built
    there must still run on the GPU nodes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass

#: accepted values of TWINHPC_CUDA
CUDA_MODES = ("auto", "0", "1")
#: MPI compiler wrappers tried in order when $MPICXX is not set
MPI_WRAPPERS = ("mpicxx", "mpic++", "mpiCC")
#: MPI C++ binding libraries: not needed (the sources use the C API) and a source of
#: undefined-symbol errors, so dropped from the link flags
MPI_CXX_LIBS = ("-lmpi_cxx", "-lmpicxx", "-lmpichcxx")


class BuildError(RuntimeError):
    """The build cannot go ahead as configured; the message says what is missing and how to fix it."""


def find_nvcc(environ: Mapping[str, str] = os.environ) -> str | None:
    """Path of ``nvcc``: ``$CUDA_HOME``/``$CUDA_PATH``, else ``PATH``, else ``/usr/local/cuda``.

    The same search order as ``torch.utils.cpp_extension``. Returns ``None`` if none exists.
    """
    home = environ.get("CUDA_HOME") or environ.get("CUDA_PATH")
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
        return nvcc if os.path.exists(nvcc) else None
    return shutil.which("nvcc", path=environ.get("PATH")) or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    )


def cuda_enabled(mode: str, nvcc: str | None, torch_cuda: str | None) -> bool:
    """Whether to compile the CUDA kernels.

    Parameters
    ----------
    mode : str
        ``"auto"`` (build when both the toolkit and a CUDA torch are present), ``"1"`` (required)
        or ``"0"`` (never).
    nvcc : str or None
        Path of nvcc (:func:`find_nvcc`), ``None`` without the CUDA toolkit.
    torch_cuda : str or None
        ``torch.version.cuda``: the CUDA version torch was built with, ``None`` for a CPU torch.

    Raises
    ------
    BuildError
        If ``mode`` is not one of :data:`CUDA_MODES`, or is ``"1"`` while either is missing.
    """
    if mode not in CUDA_MODES:
        raise BuildError(f"TWINHPC_CUDA={mode!r}: expected one of {', '.join(CUDA_MODES)}")
    if mode == "0":
        return False
    missing = []
    if nvcc is None:
        missing.append("the CUDA toolkit (no nvcc in $CUDA_HOME, $CUDA_PATH, PATH or /usr/local/cuda)")
    if torch_cuda is None:
        missing.append("a CUDA-enabled torch (torch.version.cuda is None: this torch is a CPU build)")
    if mode == "1" and missing:
        raise BuildError(
            "TWINHPC_CUDA=1 but the CUDA build needs "
            + " and ".join(missing)
            + "; set TWINHPC_CUDA=0 or auto to build without CUDA"
        )
    return not missing


def cuda_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """:func:`cuda_enabled` for ``$TWINHPC_CUDA`` (default auto), this machine's nvcc and torch."""
    import torch

    return cuda_enabled(environ.get("TWINHPC_CUDA", "auto"), find_nvcc(environ), torch.version.cuda)


def cuda_arch_list(torch_arch_flags: str, nvcc_codes: str) -> str:
    """``TORCH_CUDA_ARCH_LIST`` chosen without looking at the GPUs visible here.

    Parameters
    ----------
    torch_arch_flags : str
        The architectures torch was compiled for, ``torch._C._cuda_getArchFlags()``
        (e.g. ``"sm_80 sm_90 compute_90"``).
    nvcc_codes : str
        What this nvcc can compile, ``nvcc --list-gpu-code`` (e.g. ``"sm_75 sm_80 sm_90"``).

    Returns
    -------
    str
        The architectures in both, ascending, the newest with ``+PTX`` so that later GPUs can
        compile it at load time, e.g. ``"8.0;9.0+PTX"``.

    Raises
    ------
    BuildError
        If they have no architecture in common.
    """

    def capabilities(text: str) -> set[tuple[int, int]]:
        return {(int(d[:-1]), int(d[-1])) for d in re.findall(r"sm_(\d\d+)", text)}

    common = sorted(capabilities(torch_arch_flags) & capabilities(nvcc_codes))
    if not common:
        raise BuildError(
            f"torch was compiled for {torch_arch_flags!r} and nvcc compiles {nvcc_codes!r}: "
            'no GPU architecture in common; set TORCH_CUDA_ARCH_LIST (e.g. "9.0")'
        )
    return ";".join(f"{major}.{minor}" for major, minor in common) + "+PTX"


def default_cuda_arch_list(nvcc: str) -> str:
    """:func:`cuda_arch_list` for this torch (a CUDA build) and ``nvcc``."""
    import torch

    codes = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout
    return cuda_arch_list(torch._C._cuda_getArchFlags(), codes)


@dataclass(frozen=True)
class MPIFlags:
    """Compiler and linker flags for code that includes ``mpi.h`` and links libmpi."""

    wrapper: str  # the MPI C++ compiler wrapper they came from, e.g. "mpicxx"
    compile_args: list[str]  # include paths, macros, -pthread
    link_args: list[str]  # library paths, libraries (without C++ bindings), an rpath per path


def split_mpi_flags(wrapper: str, tokens: list[str]) -> MPIFlags:
    """Sort a wrapper's flags (compiler name already removed) into compile and link flags.

    ``-I``/``-D`` flags compile, ``-pthread`` does both, everything else links; the C++ binding
    libraries (:data:`MPI_CXX_LIBS`) are dropped and each ``-L`` directory gets an rpath, so a
    libmpi outside the system paths (e.g. one installed by pip) is found at run time.
    """
    compile_args, link_args = [], []
    for tok in tokens:
        if tok.startswith(("-I", "-D")):
            compile_args.append(tok)
        elif tok == "-pthread":
            compile_args.append(tok)
            link_args.append(tok)
        elif tok not in MPI_CXX_LIBS:
            link_args.append(tok)
    rpaths = [f"-Wl,-rpath,{t[2:]}" for t in link_args if t.startswith("-L")]
    return MPIFlags(wrapper, compile_args, link_args + [r for r in rpaths if r not in link_args])


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd``, or ``None`` if it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def mpi_flags(environ: Mapping[str, str] = os.environ) -> MPIFlags:
    """Flags from the MPI wrapper ``$MPICXX`` (else the first of :data:`MPI_WRAPPERS` on PATH).

    Asks ``--showme:compile`` and ``--showme:link`` (Open MPI), else ``-show`` (MPICH and its
    derivatives, whose first word is the underlying compiler).

    Raises
    ------
    BuildError
        If no wrapper is found, or it answers neither way.
    """
    wrapper = environ.get("MPICXX") or next(
        (w for w in MPI_WRAPPERS if shutil.which(w, path=environ.get("PATH"))), None
    )
    if wrapper is None:
        raise BuildError(
            f"no MPI C++ compiler wrapper found (tried {', '.join(MPI_WRAPPERS)} on PATH). "
            "Install an MPI with its development files (Debian: apt-get install "
            "openmpi-bin libopenmpi-dev) or set MPICXX to the wrapper's path"
        )
    compile_text, link_text = _run([wrapper, "--showme:compile"]), _run([wrapper, "--showme:link"])
    if compile_text is not None and link_text is not None:
        return split_mpi_flags(wrapper, shlex.split(compile_text) + shlex.split(link_text))
    show = _run([wrapper, "-show"])
    if show is None:
        raise BuildError(
            f"the MPI wrapper {wrapper!r} answers neither --showme:compile/--showme:link "
            "(Open MPI) nor -show (MPICH); set MPICXX to a working MPI C++ wrapper"
        )
    return split_mpi_flags(wrapper, shlex.split(show)[1:])


def cxx_compiler(environ: Mapping[str, str] = os.environ) -> str:
    """The C++ compiler that links the extension: ``$CXX``, else Python's configured one, else ``c++``."""
    cxx = environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    return shlex.split(cxx)[0]


def libstdcxx_link_args(cxx: str) -> list[str]:
    """Link arguments that make ``twinhpc._C`` use the shared C++ runtime, ``libstdc++.so.6``.

    A compiler whose search path holds only the static ``libstdc++.a`` (a relocated GCC without
    ``libstdc++.so``, such as a ``CXX=/opt/gcc/bin/g++`` that some GPU images set) copies the C++
    runtime into the extension. torch then runs with two runtimes in one process, and the first
    error message the extension formats (``TORCH_CHECK`` streaming an integer) crashes with
    SIGSEGV instead of raising. For such a compiler this returns the path of the shared runtime
    it would load at run time (``-print-file-name=libstdc++.so.6``), given after the objects so
    that the linker takes every C++ runtime symbol from it. Returns ``[]`` when the compiler
    finds ``libstdc++.so`` itself (the usual case), or when it cannot say (not GCC-like).
    """

    def find(name: str) -> str | None:
        out = _run([cxx, f"-print-file-name={name}"])
        path = out.strip() if out else ""
        return path if os.path.isabs(path) and os.path.exists(path) else None

    if find("libstdc++.so") is not None:
        return []
    shared = find("libstdc++.so.6")
    return [os.path.normpath(shared)] if shared else []
