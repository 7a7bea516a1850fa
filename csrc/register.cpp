// The one registration file: op schemas, CPU kernels, and the Python module's plain functions.
//
// Ops are called as torch.ops.twinhpc.<name>; twinhpc/ops.py wraps them. CUDA kernels are
// registered in cuda/pack_cuda.cpp, which only the CUDA build compiles. The all-reduce Engine
// and its Work handles are pybind11 classes (csrc/engine.h); twinhpc/comm/engine.py wraps them.
#include <mpi.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

#include "engine.h"
#include "mpit.h"
#include "pack.h"
#include "reduce.h"
#include "simd16.h"

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

namespace py = pybind11;

// Raises the Python exception of a failed operation.
void raise_error(ErrorKind kind, const std::string& message) {
  switch (kind) {
    case ErrorKind::kNone: return;
    case ErrorKind::kType: throw py::type_error(message);
    case ErrorKind::kValue: throw py::value_error(message);
    case ErrorKind::kRuntime: throw std::runtime_error(message);
  }
}

py::dict timings_of(Work& w) {
  Timings t;
  {
    std::lock_guard<std::mutex> lock(w.mu);
    t = w.timings;
  }
  py::dict d;
  d["enqueue"] = t.enqueue;
  d["start"] = t.start;
  d["pack_done"] = t.pack_done;
  d["reduce_done"] = t.reduce_done;
  d["unpack_done"] = t.unpack_done;
  return d;
}

// The reduction kernels on tensors, for tests: inout += in; dst = sum of srcs.
void reduce_into_py(at::Tensor inout, const at::Tensor& in) {
  TORCH_CHECK_VALUE(inout.is_cpu() && in.is_cpu() && inout.is_contiguous() && in.is_contiguous() &&
                        inout.numel() == in.numel() && inout.scalar_type() == in.scalar_type(),
                    "reduce_into: two contiguous CPU tensors of one dtype and size");
  reduce_into(inout.data_ptr(), in.data_ptr(), inout.numel(), inout.scalar_type());
}

void reduce_many_py(at::Tensor dst, const std::vector<at::Tensor>& srcs) {
  std::vector<const void*> ptrs;
  for (const at::Tensor& s : srcs) {
    TORCH_CHECK_VALUE(s.is_cpu() && s.is_contiguous() && s.numel() == dst.numel() &&
                          s.scalar_type() == dst.scalar_type() && dst.is_contiguous(),
                      "reduce_many: contiguous CPU tensors of one dtype and size");
    ptrs.push_back(s.data_ptr());
  }
  TORCH_CHECK_VALUE(!ptrs.empty(), "reduce_many: no sources");
  reduce_many(dst.data_ptr(), ptrs.data(), static_cast<int>(ptrs.size()), dst.numel(), dst.scalar_type());
}

void bind_engine(py::module& m) {
  py::class_<Work, std::shared_ptr<Work>>(m, "Work", "One queued collective of an Engine.")
      .def("wait", [](Work& w) {
            std::pair<ErrorKind, std::string> outcome;
            {
              py::gil_scoped_release no_gil;
              outcome = w.wait();
            }
            raise_error(outcome.first, outcome.second);
          }, "Block (without the GIL) until done; raise its error, if any.")
      .def("done", &Work::is_done)
      .def("timings", &timings_of, "Monotonic microseconds of each phase (0: not reached).")
      .def_readonly("index", &Work::index)
      .def_readonly("name", &Work::name);

  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine", "The all-reduce engine (csrc/engine.h).")
      .def(py::init([](int64_t fortran_comm, double stall_timeout, int64_t segment_bytes, bool use_cuda_aware) {
             return std::make_shared<Engine>(MPI_Comm_f2c(static_cast<MPI_Fint>(fortran_comm)),
                                             stall_timeout, segment_bytes, use_cuda_aware);
           }),
           py::arg("fortran_comm"), py::arg("stall_timeout"), py::arg("segment_bytes"),
           py::arg("use_cuda_aware") = true,
           py::call_guard<py::gil_scoped_release>())
      // Submitting takes the GIL only to convert the arguments; a blocking submit runs without it.
      .def("allreduce",
           [](Engine& e, std::vector<at::Tensor> tensors, bool average, std::optional<at::ScalarType> wire,
              std::string name, std::optional<int> algorithm, bool blocking) {
             py::gil_scoped_release no_gil;
             return e.allreduce(std::move(tensors), average, wire, std::move(name), algorithm, blocking);
           },
           py::arg("tensors"), py::arg("average"), py::arg("wire"), py::arg("name"),
           py::arg("algorithm"), py::arg("blocking"))
      .def("broadcast",
           [](Engine& e, at::Tensor tensor, int root, std::string name, bool blocking) {
             py::gil_scoped_release no_gil;
             return e.broadcast(std::move(tensor), root, std::move(name), blocking);
           },
           py::arg("tensor"), py::arg("root"), py::arg("name"), py::arg("blocking"))
      .def("barrier",
           [](Engine& e, std::string name, bool blocking) {
             py::gil_scoped_release no_gil;
             return e.barrier(std::move(name), blocking);
           },
           py::arg("name"), py::arg("blocking"))
      .def("shared_buffer", &Engine::shared_buffer, py::arg("bytes"), py::call_guard<py::gil_scoped_release>())
      .def("set_table", &Engine::set_table, py::arg("table"))
      .def("table", &Engine::table)
      .def("has_algorithm", &Engine::has_algorithm, py::arg("algorithm"))
      .def("close", &Engine::close, py::call_guard<py::gil_scoped_release>())
      .def("abandon", &Engine::abandon, py::call_guard<py::gil_scoped_release>(),
           "Release what this process alone holds, with no collective (an engine never closed).")
      .def_property_readonly("rank", &Engine::rank)
      .def_property_readonly("size", &Engine::size)
      .def_property_readonly("cuda_aware", &Engine::cuda_aware,
                             "Whether CUDA tensors go to MPI as device pointers (else staged in host memory).");
  m.def("allreduce_algorithms", &allreduce_algorithms,
        "The all-reduce algorithms' names; an algorithm's code (Engine.allreduce, set_table, "
        "has_algorithm) is its position.");
  m.def("openmpi_allreduce_algorithms", &openmpi_allreduce_algorithms,
        "Open MPI's all-reduce algorithms as (code, name): the values of coll_tuned_allreduce_algorithm.");
  m.def("reduce_into", &reduce_into_py, py::arg("inout"), py::arg("in"),
        "inout += in with the engine's kernel (16-bit floats summed in float32).");
  m.def("reduce_many", &reduce_many_py, py::arg("dst"), py::arg("srcs"),
        "dst = sum of srcs with the engine's kernel (16-bit floats accumulated in float32).");
  m.def("set_control_variable", &set_control_variable, py::arg("name"), py::arg("value"),
        "Write an integer MPI_T control variable; returns '' on success, else why not.");
  m.def("simd16_available", &simd16::available,
        "Whether this CPU has AVX2 and F16C for the float16/bfloat16 conversions.");
  m.def("set_simd16", &simd16::set_enabled, py::arg("on"),
        "Use the AVX2/F16C float16/bfloat16 conversions (where available) or the scalar ones; "
        "returns the previous setting. Both give the same bits.");
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
  m.doc() = "twinhpc compiled core: ops registered as torch.ops.twinhpc.*, build_info(), the all-reduce Engine";
  m.def("build_info", &twinhpc::build_info,
        "How this extension was built: CUDA, MPI (compiled and loaded), compiler, torch.");
  twinhpc::bind_engine(m);
}
