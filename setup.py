"""Build and install twinhpc with its compiled core ``twinhpc._C`` (sources in ``csrc/``).

From the repository root::

    python setup.py build_ext --inplace               # build twinhpc/_C*.so in the source tree
    pip install --no-build-isolation --no-deps -e .   # editable install; builds it too

Both use the torch already installed (hence no build isolation). Environment:

    TWINHPC_CUDA=auto|0|1  CUDA kernels: auto = when nvcc and a CUDA-enabled torch are both
                           present (never decided by a visible GPU); 1 = required; 0 = never
    TORCH_CUDA_ARCH_LIST   GPU architectures to compile for (default: those torch was compiled
                           for that nvcc supports; never only the GPUs visible at build time)
    MPICXX                 the MPI C++ compiler wrapper to take flags from (default: mpicxx)
    CXX                    the C++ compiler; one that finds only a static libstdc++ gets the
                           shared libstdc++.so.6 linked explicitly (one C++ runtime with torch)
    MAX_JOBS               parallel compile jobs (torch's ninja build)
"""

import glob
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from twinhpc._build import (  # noqa: E402
    BuildError,
    cuda_from_env,
    cxx_compiler,
    default_cuda_arch_list,
    find_nvcc,
    libstdcxx_link_args,
    mpi_flags,
)

#: macros that keep mpi.h from pulling in the deprecated MPI C++ bindings
MPI_MACROS = [("OMPI_SKIP_MPICXX", "1"), ("MPICH_SKIP_MPICXX", "1")]


def extensions():
    """The ``twinhpc._C`` extension: C++ always, the CUDA backend when :func:`cuda_from_env` says so."""
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    mpi = mpi_flags()
    with_cuda = cuda_from_env()
    sources = sorted(glob.glob("csrc/*.cpp"))
    compile_args = {"cxx": ["-O3", *mpi.compile_args]}
    macros = list(MPI_MACROS)
    if with_cuda:
        # torch would take the architectures of the visible GPUs, and fail where there are none
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_arch_list(find_nvcc())
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        compile_args["nvcc"] = ["-O3"]
        macros.append(("TWINHPC_WITH_CUDA", "1"))
    kind = CUDAExtension if with_cuda else CppExtension
    cxx = cxx_compiler()
    runtime = libstdcxx_link_args(cxx)  # [] unless the compiler would link libstdc++ statically
    if runtime:
        print(
            f"twinhpc: {cxx} finds no libstdc++.so; linking {runtime[0]} so that twinhpc._C shares torch's C++ runtime",
            file=sys.stderr,
        )
    print(
        f"twinhpc: building twinhpc._C with CUDA {'on' if with_cuda else 'off'}, MPI flags from {mpi.wrapper}",
        file=sys.stderr,
    )
    return [
        kind(
            "twinhpc._C",
            sources,
            define_macros=macros,
            extra_compile_args=compile_args,
            extra_link_args=mpi.link_args + runtime,
        )
    ]


def main():
    from torch.utils.cpp_extension import BuildExtension

    try:
        ext_modules = extensions()
    except BuildError as e:
        sys.exit(f"twinhpc setup: error: {e}")
    # name, version, packages, dependencies and the console script are in pyproject.toml
    setup(
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension},
    )


main()
