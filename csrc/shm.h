// All-reduce through MPI-3 shared-memory windows, for communicators within one node.
//
// Two ways to sum a buffer across the ranks of a node:
//
// * Any buffer (allreduce): every rank owns two slots of `slot_bytes` in a window that all ranks
//   map (MPI_Win_allocate_shared). The buffer is processed in rounds of one slot: each rank
//   copies the parts of its round that others will sum into its slot; after a barrier rank r
//   sums part r of every slot (reading its own part straight from its buffer) and publishes the
//   sum in its slot; after a second barrier each rank copies the other parts' sums out. Rounds
//   alternate between the two slots, so a rank may fill the next round's slot while slower
//   ranks still read the previous one; two barriers per round suffice.
//
// * A buffer that already lives in shared memory (allreduce_direct): allocate() gives every rank
//   a tensor inside a window of its own (a "region"; collective, same order on every rank).
//   When the ranks reduce the same bytes of the same region, nothing is copied in or out: after
//   a barrier rank r sums part r of every rank's buffer, scales it (an average) and writes the
//   result into every rank's buffer; a second barrier ends it. Each byte is read once and
//   written once per rank, the traffic of one memcpy -- the floor for an all-reduce. The
//   data-parallel front end keeps its gradient buckets there (gradients as bucket views).
//
// The barrier is an arrival counter in the window plus a 32-bit futex word: a rank spins briefly,
// then sleeps in FUTEX_WAIT until the last rank to arrive wakes it. A sleeping waiter takes no CPU
// from the ranks still computing (on a node with as many ranks as cores, spinning would).
//
// Note:
//     The slot path reads and writes about 2x the buffer (copy in (n-1)/n, sum, copy out
//     (n-1)/n), and a round's slots fit in the last-level cache, so little of it reaches memory;
//     MPI's point-to-point path copies every byte twice (into and out of its own shared FIFO).
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace twinhpc {

class SharedMemory {
 public:
  // Collective over comm. Returns nullptr when comm spans more than one node (the window
  // needs every rank's memory mapped in every process).
  static std::unique_ptr<SharedMemory> create(MPI_Comm comm, int64_t slot_bytes);
  // Frees the windows: collective, run when every rank closes its engine (an engine destroyed
  // unclosed leaves this object alive instead: Engine::abandon). A region whose tensor (or a
  // view of it) is still referenced on some rank is not freed but left mapped until the process
  // ends, so that a tensor kept past Engine.close() never points at unmapped memory.
  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  // In-place sum of n elements of dtype t at buf across the ranks (all ranks call it alike).
  void allreduce(void* buf, int64_t n, at::ScalarType t);

  // A new region of `bytes` bytes per rank, as a uint8 CPU tensor over this rank's part
  // (64-byte aligned, zero-filled). Collective over the node; every rank allocates the same
  // sizes in the same order. The memory lives until this object is destroyed (engine close), or
  // to the end of the process if the tensor is still in use then.
  at::Tensor allocate(int64_t bytes);
  // Whether [p, p + bytes) lies inside one of this rank's regions; then its index and the
  // byte offset of p in it.
  bool locate(const void* p, int64_t bytes, int64_t* region, int64_t* offset) const;
  // In-place sum, times scale, of n elements of dtype t at `offset` bytes into region
  // `region` of every rank (all ranks call it with the same arguments).
  void allreduce_direct(int64_t region, int64_t offset, int64_t n, at::ScalarType t, double scale);

 private:
  SharedMemory() = default;
  void barrier();  // all ranks of the window

  struct Region {
    MPI_Win win = MPI_WIN_NULL;   // its window
    at::Tensor tensor;            // the tensor allocate() returned (to see whether it is still used)
    int64_t bytes = 0;            // bytes per rank
    std::vector<char*> bases;     // bases[r]: rank r's part, mapped here
  };

  MPI_Comm node_ = MPI_COMM_NULL;  // the ranks of the node (dup, for window creation)
  MPI_Win win_ = MPI_WIN_NULL;     // the slots' window (slots of every rank, plus the barrier)
  int rank_ = 0;                   // this rank in the window's communicator
  int size_ = 1;                   // ranks sharing the window
  int64_t slot_bytes_ = 0;         // bytes of one slot (a round's worth of the buffer)
  std::vector<char*> slots_;       // slots_[2*r + j]: rank r's slot j, mapped here
  int64_t* counter_ = nullptr;     // barrier arrivals so far, in rank 0's part of the window
  int32_t* futex_ = nullptr;       // barrier generation (futex word), next to the counter
  int64_t barriers_ = 0;           // barriers this rank has entered
  int64_t rounds_ = 0;             // rounds done (selects the slot of the next round)
  mutable std::mutex mu_;          // guards regions_ (allocate() runs on a caller's thread)
  std::vector<Region> regions_;    // allocate()'s windows, in creation order
};

}  // namespace twinhpc
