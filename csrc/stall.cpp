// The stall inspector (see stall.h).
#include "stall.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace twinhpc {
namespace {

constexpr int kTag = 7;                                       // tag of arrival messages
constexpr auto kPollInterval = std::chrono::milliseconds(20);  // rank 0's polling period

}  // namespace

StallInspector::StallInspector(MPI_Comm comm, double timeout_s) : comm_(comm), timeout_s_(timeout_s) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  enabled_ = timeout_s_ > 0 && size_ > 1;
  std::fill(std::begin(send_req_), std::end(send_req_), MPI_REQUEST_NULL);
  if (!enabled_ || rank_ != 0) return;
  last_.assign(size_, -1);
  recv_buf_.resize(size_);
  recv_req_.assign(size_, MPI_REQUEST_NULL);
  for (int r = 1; r < size_; ++r) {
    MPI_Irecv(&recv_buf_[r], sizeof(Arrival), MPI_BYTE, r, kTag, comm_, &recv_req_[r]);
  }
  thread_ = std::thread([this] { poll_loop(); });
}

StallInspector::~StallInspector() {
  if (!enabled_) return;
  if (rank_ == 0) {
    stop_ = true;
    thread_.join();
    for (MPI_Request& req : recv_req_) {
      if (req == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&req);
      MPI_Wait(&req, MPI_STATUS_IGNORE);
    }
  } else {
    // Small messages are sent eagerly, so these complete without rank 0's help.
    MPI_Waitall(kSendSlots, send_req_, MPI_STATUSES_IGNORE);
  }
}

void StallInspector::arrived(int64_t index, const char* name) {
  if (!enabled_) return;
  Arrival a{index, {}};
  std::strncpy(a.name, name, sizeof(a.name) - 1);
  if (rank_ == 0) {
    std::lock_guard<std::mutex> lock(mu_);
    record(0, a);
    return;
  }
  const int slot = static_cast<int>(sent_++ % kSendSlots);
  MPI_Wait(&send_req_[slot], MPI_STATUS_IGNORE);  // the slot's previous message
  send_buf_[slot] = a;
  MPI_Isend(&send_buf_[slot], sizeof(Arrival), MPI_BYTE, 0, kTag, comm_, &send_req_[slot]);
}

void StallInspector::record(int rank, const Arrival& a) {
  last_[rank] = a.index;
  const int64_t behind = *std::min_element(last_.begin(), last_.end());
  if (a.index > behind) pending_.try_emplace(a.index, Pending{Clock::now(), a.name});
  pending_.erase(pending_.begin(), pending_.upper_bound(behind));  // reached by every rank
}

void StallInspector::poll_loop() {
  std::vector<int> done(size_);
  std::vector<MPI_Status> statuses(size_);
  while (!stop_) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Drain everything that arrived since the last poll: ranks may start thousands of
      // operations per second, and a view that lags behind would report false stalls.
      for (int count = 1; count > 0;) {
        MPI_Testsome(size_, recv_req_.data(), &count, done.data(), statuses.data());
        for (int i = 0; i < count; ++i) {
          const int r = done[i];
          record(r, recv_buf_[r]);
          MPI_Irecv(&recv_buf_[r], sizeof(Arrival), MPI_BYTE, r, kTag, comm_, &recv_req_[r]);
        }
      }
      check(Clock::now());
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

void StallInspector::check(Clock::time_point now) {
  if (pending_.empty()) return;
  const auto& [index, op] = *pending_.begin();  // the oldest operation someone waits in
  const double waited = std::chrono::duration<double>(now - op.first).count();
  if (waited < timeout_s_) return;
  std::string missing, present;
  for (int r = 0; r < size_; ++r) {
    std::string& list = last_[r] < index ? missing : present;
    list += (list.empty() ? "" : ", ") + std::to_string(r);
  }
  std::string lasts;
  for (int r = 0; r < size_; ++r) {
    if (last_[r] < index) {
      lasts += (lasts.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) +
               (last_[r] < 0 ? " started no operation yet" : " last started #" + std::to_string(last_[r]));
    }
  }
  std::fprintf(stderr,
               "twinhpc stall inspector: collective #%lld '%s' has waited %.1f s (stall_timeout "
               "%.1f s) for missing ranks: [%s] (%s); arrived: [%s]. Aborting the job (MPI_Abort).\n",
               static_cast<long long>(index), op.name.c_str(), waited, timeout_s_, missing.c_str(),
               lasts.c_str(), present.c_str());
  std::fflush(stderr);
  MPI_Abort(comm_, 70);
}

}  // namespace twinhpc
