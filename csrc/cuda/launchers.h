// Host-side launchers of the CUDA kernels in pack_kernels.cu.
//
// Plain C++ with raw pointers, an element count and a stream, so the .cpp files that call them
// need the CUDA headers but never nvcc, and the .cu file needs no torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace twinhpc::cuda {

// Element types the kernels handle (mirrors the supported torch dtypes).
enum class Dtype : int {
  kFloat32,
  kFloat64,
  kFloat16,
  kBFloat16,
  kInt32,
  kInt64,
};

// dst[i] = out_type(in_type(src[i]) * scale) for i < n, on `stream`; src may equal dst.
// The arithmetic is float, or double when either side is float64. Same type and scale 1 is a
// device copy; otherwise both types must be floating point (else cudaErrorInvalidValue).
// Returns the launch status (cudaGetLastError), without synchronising.
cudaError_t launch_convert(const void* src, Dtype in_type, void* dst, Dtype out_type, int64_t n,
                           double scale, cudaStream_t stream);

}  // namespace twinhpc::cuda
