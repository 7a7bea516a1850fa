// The gradient all-reduce engine: a FIFO of collectives run in order by one background thread.
//
// Python enqueues all-reduces (of one tensor, or several fused into one buffer), broadcasts and
// barriers; every rank enqueues the same operations in the same order. The thread runs each
// one on the engine's own duplicate of the caller's communicator:
//
//   1. reports its arrival to the stall inspector (stall.h);
//   2. agrees on the operation with the other ranks: one MPI_Allgather of a small signature
//      (kind, element count, dtypes, reduction, algorithm, root, and any local argument error),
//      so different sizes or dtypes across ranks, or a bad argument on one rank, become the
//      same clear error on every rank instead of a hang or a corrupted buffer;
//   3. packs the tensors into the fusion buffer, cast to the wire dtype (skipped for one tensor
//      already in the wire dtype: it is reduced in place; and one that lies in a shared region
//      from shared_buffer(), at the same offset on every rank, is summed where it is, in
//      every rank's memory at once, with nothing copied: shm.h);
//   4. sums the buffer with the operation's algorithm (MPI_Allreduce, ring, shared memory);
//   5. unpacks, cast back and scaled by 1/size for an average.
//
// A Work records the outcome (an error message, never an exception escaping the thread) and
// the monotonic time of each phase. Waiting releases the GIL (bindings in register.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <mpi.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ring.h"
#include "shm.h"
#include "stall.h"

namespace twinhpc {

// The names of the all-reduce algorithms (how a buffer is summed across ranks), from the one
// table in engine.cpp. An algorithm's code -- in Work, the signature exchange, set_table() and
// Python's calls -- is its position in this list; "mpi" (code 0) is MPI_Allreduce.
std::vector<std::string> allreduce_algorithms();

enum class OpKind : int { kAllreduce = 0, kBroadcast = 1, kBarrier = 2 };

// The Python exception a failed operation raises.
enum class ErrorKind : int { kNone = 0, kType = 1, kValue = 2, kRuntime = 3 };

// Monotonic microseconds (CLOCK_MONOTONIC, as Python's time.monotonic()) of each phase; 0 if
// the phase did not happen.
struct Timings {
  int64_t enqueue = 0;      // the call returned the handle
  int64_t start = 0;        // the background thread took the operation
  int64_t pack_done = 0;    // ranks agreed and the fusion buffer is filled
  int64_t reduce_done = 0;  // the sum (or broadcast) over the ranks finished
  int64_t unpack_done = 0;  // results are in the tensors; the operation is complete
};

// One queued operation and, once done, its outcome.
struct Work {
  int64_t index = 0;                   // position in the engine's queue, equal on every rank
  OpKind kind = OpKind::kAllreduce;    // what to do
  std::string name;                    // the caller's label (stall and error messages)
  std::vector<at::Tensor> tensors;     // reduced (or broadcast) in place, in this order
  bool average = false;                // divide the sum by the number of ranks
  at::ScalarType dtype = at::kFloat;   // the tensors' dtype
  at::ScalarType wire = at::kFloat;    // the dtype summed across ranks
  int64_t numel = 0;                   // elements of all tensors together
  int algorithm = 0;                   // how the sum is computed (a code of allreduce_algorithms())
  int root = 0;                        // broadcast: the rank whose tensor is sent
  int64_t region = -1;                 // the shared region holding the tensor (-1: none)
  int64_t region_offset = 0;           // its byte offset there
  bool direct = false;                 // every rank's tensor is at the same place of a shared
                                       // region: summed there, nothing copied (set by agree)
  std::string invalid;                 // this rank's argument error ("" when valid)
  ErrorKind invalid_kind = ErrorKind::kNone;  // the exception type of `invalid`
  std::optional<c10::Event> ready;     // device tensors: recorded on the caller's stream

  std::mutex mu;                       // guards the fields below
  std::condition_variable cv;          // notified when done becomes true
  bool done = false;                   // the operation finished (successfully or not)
  std::string error;                   // why it failed ("" on success)
  ErrorKind error_kind = ErrorKind::kNone;  // the exception type of `error`
  Timings timings;                     // phase times (written by the thread before `done`)

  // Blocks until done; returns the error ("" on success). Call without the GIL.
  std::pair<ErrorKind, std::string> wait();
  bool is_done();
};

class Engine {
 public:
  // Collective over comm (every rank constructs its engine together): dups comm twice (one
  // for the operations, one for the stall inspector), creates the shared-memory window when
  // all ranks share a node, and starts the thread. stall_timeout_s <= 0 disables the
  // inspector. Throws c10::ValueError for MPI_COMM_NULL, c10::Error if MPI is not initialised
  // with MPI_THREAD_MULTIPLE.
  // use_cuda_aware: hand device pointers to MPI when it reports CUDA support (false: always stage
  // through pinned host memory)
  Engine(MPI_Comm comm, double stall_timeout_s, int64_t segment_bytes, bool use_cuda_aware = true);
  // Of an engine that was closed: nothing left to do. Of one that never was: abandon().
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Submit an in-place all-reduce of the tensors (fused when several). wire: the dtype on the
  // wire (default the tensors'); algorithm: forced (default: from the table by bytes).
  // Argument errors do not throw here: every rank learns of them when the operation runs.
  // blocking: return only when done (see submit); call without the GIL then.
  std::shared_ptr<Work> allreduce(std::vector<at::Tensor> tensors, bool average,
                                  std::optional<at::ScalarType> wire, std::string name,
                                  std::optional<int> algorithm, bool blocking);
  std::shared_ptr<Work> broadcast(at::Tensor tensor, int root, std::string name, bool blocking);
  std::shared_ptr<Work> barrier(std::string name, bool blocking);

