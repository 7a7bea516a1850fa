// Conversions between float32 and the 16-bit floats (float16, bfloat16), 8 elements at a time
// with AVX2 and F16C where the CPU has them (chosen at run time; the library is built for any
// x86-64), else one element at a time with c10's conversions. Both give the same bits: round to
// nearest even, overflow to infinity, float16 subnormals exact; a NaN stays a NaN (bfloat16's is
// 0x7FC0 as in c10; float16 keeps F16C's payload where c10 writes 0x7E00).
//
// These are the hot loops of the 16-bit wire formats (cast into the fusion buffer, sum, cast
// back) and of reducing float16/bfloat16 tensors; their numpy references are the tests'
// (tests/unit/test_engine.py, tests/unit/test_ops.py), run on both paths.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace twinhpc {
namespace simd16 {

// Whether T is one of the 16-bit floats these conversions serve.
template <typename T>
constexpr bool is_16bit_float = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// Whether this CPU has AVX2 and F16C.
bool available();
// Whether the vector path is in use (available, and not switched off).
bool enabled();
// Switch the vector path on (only where available) or off; returns the previous state. For tests
// and benchmarks: both paths must give the same bits.
bool set_enabled(bool on);

// dst[i] = float(src[i]) * scale (exact when scale is 1)
void widen(const c10::BFloat16* src, float* dst, int64_t n, float scale = 1.0f);
void widen(const c10::Half* src, float* dst, int64_t n, float scale = 1.0f);
// acc[i] += float(src[i])
void widen_add(const c10::BFloat16* src, float* acc, int64_t n);
void widen_add(const c10::Half* src, float* acc, int64_t n);
// dst[i] = T(src[i] * scale), the product in float32, rounded once
void narrow(const float* src, c10::BFloat16* dst, int64_t n, float scale);
void narrow(const float* src, c10::Half* dst, int64_t n, float scale);

}  // namespace simd16
}  // namespace twinhpc
