// Shared-memory all-reduce (see shm.h).
#include "shm.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "reduce.h"

namespace twinhpc {
namespace {

constexpr int64_t kCacheLine = 64;
constexpr int kSpinsBeforeYield = 4000;     // polls of the barrier counter before sched_yield
constexpr int kSpinsBeforeSleep = 100000;  // polls before sleeping between them (a rank far behind)
constexpr int kSleepMicroseconds = 50;     // the sleep between polls then

// The counter, seen as an atomic: the same address in every process maps the same memory,
// and lock-free 8-byte atomics work across processes.
std::atomic<int64_t>& as_atomic(int64_t* p) { return *reinterpret_cast<std::atomic<int64_t>*>(p); }

}  // namespace

std::unique_ptr<SharedMemory> SharedMemory::create(MPI_Comm comm, int64_t slot_bytes) {
  static_assert(std::atomic<int64_t>::is_always_lock_free);
  int size = 1;
  MPI_Comm_size(comm, &size);
  MPI_Comm node;
  MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int node_size = 1, all_local = 0;
  MPI_Comm_size(node, &node_size);
  const int local = node_size == size;
  MPI_Allreduce(&local, &all_local, 1, MPI_INT, MPI_LAND, comm);
  if (!all_local) {
    MPI_Comm_free(&node);
    return nullptr;
  }
  std::unique_ptr<SharedMemory> shm(new SharedMemory());
  MPI_Comm_rank(node, &shm->rank_);
  shm->size_ = node_size;
  shm->slot_bytes_ = (slot_bytes + kCacheLine - 1) / kCacheLine * kCacheLine;
  const int64_t mine = 2 * shm->slot_bytes_ + (shm->rank_ == 0 ? kCacheLine : 0);
  char* base = nullptr;
  MPI_Win_allocate_shared(mine, 1, MPI_INFO_NULL, node, &base, &shm->win_);
  MPI_Comm_free(&node);  // the window keeps its own reference
  shm->slots_.resize(2 * node_size);
  for (int r = 0; r < node_size; ++r) {
    MPI_Aint bytes = 0;
    int unit = 1;
    char* ptr = nullptr;
    MPI_Win_shared_query(shm->win_, r, &bytes, &unit, &ptr);
    shm->slots_[2 * r] = ptr;
    shm->slots_[2 * r + 1] = ptr + shm->slot_bytes_;
    if (r == 0) shm->counter_ = reinterpret_cast<int64_t*>(ptr + 2 * shm->slot_bytes_);
  }
  if (shm->rank_ == 0) as_atomic(shm->counter_).store(0);
  MPI_Barrier(comm);  // the counter is zero before anyone uses it
  return shm;
}

SharedMemory::~SharedMemory() {
  if (win_ != MPI_WIN_NULL) MPI_Win_free(&win_);
}

void SharedMemory::barrier() {
  const int64_t target = ++barriers_ * size_;
  std::atomic<int64_t>& counter = as_atomic(counter_);
  counter.fetch_add(1, std::memory_order_acq_rel);
  for (int spins = 0; counter.load(std::memory_order_acquire) < target; ++spins) {
    if (spins >= kSpinsBeforeSleep) {
      usleep(kSleepMicroseconds);
    } else if (spins >= kSpinsBeforeYield) {
      sched_yield();
    }
  }
}

void SharedMemory::allreduce(void* buf, int64_t n, at::ScalarType t) {
  if (size_ == 1 || n == 0) return;
  const int64_t es = static_cast<int64_t>(c10::elementSize(t));
  const int64_t per_round = slot_bytes_ / es;
  char* base = static_cast<char*>(buf);
  std::vector<const void*> srcs(size_);
  for (int64_t lo = 0; lo < n; lo += per_round) {
    const int64_t m = std::min(per_round, n - lo);
    const int j = static_cast<int>(rounds_++ % 2);
    auto part_lo = [&](int q) { return m * q / size_; };  // element offset of part q in the round
    char* round = base + lo * es;
    for (int q = 0; q < size_; ++q) {
      if (q != rank_) {
        std::memcpy(slots_[2 * rank_ + j] + part_lo(q) * es, round + part_lo(q) * es,
                    (part_lo(q + 1) - part_lo(q)) * es);
      }
    }
    barrier();
    const int64_t mine_lo = part_lo(rank_), mine_n = part_lo(rank_ + 1) - mine_lo;
    for (int q = 0; q < size_; ++q) {
      srcs[q] = q == rank_ ? round + mine_lo * es : slots_[2 * q + j] + mine_lo * es;
    }
    reduce_many(round + mine_lo * es, srcs.data(), size_, mine_n, t);
    std::memcpy(slots_[2 * rank_ + j] + mine_lo * es, round + mine_lo * es, mine_n * es);
    barrier();
    for (int q = 0; q < size_; ++q) {
      if (q != rank_) {
        std::memcpy(round + part_lo(q) * es, slots_[2 * q + j] + part_lo(q) * es,
                    (part_lo(q + 1) - part_lo(q)) * es);
      }
    }
  }
}

}  // namespace twinhpc
