// Ring all-reduce over MPI point-to-point: reduce-scatter, then all-gather, each in n-1 steps.
//
// The buffer is cut into n blocks; at step s every rank sends one block to its right neighbour
// and receives one from its left, in segments, so that summing segment i overlaps the transfer
// of the segments after it. Each rank ends the reduce-scatter owning one fully summed block,
// which the all-gather passes around. Every rank moves 2(n-1)/n of the buffer, the minimum.
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>

#include <cstdint>
#include <vector>

namespace twinhpc {

class Ring {
 public:
  // segment_bytes: the size of the pieces each step is cut into (at least one element).
  explicit Ring(int64_t segment_bytes) : segment_bytes_(segment_bytes) {}

  // In-place sum of n elements of dtype t at buf across comm (all ranks call it alike).
  // Returns the first MPI error code, MPI_SUCCESS otherwise.
  int allreduce(MPI_Comm comm, void* buf, int64_t n, at::ScalarType t);

 private:
  int64_t segment_bytes_;     // bytes per point-to-point message
  std::vector<char> scratch_;  // receives the incoming block of a reduce-scatter step
};

}  // namespace twinhpc
