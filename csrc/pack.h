// Fusion-buffer ops: pack tensors into one flat buffer, unpack it back, scale in place.
//
// The drivers check the arguments (errors name the offending argument or index), lay out the
// flat buffer and hand each contiguous run of elements to a backend's ConvertFn. The CPU
// backend is in pack.cpp; the CUDA one in cuda/pack_cuda.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace twinhpc {

// Converts n elements: dst[i] = out(in(src[i]) * scale), with the arithmetic in float (double
// when either side is float64). Same type and scale 1 is a plain copy. src may equal dst.
using ConvertFn = void (*)(const void* src, at::ScalarType in, void* dst, at::ScalarType out,
                           int64_t n, double scale);

// pack: a new 1-D tensor holding every tensor flattened, in order, cast to dtype if given.
// All tensors share device and dtype; a cast is float -> float only.
at::Tensor pack_with(ConvertFn convert, at::TensorList tensors, std::optional<at::ScalarType> dtype);
// unpack: outs[i] = consecutive slices of flat, cast to outs[i]'s dtype, times scale. The outs
// are contiguous, on flat's device and hold flat.numel() elements together; ints take scale 1.
void unpack_with(ConvertFn convert, const at::Tensor& flat, at::TensorList outs, double scale);
// scale_: t *= factor in place; t is a contiguous floating-point tensor.
void scale_with(ConvertFn convert, at::Tensor& t, double factor);

// CPU implementations (registered in register.cpp).
at::Tensor pack_cpu(at::TensorList tensors, std::optional<at::ScalarType> dtype);
void unpack_cpu(const at::Tensor& flat, at::TensorList outs, double scale);
void scale_cpu(at::Tensor& t, double factor);

}  // namespace twinhpc
