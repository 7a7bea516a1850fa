// Shared-memory all-reduce (see shm.h).
#include "shm.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "reduce.h"

namespace twinhpc {
namespace {

constexpr int64_t kCacheLine = 64;
// How long a rank polls the barrier counter before sleeping on the futex: long enough for ranks
// that arrive nearly together (a round of the slot algorithm takes tens of microseconds, and a
// futex wake-up costs about as much), short enough that a rank far behind -- still computing its
// backward pass -- is waited for asleep, taking no CPU from it.
constexpr int64_t kSpinNs = 50'000;
// The longest futex sleep; the counter is checked again after it (a lost wake-up costs this).
constexpr long kFutexTimeoutNs = 2'000'000;

// The counter, seen as an atomic: the same address in every process maps the same memory,
// and lock-free 8-byte atomics work across processes.
std::atomic<int64_t>& as_atomic(int64_t* p) { return *reinterpret_cast<std::atomic<int64_t>*>(p); }

// The futex word is in memory shared between processes: no FUTEX_PRIVATE_FLAG.
void futex_wait(int32_t* word, int32_t expected) {
  timespec timeout{0, kFutexTimeoutNs};
  syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, nullptr, 0);
}

void futex_wake_all(int32_t* word) { syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0); }

std::atomic<int32_t>& as_atomic32(int32_t* p) { return *reinterpret_cast<std::atomic<int32_t>*>(p); }

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
  const int64_t mine = 2 * shm->slot_bytes_ + (shm->rank_ == 0 ? 2 * kCacheLine : 0);
  char* base = nullptr;
  MPI_Win_allocate_shared(mine, 1, MPI_INFO_NULL, node, &base, &shm->win_);
  shm->node_ = node;  // kept for allocate()
  shm->slots_.resize(2 * node_size);
  for (int r = 0; r < node_size; ++r) {
    MPI_Aint bytes = 0;
    int unit = 1;
    char* ptr = nullptr;
    MPI_Win_shared_query(shm->win_, r, &bytes, &unit, &ptr);
    shm->slots_[2 * r] = ptr;
    shm->slots_[2 * r + 1] = ptr + shm->slot_bytes_;
    if (r == 0) {
      shm->counter_ = reinterpret_cast<int64_t*>(ptr + 2 * shm->slot_bytes_);
      shm->futex_ = reinterpret_cast<int32_t*>(ptr + 2 * shm->slot_bytes_ + kCacheLine);
    }
  }
  if (shm->rank_ == 0) {
    as_atomic(shm->counter_).store(0);
    as_atomic32(shm->futex_).store(0);
  }
  MPI_Barrier(comm);  // the counter is zero before anyone uses it
  return shm;
}

SharedMemory::~SharedMemory() {
  // Which regions some rank still uses (held here once; more holders or views mean in use).
  std::vector<int> used(regions_.size()), used_anywhere(regions_.size());
  for (size_t i = 0; i < regions_.size(); ++i) {
    const at::Tensor& t = regions_[i].tensor;
    used[i] = t.use_count() > 1 || t.storage().use_count() > 1;
  }
  if (!regions_.empty()) {
    MPI_Allreduce(used.data(), used_anywhere.data(), static_cast<int>(used.size()), MPI_INT, MPI_LOR, node_);
  }
  for (size_t i = 0; i < regions_.size(); ++i) {
    regions_[i].tensor = at::Tensor();
    if (!used_anywhere[i]) MPI_Win_free(&regions_[i].win);  // else: mapped until the process ends
  }
  if (win_ != MPI_WIN_NULL) MPI_Win_free(&win_);
  if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
}

