// CUDA backend of pack / unpack / scale_ (compiled only in the CUDA build).
//
// The drivers in ../pack.h do the checks and the layout; the element work runs on the current
// stream of the tensors' device through the launchers in launchers.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pack.h"
#include "launchers.h"

namespace twinhpc {
namespace {

cuda::Dtype to_launcher_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::Dtype::kFloat32;
    case at::kDouble: return cuda::Dtype::kFloat64;
    case at::kHalf: return cuda::Dtype::kFloat16;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    case at::kInt: return cuda::Dtype::kInt32;
    case at::kLong: return cuda::Dtype::kInt64;
    default: TORCH_CHECK(false, "twinhpc: no CUDA kernel for dtype ", t);
  }
}

// The CUDA ConvertFn: one launch on the current stream (the caller's guard sets the device).
void convert_cuda(const void* src, at::ScalarType in, void* dst, at::ScalarType out, int64_t n,
                  double scale) {
  C10_CUDA_CHECK(cuda::launch_convert(src, to_launcher_dtype(in), dst, to_launcher_dtype(out), n,
                                      scale, c10::cuda::getCurrentCUDAStream()));
}

at::Tensor pack_cuda(at::TensorList tensors, std::optional<at::ScalarType> dtype) {
  const c10::cuda::OptionalCUDAGuard guard(tensors.empty() ? std::nullopt
                                                            : std::optional(tensors[0].device()));
  return pack_with(convert_cuda, tensors, dtype);
}

void unpack_cuda(const at::Tensor& flat, at::TensorList outs, double scale) {
  const c10::cuda::CUDAGuard guard(flat.device());
  unpack_with(convert_cuda, flat, outs, scale);
}

void scale_cuda(at::Tensor& t, double factor) {
  const c10::cuda::CUDAGuard guard(t.device());
  scale_with(convert_cuda, t, factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(twinhpc, CUDA, m) {
  m.impl("pack", &pack_cuda);
  m.impl("unpack", &unpack_cuda);
  m.impl("scale_", &scale_cuda);
}

}  // namespace twinhpc
