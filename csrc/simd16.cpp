// float32 <-> float16/bfloat16 conversions: AVX2 + F16C kernels chosen at run time, with the
// scalar c10 conversions as the fallback and for the last n % 8 elements.
#include "simd16.h"

#include <atomic>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TWINHPC_X86_SIMD 1
#include <immintrin.h>
#endif

namespace twinhpc {
namespace simd16 {
namespace {

bool detect() {
#ifdef TWINHPC_X86_SIMD
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const bool kAvailable = detect();
std::atomic<bool> g_enabled{kAvailable};

// The scalar loops: c10's conversions, the definition of the bits.
template <typename T>
void widen_scalar(const T* src, float* dst, int64_t n, float scale) {
  if (scale == 1.0f) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * scale;
  }
}

template <typename T>
void widen_add_scalar(const T* src, float* acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += static_cast<float>(src[i]);
}

template <typename T>
void narrow_scalar(const float* src, T* dst, int64_t n, float scale) {
  if (scale == 1.0f) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i] * scale);
  }
}

#ifdef TWINHPC_X86_SIMD
#define TWINHPC_AVX2 __attribute__((target("avx2,f16c")))

// 8 elements <-> 8 floats. kBf: bfloat16 (the high half of a float32), else IEEE float16.
template <bool kBf>
TWINHPC_AVX2 inline __m256 load8(const void* p) {
  const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
  if constexpr (kBf) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

template <bool kBf>
TWINHPC_AVX2 inline void store8(void* p, __m256 x) {
  __m128i h;
  if constexpr (kBf) {
    // c10::BFloat16's round_to_nearest_even: (bits + 0x7FFF + lsb) >> 16, NaN -> 0x7FC0
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
    // eight 32-bit values below 65536 -> eight 16-bit values, in order
    h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  } else {
    h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
  }
  _mm_storeu_si128(static_cast<__m128i*>(p), h);
}

template <bool kBf, typename T>
TWINHPC_AVX2 void widen_avx2(const T* src, float* dst, int64_t n, float scale) {
  int64_t i = 0;
  if (scale == 1.0f) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<kBf>(src + i));
  } else {
    const __m256 s = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(load8<kBf>(src + i), s));
  }
  widen_scalar(src + i, dst + i, n - i, scale);
}

template <bool kBf, typename T>
TWINHPC_AVX2 void widen_add_avx2(const T* src, float* acc, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(acc + i, _mm256_add_ps(_mm256_loadu_ps(acc + i), load8<kBf>(src + i)));
  }
  widen_add_scalar(src + i, acc + i, n - i);
}

template <bool kBf, typename T>
TWINHPC_AVX2 void narrow_avx2(const float* src, T* dst, int64_t n, float scale) {
  int64_t i = 0;
  if (scale == 1.0f) {
    for (; i + 8 <= n; i += 8) store8<kBf>(dst + i, _mm256_loadu_ps(src + i));
  } else {
    const __m256 s = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8) store8<kBf>(dst + i, _mm256_mul_ps(_mm256_loadu_ps(src + i), s));
  }
  narrow_scalar(src + i, dst + i, n - i, scale);
}
#endif

bool use_vectors() { return g_enabled.load(std::memory_order_relaxed); }

}  // namespace

bool available() { return kAvailable; }
bool enabled() { return use_vectors(); }

bool set_enabled(bool on) { return g_enabled.exchange(on && kAvailable); }

#ifdef TWINHPC_X86_SIMD
#define TWINHPC_PICK(vector_call, scalar_call) \
  if (use_vectors()) {                         \
    vector_call;                               \
  } else {                                     \
    scalar_call;                               \
  }
#else
#define TWINHPC_PICK(vector_call, scalar_call) scalar_call;
#endif

void widen(const c10::BFloat16* src, float* dst, int64_t n, float scale) {
  TWINHPC_PICK((widen_avx2<true>(src, dst, n, scale)), (widen_scalar(src, dst, n, scale)))
}
void widen(const c10::Half* src, float* dst, int64_t n, float scale) {
  TWINHPC_PICK((widen_avx2<false>(src, dst, n, scale)), (widen_scalar(src, dst, n, scale)))
}
void widen_add(const c10::BFloat16* src, float* acc, int64_t n) {
  TWINHPC_PICK((widen_add_avx2<true>(src, acc, n)), (widen_add_scalar(src, acc, n)))
}
void widen_add(const c10::Half* src, float* acc, int64_t n) {
  TWINHPC_PICK((widen_add_avx2<false>(src, acc, n)), (widen_add_scalar(src, acc, n)))
}
void narrow(const float* src, c10::BFloat16* dst, int64_t n, float scale) {
  TWINHPC_PICK((narrow_avx2<true>(src, dst, n, scale)), (narrow_scalar(src, dst, n, scale)))
}
void narrow(const float* src, c10::Half* dst, int64_t n, float scale) {
  TWINHPC_PICK((narrow_avx2<false>(src, dst, n, scale)), (narrow_scalar(src, dst, n, scale)))
}

}  // namespace simd16
}  // namespace twinhpc
