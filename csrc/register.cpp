// The one registration file: op schemas, CPU kernels, and the Python module's plain functions.
//
// Ops are called as torch.ops.twinhpc.<name>; twinhpc/ops.py wraps them. CUDA kernels are
// registered in cuda/pack_cuda.cpp, which only the CUDA build compiles.
#include <mpi.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

#include "pack.h"

namespace twinhpc {
namespace {

// The MPI implementation named by mpi.h at compile time, e.g. "Open MPI 4.1.4".
std::string mpi_compiled() {
#if defined(OMPI_MAJOR_VERSION)
  return "Open MPI " + std::to_string(OMPI_MAJOR_VERSION) + "." + std::to_string(OMPI_MINOR_VERSION) +
         "." + std::to_string(OMPI_RELEASE_VERSION);
#elif defined(MPICH_VERSION)
  return std::string("MPICH ") + MPICH_VERSION;
#else
  return "unknown MPI";
#endif
}

// The MPI library loaded at run time; MPI_Get_library_version may be called before MPI_Init.
std::string mpi_library() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (MPI_Get_library_version(text, &len) != MPI_SUCCESS) return "unknown";
  std::string version(text, len);
  // Some libraries count the terminating NUL or end with a newline.
  version.erase(version.find_last_not_of(std::string("\0\n ", 3)) + 1);
  return version;
}

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef TWINHPC_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["mpi_compiled"] = mpi_compiled();
  info["mpi_library"] = mpi_library();
  info["mpi_standard"] = std::to_string(MPI_VERSION) + "." + std::to_string(MPI_SUBVERSION);
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
#ifdef TORCH_VERSION
  info["torch"] = TORCH_VERSION;
#else
  info["torch"] = "unknown";
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(twinhpc, m) {
  m.def("pack(Tensor[] tensors, ScalarType? dtype=None) -> Tensor");
  m.def("unpack(Tensor flat, Tensor(a!)[] outs, float scale=1.0) -> ()");
  // Returns nothing: torch.compile cannot functionalize custom ops whose outputs alias inputs.
  m.def("scale_(Tensor(a!) t, float factor) -> ()");
}

TORCH_LIBRARY_IMPL(twinhpc, CPU, m) {
  m.impl("pack", &pack_cpu);
  m.impl("unpack", &unpack_cpu);
  m.impl("scale_", &scale_cpu);
}

}  // namespace twinhpc

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "twinhpc compiled core: ops registered as torch.ops.twinhpc.*, plus build_info()";
  m.def("build_info", &twinhpc::build_info,
        "How this extension was built: CUDA, MPI (compiled and loaded), compiler, torch.");
}
