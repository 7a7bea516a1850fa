// The stall inspector: names the ranks that have not arrived at a collective and aborts the job.
//
// Every rank reports each operation it starts (its queue index, equal on every rank) to rank 0
// with one small non-blocking message on a communicator of its own. A thread on rank 0 polls
// those messages and knows, for every rank, the last operation it arrived at. When some rank
// has arrived at operation k and another has not arrived there `timeout` seconds later, it
// prints which ranks are missing and calls MPI_Abort, so the job ends with a non-zero status
// instead of hanging. Other ranks only send; rank 0 is the coordinator (as in Horovod).
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace twinhpc {

// The message a rank sends when it arrives at an operation.
struct Arrival {
  int64_t index;   // queue index of the operation (0, 1, ...), the same on every rank
  char name[56];   // the operation's name, truncated, NUL-terminated
};

class StallInspector {
 public:
  // comm: a communicator used by the inspector alone (the caller dup'ed it and frees it after
  // this object is destroyed). timeout_s <= 0 disables the inspector (arrived() does nothing).
  StallInspector(MPI_Comm comm, double timeout_s);
  ~StallInspector();  // stops the polling thread and completes or cancels pending messages
  StallInspector(const StallInspector&) = delete;
  StallInspector& operator=(const StallInspector&) = delete;

  // Called by the engine's thread when it starts operation `index` (in increasing order).
  void arrived(int64_t index, const char* name);

 private:
  using Clock = std::chrono::steady_clock;
  // Rank 0's view of one operation that not every rank has reached yet.
  struct Pending {
    Clock::time_point first;  // when the first rank arrived at it
    std::string name;         // its name, as the first arriving rank reported it
  };

  void record(int rank, const Arrival& a);  // rank 0: note an arrival (mutex held)
  void poll_loop();                          // rank 0's thread: receive arrivals, check for stalls
  void check(Clock::time_point now);         // rank 0: abort if an operation waits too long

  MPI_Comm comm_;                 // the inspector's own communicator
  int rank_ = 0;                  // this process's rank in comm_
  int size_ = 1;                  // ranks in comm_
  double timeout_s_;              // seconds an operation may wait for missing ranks; <= 0: off
  bool enabled_;                  // timeout_s_ > 0 and more than one rank

  // rank 0 only
  std::mutex mu_;                          // guards last_ and pending_ (own arrivals vs thread)
  std::vector<int64_t> last_;              // last operation index each rank arrived at (-1: none)
  std::map<int64_t, Pending> pending_;     // operations some but not all ranks have reached
  std::vector<Arrival> recv_buf_;          // one receive buffer per rank (index = source rank)
  std::vector<MPI_Request> recv_req_;      // the receive posted for each rank (NULL for rank 0)
  std::atomic<bool> stop_{false};          // tells the polling thread to finish
  std::thread thread_;                     // the polling thread

  // other ranks
  static constexpr int kSendSlots = 16;    // arrivals that may be in flight at once
  Arrival send_buf_[kSendSlots];           // their buffers, reused round-robin
  MPI_Request send_req_[kSendSlots];       // their requests (MPI_REQUEST_NULL when free)
  int64_t sent_ = 0;                       // arrivals sent so far
};

}  // namespace twinhpc