  // A uint8 CPU tensor of `bytes` bytes in shared memory (collective; same sizes in the same
  // order on every rank). An all-reduce of a tensor inside it, at the same offset on every
  // rank, sums it in place with nothing copied (shm.h); without shared memory (ranks on
  // several nodes) an ordinary tensor. Valid until close().
  at::Tensor shared_buffer(int64_t bytes);

  // The algorithm per message size: (max_bytes, algorithm) pairs in increasing max_bytes; an
  // all-reduce of b wire bytes uses the first pair with b <= max_bytes (the last if none).
  // Must be the same on every rank; applies to operations enqueued afterwards.
  void set_table(std::vector<std::pair<int64_t, int>> table);
  std::vector<std::pair<int64_t, int>> table() const;
  // Whether an algorithm can run on this communicator (kShm: all ranks on one node; the MPI
  // variants: Open MPI with dynamic rules enabled).
  bool has_algorithm(int algorithm) const;

  // Runs what is queued, stops the thread, frees the communicators and the shared memory.
  // Collective (every rank closes its engine); idempotent. Call without the GIL.
  void close();
  // For an engine that is not closed and never will be (garbage collection, the destructor):
  // releases what this process alone holds, never calling a collective, since the ranks may
  // get here in different orders or not at all. Operations still queued fail without running;
  // the one running finishes first; the thread and rank 0's stall inspector stop; the
  // communicators and shared-memory windows stay allocated (tensors from shared_buffer() stay
  // valid) until MPI_Finalize. Afterwards the engine refuses work and close() does nothing.
  // Idempotent; does nothing after close(). Call without the GIL.
  void abandon();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool cuda_aware() const { return cuda_aware_; }

 private:
  // Gives the operation its index and queues it for the thread. A blocking submit with nothing
  // queued or running runs it on the calling thread instead (saving two thread hand-offs,
  // ~10-20 us per call); otherwise it queues it and waits. Either way the order is FIFO.
  std::shared_ptr<Work> submit(std::shared_ptr<Work> work, bool blocking);
  void execute(Work& w);          // run one operation and record its outcome in w
  void loop();                    // the thread: run queued operations in order
  void run(Work& w);              // one operation; throws on failure
  void agree(Work& w);            // the signature exchange (step 2)
  void run_allreduce(Work& w);    // steps 3-5
  void sum(void* buf, int64_t n, at::ScalarType t, int algorithm);  // step 4 on a host buffer
  void check_mpi(int code, const char* what);
  void stop_thread();  // wake the thread, join it, wait for a blocking caller's operation

  MPI_Comm comm_ = MPI_COMM_NULL;        // the operations' duplicate of the caller's communicator
  MPI_Comm stall_comm_ = MPI_COMM_NULL;  // the stall inspector's duplicate
  // variants_[a]: for an algorithm a that forces one of Open MPI's, a duplicate of comm_ created
  // with it forced (NULL for the others, and where unavailable)
  std::vector<MPI_Comm> variants_;
  int rank_ = 0;                         // this process's rank in comm_
  int size_ = 1;                         // ranks in comm_
  std::unique_ptr<StallInspector> stall_;  // null after close()
  std::unique_ptr<SharedMemory> shm_;      // null when the ranks span several nodes
  Ring ring_;                            // the ring algorithm's state (its scratch buffer)
  at::Tensor fusion_;                    // host bytes the tensors are packed into (grows)
  at::Tensor device_fusion_;             // the same on the device, for device tensors
  at::Tensor staging_;                   // pinned host copy of device_fusion_ (non-CUDA-aware MPI)
  bool cuda_aware_ = false;              // MPI accepts device pointers (MPIX_Query_cuda_support)

  mutable std::mutex mu_;                // guards the fields below
  std::condition_variable cv_;           // notified on enqueue and close
  std::deque<std::shared_ptr<Work>> queue_;  // operations not yet taken by the thread
  std::vector<std::pair<int64_t, int>> table_;  // algorithm per size (set_table)
  int64_t next_index_ = 0;               // index of the next enqueued operation
  bool closing_ = false;                 // close() or abandon() was called: no more operations
  bool busy_ = false;                    // an operation is running (on the thread or a caller)
  std::thread thread_;                   // runs loop()
};

// Monotonic clock in microseconds.
int64_t monotonic_us();

}  // namespace twinhpc
