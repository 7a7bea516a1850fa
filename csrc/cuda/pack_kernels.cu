// CUDA kernels behind launchers.h: element-wise convert-and-scale for pack / unpack / scale_.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "launchers.h"

namespace twinhpc::cuda {
namespace {

constexpr int kThreads = 256;  // threads per block
constexpr int kMaxBlocks = 4096;  // grid-stride loops cover the rest

// Loads to the arithmetic type; half types go through float.
template <typename Acc, typename T>
__device__ Acc load(T v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ Acc load(__half v) { return static_cast<Acc>(__half2float(v)); }
template <typename Acc>
__device__ Acc load(__nv_bfloat16 v) { return static_cast<Acc>(__bfloat162float(v)); }

// Stores from the arithmetic type with round-to-nearest-even; half types go through float.
template <typename T, typename Acc>
__device__ T store(Acc v) { return static_cast<T>(v); }
template <>
__device__ __half store<__half, float>(float v) { return __float2half_rn(v); }
template <>
__device__ __half store<__half, double>(double v) { return __float2half_rn(static_cast<float>(v)); }
template <>
__device__ __nv_bfloat16 store<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __nv_bfloat16 store<__nv_bfloat16, double>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}

template <typename In, typename Out>
__global__ void convert_kernel(const In* src, Out* dst, int64_t n, double scale) {
  using Acc = std::conditional_t<std::is_same_v<In, double> || std::is_same_v<Out, double>,
                                 double, float>;
  const Acc s = static_cast<Acc>(scale);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    dst[i] = store<Out, Acc>(load<Acc>(src[i]) * s);
  }
}

template <typename In, typename Out>
void launch_typed(const void* src, void* dst, int64_t n, double scale, cudaStream_t stream) {
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  convert_kernel<In, Out><<<blocks, kThreads, 0, stream>>>(static_cast<const In*>(src),
                                                          static_cast<Out*>(dst), n, scale);
}

// Calls fn(T{}) with the C++ type of a floating-point Dtype; false for other types.
template <typename Fn>
bool with_float_type(Dtype t, Fn&& fn) {
  switch (t) {
    case Dtype::kFloat32: fn(float{}); return true;
    case Dtype::kFloat64: fn(double{}); return true;
    case Dtype::kFloat16: fn(__half{}); return true;
    case Dtype::kBFloat16: fn(__nv_bfloat16{}); return true;
    default: return false;
  }
}

size_t element_size(Dtype t) {
  switch (t) {
    case Dtype::kFloat64: case Dtype::kInt64: return 8;
    case Dtype::kFloat32: case Dtype::kInt32: return 4;
    default: return 2;
  }
}

}  // namespace

cudaError_t launch_convert(const void* src, Dtype in_type, void* dst, Dtype out_type, int64_t n,
                           double scale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (in_type == out_type && scale == 1.0) {
    if (src == dst) return cudaSuccess;
    return cudaMemcpyAsync(dst, src, n * element_size(in_type), cudaMemcpyDeviceToDevice, stream);
  }
  bool ok = false;
  with_float_type(in_type, [&](auto in) {
    ok = with_float_type(out_type, [&](auto out) {
      launch_typed<decltype(in), decltype(out)>(src, dst, n, scale, stream);
    });
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace twinhpc::cuda
