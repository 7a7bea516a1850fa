// Ring all-reduce (see ring.h).
#include "ring.h"

#include <algorithm>

#include "reduce.h"

namespace twinhpc {
namespace {

constexpr int kTag = 11;  // tag of ring messages on the engine's communicator

}  // namespace

int Ring::allreduce(MPI_Comm comm, void* buf, int64_t n, at::ScalarType t) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (size == 1 || n == 0) return MPI_SUCCESS;
  const int64_t es = static_cast<int64_t>(c10::elementSize(t));
  const int64_t seg = std::max<int64_t>(1, segment_bytes_ / es);  // elements per message
  auto block_lo = [&](int b) { return n * b / size; };
  const int64_t max_block = (n + size - 1) / size;
  if (static_cast<int64_t>(scratch_.size()) < max_block * es) scratch_.resize(max_block * es);
  char* base = static_cast<char*>(buf);
  const int right = (rank + 1) % size, left = (rank + size - 1) % size;

  std::vector<MPI_Request> recvs, sends;
  // One step: send block `sb` right, receive block `rb` from the left into `into` (the
  // scratch when reducing, else the block itself), summing each segment as it lands.
  auto step = [&](int sb, int rb, bool reduce) -> int {
    const int64_t s_lo = block_lo(sb), s_n = block_lo(sb + 1) - s_lo;
    const int64_t r_lo = block_lo(rb), r_n = block_lo(rb + 1) - r_lo;
    char* into = reduce ? scratch_.data() : base + r_lo * es;
    recvs.assign((r_n + seg - 1) / seg, MPI_REQUEST_NULL);
    sends.assign((s_n + seg - 1) / seg, MPI_REQUEST_NULL);
    const MPI_Datatype type = mpi_type(t);
    for (size_t i = 0; i < recvs.size(); ++i) {
      const int64_t lo = i * seg, m = std::min(seg, r_n - lo);
      if (int e = MPI_Irecv(into + lo * es, static_cast<int>(m), type, left, kTag, comm, &recvs[i])) return e;
    }
    for (size_t i = 0; i < sends.size(); ++i) {
      const int64_t lo = i * seg, m = std::min(seg, s_n - lo);
      if (int e = MPI_Isend(base + (s_lo + lo) * es, static_cast<int>(m), type, right, kTag, comm, &sends[i])) return e;
    }
    for (size_t i = 0; i < recvs.size(); ++i) {
      if (int e = MPI_Wait(&recvs[i], MPI_STATUS_IGNORE)) return e;
      if (reduce) {
        const int64_t lo = i * seg, m = std::min(seg, r_n - lo);
        reduce_into(base + (r_lo + lo) * es, into + lo * es, m, t);
      }
    }
    return MPI_Waitall(static_cast<int>(sends.size()), sends.data(), MPI_STATUSES_IGNORE);
  };
  // Reduce-scatter: at step s send block rank-s, receive and sum block rank-s-1; rank r ends
  // owning the full sum of block r+1. All-gather: pass the owned blocks around the ring.
  for (int s = 0; s < size - 1; ++s) {
    if (int e = step((rank - s + size) % size, (rank - s - 1 + 2 * size) % size, true)) return e;
  }
  for (int s = 0; s < size - 1; ++s) {
    if (int e = step((rank + 1 - s + size) % size, (rank - s + size) % size, false)) return e;
  }
  return MPI_SUCCESS;
}

}  // namespace twinhpc
