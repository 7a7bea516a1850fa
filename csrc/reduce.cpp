// Sum kernels (plain loops the compiler vectorises) and the MPI types and operators per dtype.
#include "reduce.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <mutex>
#include <type_traits>

#include "simd16.h"

namespace twinhpc {

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool reducible(at::ScalarType t) { return is_floating(t) || t == at::kInt || t == at::kLong; }

std::string dtype_name(at::ScalarType t) { return std::string(c10::getDtypeNames(t).first); }

namespace {

// The type additions happen in: float for the 16-bit floats, the type itself otherwise.
template <typename T> struct Accumulator { using type = T; };
template <> struct Accumulator<c10::Half> { using type = float; };
template <> struct Accumulator<c10::BFloat16> { using type = float; };

// Elements summed per block of reduce_many: the float accumulator of a block stays in L1.
constexpr int64_t kManyBlock = 2048;

template <typename T>
void into_typed(T* __restrict inout, const T* __restrict in, int64_t n) {
  if constexpr (simd16::is_16bit_float<T>) {  // widen a block, add, round once (simd16: 8 at a time)
    float acc[kManyBlock];
    for (int64_t lo = 0; lo < n; lo += kManyBlock) {
      const int64_t m = std::min(kManyBlock, n - lo);
      simd16::widen(inout + lo, acc, m);
      simd16::widen_add(in + lo, acc, m);
      simd16::narrow(acc, inout + lo, m, 1.0f);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) inout[i] = inout[i] + in[i];
  }
}

// The one block kernel behind reduce_many, reduce_many_twice and sum_to_all: per block,
// acc = srcs[0] + ... + srcs[k-1] (in the accumulator type), times scale, written to each of the
// ndst destinations. A destination may be a source: each block is read fully before it is written.
template <typename T>
void sum_blocks(const T* const* srcs, int k, int64_t n, double scale, T* const* dsts, int ndst) {
  using Acc = typename Accumulator<T>::type;
  Acc acc[kManyBlock];
  const Acc factor = static_cast<Acc>(scale);
  for (int64_t lo = 0; lo < n; lo += kManyBlock) {
    const int64_t m = std::min(kManyBlock, n - lo);
    if constexpr (simd16::is_16bit_float<T>) {  // the conversions 8 at a time (simd16)
      simd16::widen(srcs[0] + lo, acc, m);
      for (int j = 1; j < k; ++j) simd16::widen_add(srcs[j] + lo, acc, m);
    } else {
      const T* s0 = srcs[0] + lo;
      for (int64_t i = 0; i < m; ++i) acc[i] = static_cast<Acc>(s0[i]);
      for (int j = 1; j < k; ++j) {
        const T* s = srcs[j] + lo;
        for (int64_t i = 0; i < m; ++i) acc[i] += static_cast<Acc>(s[i]);
      }
    }
    if (scale != 1.0) {
      for (int64_t i = 0; i < m; ++i) acc[i] *= factor;
    }
    for (int j = 0; j < ndst; ++j) {
      T* d = dsts[j] + lo;
      if constexpr (simd16::is_16bit_float<T>) {
        simd16::narrow(acc, d, m, 1.0f);
      } else {
        for (int64_t i = 0; i < m; ++i) d[i] = static_cast<T>(acc[i]);
      }
    }
  }
}

// Calls fn(T{}) with the C++ element type of a reducible dtype.
template <typename Fn>
void with_type(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: fn(float{}); return;
    case at::kDouble: fn(double{}); return;
    case at::kHalf: fn(c10::Half{}); return;
    case at::kBFloat16: fn(c10::BFloat16{}); return;
    case at::kInt: fn(int32_t{}); return;
    case at::kLong: fn(int64_t{}); return;
    default: TORCH_CHECK_TYPE(false, "twinhpc: cannot reduce dtype ", dtype_name(t));
  }
}

// The 2-byte MPI datatypes of float16 and bfloat16, and the operator summing either.
MPI_Datatype half_type = MPI_DATATYPE_NULL;
MPI_Datatype bfloat16_type = MPI_DATATYPE_NULL;
MPI_Op half_sum = MPI_OP_NULL;
std::once_flag half_once;

void half_sum_fn(void* in, void* inout, int* len, MPI_Datatype* type) {
  if (*type == half_type) {
    into_typed(static_cast<c10::Half*>(inout), static_cast<const c10::Half*>(in), *len);
  } else if (*type == bfloat16_type) {
    into_typed(static_cast<c10::BFloat16*>(inout), static_cast<const c10::BFloat16*>(in), *len);
  }
}

void create_half_types() {
  std::call_once(half_once, [] {
    MPI_Type_contiguous(2, MPI_BYTE, &half_type);
    MPI_Type_commit(&half_type);
    MPI_Type_contiguous(2, MPI_BYTE, &bfloat16_type);
    MPI_Type_commit(&bfloat16_type);
    MPI_Op_create(&half_sum_fn, /*commute=*/1, &half_sum);
  });
}

}  // namespace

void reduce_into(void* inout, const void* in, int64_t n, at::ScalarType t) {
  with_type(t, [&](auto zero) {
    using T = decltype(zero);
    into_typed(static_cast<T*>(inout), static_cast<const T*>(in), n);
  });
}

void reduce_many(void* dst, const void* const* srcs, int k, int64_t n, at::ScalarType t) {
  with_type(t, [&](auto zero) {
    using T = decltype(zero);
    T* dsts[1] = {static_cast<T*>(dst)};
    sum_blocks(reinterpret_cast<const T* const*>(srcs), k, n, 1.0, dsts, 1);
  });
}

void reduce_many_twice(void* dst_a, void* dst_b, const void* const* srcs, int k, int64_t n, at::ScalarType t) {
  with_type(t, [&](auto zero) {
    using T = decltype(zero);
    T* dsts[2] = {static_cast<T*>(dst_a), static_cast<T*>(dst_b)};
    sum_blocks(reinterpret_cast<const T* const*>(srcs), k, n, 1.0, dsts, 2);
  });
}

void sum_to_all(void* const* bufs, int k, int64_t n, at::ScalarType t, double scale) {
  with_type(t, [&](auto zero) {
    using T = decltype(zero);
    T* const* all = reinterpret_cast<T* const*>(bufs);
    sum_blocks(reinterpret_cast<const T* const*>(bufs), k, n, scale, all, k);
  });
}

MPI_Datatype mpi_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kInt: return MPI_INT32_T;
    case at::kLong: return MPI_INT64_T;
    case at::kHalf: create_half_types(); return half_type;
    case at::kBFloat16: create_half_types(); return bfloat16_type;
    default: TORCH_CHECK_TYPE(false, "twinhpc: no MPI datatype for dtype ", dtype_name(t));
  }
}

MPI_Op mpi_sum(at::ScalarType t) {
  if (t == at::kHalf || t == at::kBFloat16) {
    create_half_types();
    return half_sum;
  }
  return MPI_SUM;
}

}  // namespace twinhpc
