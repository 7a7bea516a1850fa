// All-reduce through an MPI-3 shared-memory window, for communicators within one node.
//
// Every rank owns two slots of `slot_bytes` in a window that all ranks map
// (MPI_Win_allocate_shared). The buffer is processed in rounds of one slot: each rank copies
// the parts of its round that others will sum into its slot; after a barrier rank r sums part r
// of every slot (reading its own part straight from its buffer) and publishes the sum in its
// slot; after a second barrier each rank copies the other parts' sums out. Rounds alternate
// between the two slots, so a rank may fill the next round's slot while slower ranks still read
// the previous one; two barriers per round suffice. The barrier is a counter in the window,
// polled with a spin-then-yield loop.
//
// Note:
//     Each rank reads and writes about 2x the buffer (copy in (n-1)/n, sum, copy out (n-1)/n),
//     and a round's slots fit in the last-level cache, so little of it reaches memory; MPI's
//     point-to-point path copies every byte twice (into and out of its own shared FIFO).
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace twinhpc {

class SharedMemory {
 public:
  // Collective over comm. Returns nullptr when comm spans more than one node (the window
  // needs every rank's memory mapped in every process).
  static std::unique_ptr<SharedMemory> create(MPI_Comm comm, int64_t slot_bytes);
  ~SharedMemory();  // frees the window (collective: every rank destroys its engine)
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  // In-place sum of n elements of dtype t at buf across the ranks (all ranks call it alike).
  void allreduce(void* buf, int64_t n, at::ScalarType t);

 private:
  SharedMemory() = default;
  void barrier();  // all ranks of the window

  MPI_Win win_ = MPI_WIN_NULL;     // the shared window (slots of every rank, plus the counter)
  int rank_ = 0;                   // this rank in the window's communicator
  int size_ = 1;                   // ranks sharing the window
  int64_t slot_bytes_ = 0;         // bytes of one slot (a round's worth of the buffer)
  std::vector<char*> slots_;       // slots_[2*r + j]: rank r's slot j, mapped here
  int64_t* counter_ = nullptr;     // barrier arrivals so far, in rank 0's part of the window
  int64_t barriers_ = 0;           // barriers this rank has entered
  int64_t rounds_ = 0;             // rounds done (selects the slot of the next round)
};

}  // namespace twinhpc