at::Tensor SharedMemory::allocate(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "twinhpc: cannot allocate ", bytes, " bytes of shared memory");
  Region region;
  region.bytes = bytes;
  const int64_t padded = std::max<int64_t>(kCacheLine, (bytes + kCacheLine - 1) / kCacheLine * kCacheLine);
  MPI_Info info;
  MPI_Info_create(&info);
  MPI_Info_set(info, "alloc_shared_noncontig", "true");  // each rank's part on its own pages
  char* base = nullptr;
  const int code = MPI_Win_allocate_shared(padded, 1, info, node_, &base, &region.win);
  MPI_Info_free(&info);
  TORCH_CHECK(code == MPI_SUCCESS, "twinhpc: MPI_Win_allocate_shared of ", padded, " bytes failed");
  region.bases.resize(size_);
  for (int r = 0; r < size_; ++r) {
    MPI_Aint got = 0;
    int unit = 1;
    MPI_Win_shared_query(region.win, r, &got, &unit, &region.bases[r]);
  }
  std::memset(base, 0, padded);
  region.tensor = at::from_blob(base, {bytes}, [](void*) {}, at::TensorOptions().dtype(at::kByte));
  std::lock_guard<std::mutex> lock(mu_);
  regions_.push_back(region);
  return region.tensor;
}

bool SharedMemory::locate(const void* p, int64_t bytes, int64_t* region, int64_t* offset) const {
  const char* c = static_cast<const char*>(p);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < regions_.size(); ++i) {
    const char* base = regions_[i].bases[rank_];
    if (c >= base && c + bytes <= base + regions_[i].bytes) {
      *region = static_cast<int64_t>(i);
      *offset = c - base;
      return true;
    }
  }
  return false;
}

void SharedMemory::allreduce_direct(int64_t region, int64_t offset, int64_t n, at::ScalarType t, double scale) {
  if (n == 0) return;
  Region r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(region >= 0 && region < static_cast<int64_t>(regions_.size()), "twinhpc: no shared region ", region);
    r = regions_[static_cast<size_t>(region)];
  }
  const int64_t es = static_cast<int64_t>(c10::elementSize(t));
  TORCH_CHECK(offset >= 0 && offset + n * es <= r.bytes, "twinhpc: shared region access out of bounds");
  if (size_ > 1) barrier();  // every rank's buffer holds its contribution
  // This rank's part, in whole cache lines where possible, so that ranks never write the same line.
  const int64_t per_line = std::max<int64_t>(1, kCacheLine / es);
  const int64_t lines = (n + per_line - 1) / per_line;
  const int64_t lo = std::min(n, lines * rank_ / size_ * per_line);
  const int64_t hi = std::min(n, lines * (rank_ + 1) / size_ * per_line);
  if (hi > lo) {
    std::vector<void*> bufs(size_);
    for (int q = 0; q < size_; ++q) bufs[q] = r.bases[q] + offset + lo * es;
    sum_to_all(bufs.data(), size_, hi - lo, t, scale);
  }
  if (size_ > 1) barrier();  // every part is summed everywhere
}

void SharedMemory::barrier() {
  const int64_t target = ++barriers_ * size_;
  std::atomic<int64_t>& counter = as_atomic(counter_);
  std::atomic<int32_t>& generation = as_atomic32(futex_);
  if (counter.fetch_add(1, std::memory_order_acq_rel) + 1 == target) {
    generation.fetch_add(1, std::memory_order_acq_rel);  // the last to arrive wakes the sleepers
    futex_wake_all(futex_);
    return;
  }
  const auto spin_until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(kSpinNs);
  for (int spins = 1;; ++spins) {
    if (counter.load(std::memory_order_acquire) >= target) return;
    if (spins % 64 == 0 && std::chrono::steady_clock::now() >= spin_until) break;
  }
  for (;;) {
    // Read the generation before the counter: if the last rank arrives in between, it bumps
    // the generation after the counter, and FUTEX_WAIT returns at once.
    const int32_t seen = generation.load(std::memory_order_acquire);
    if (counter.load(std::memory_order_acquire) >= target) return;
    futex_wait(futex_, seen);
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
    // The sum, into this rank's buffer and (published for the others) its slot, in one pass.
    reduce_many_twice(round + mine_lo * es, slots_[2 * rank_ + j] + mine_lo * es, srcs.data(), size_, mine_n, t);
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
