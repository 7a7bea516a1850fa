// Sum reductions of the all-reduce: element kernels, and the MPI datatype and operator of each
// supported dtype.
//
// float16 and bfloat16 are summed in float32 and rounded once per call, so reduce_many over k
// buffers rounds once however large k is. MPI has no 16-bit float types, so they travel as a
// 2-byte contiguous datatype with our own commutative MPI_Op (which widens the same way).
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>

#include <cstdint>
#include <string>

namespace twinhpc {

// Whether the engine can reduce this dtype (float32/64, float16, bfloat16, int32, int64).
bool reducible(at::ScalarType t);
bool is_floating(at::ScalarType t);
// The torch spelling of a dtype ("float32"), for error messages.
std::string dtype_name(at::ScalarType t);

// inout[i] += in[i] for i < n.
void reduce_into(void* inout, const void* in, int64_t n, at::ScalarType t);
// dst[i] = srcs[0][i] + ... + srcs[k-1][i] for i < n, k >= 1; dst may be one of the srcs.
// 16-bit floats accumulate in float32 over all k and round once.
void reduce_many(void* dst, const void* const* srcs, int k, int64_t n, at::ScalarType t);
// dst_a[i] = dst_b[i] = srcs[0][i] + ... + srcs[k-1][i]: reduce_many writing the sum to two places
// in one pass (dst_a may be one of the srcs; dst_b must not overlap them).
void reduce_many_twice(void* dst_a, void* dst_b, const void* const* srcs, int k, int64_t n, at::ScalarType t);
// bufs[j][i] = scale * (bufs[0][i] + ... + bufs[k-1][i]) for every j < k and i < n: the sum of
// k buffers, scaled, written back into all of them (one block at a time, so each element is read
// and written once). 16-bit floats accumulate and scale in float32 and round once; for integer
// dtypes scale must be 1.
void sum_to_all(void* const* bufs, int k, int64_t n, at::ScalarType t, double scale);

// The MPI datatype of one element of t, and the operator that sums it (MPI_SUM, or the
// widening operator for the 16-bit floats). Both are valid after MPI_Init, created on first use
// and never freed (they live as long as the process).
MPI_Datatype mpi_type(at::ScalarType t);
MPI_Op mpi_sum(at::ScalarType t);

}  // namespace twinhpc
