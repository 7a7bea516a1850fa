// The all-reduce engine (see engine.h).
#include "engine.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <iterator>

#include "mpit.h"
#include "reduce.h"

namespace twinhpc {
namespace {

// How an all-reduce algorithm sums a host buffer (Engine::sum).
enum class Method {
  kMpiAllreduce,  // MPI_Allreduce on comm_, or on the algorithm's own communicator (variants_)
  kRing,          // reduce-scatter + all-gather over MPI point-to-point (ring.h)
  kShm,           // MPI-3 shared-memory window, all ranks on one node (shm.h)
};

// One all-reduce algorithm.
struct AlgorithmSpec {
  const char* name;     // its name in Python (twinhpc.comm.engine.ALGORITHMS) and in messages
  Method method;        // how it sums
  const char* openmpi;  // kMpiAllreduce: the Open MPI algorithm (mpit.h) forced on a communicator
                        // of its own, when Open MPI's dynamic rules are enabled; nullptr: none,
                        // whatever the MPI library picks
};

// Every all-reduce algorithm, in code order: an algorithm's code is its position (engine.h).
constexpr AlgorithmSpec kAlgorithms[] = {
    {"mpi", Method::kMpiAllreduce, nullptr},
    {"ring", Method::kRing, nullptr},
    {"shm", Method::kShm, nullptr},
    {"mpi_recursive_doubling", Method::kMpiAllreduce, "recursive_doubling"},
    {"mpi_ring", Method::kMpiAllreduce, "ring"},
    {"mpi_segmented_ring", Method::kMpiAllreduce, "segmented_ring"},
    {"mpi_rabenseifner", Method::kMpiAllreduce, "rabenseifner"},
};
constexpr int kNumAlgorithms = static_cast<int>(std::size(kAlgorithms));
// The code of "mpi" (plain MPI_Allreduce): every size's algorithm until set_table().
constexpr int kMpi = 0;

// Elements per MPI call: MPI counts are int.
constexpr int64_t kMaxMpiCount = int64_t{1} << 30;
// Bytes of a signature's message field (an argument error, truncated).
constexpr int kMessageBytes = 200;

// What every rank tells the others about an operation before running it.
struct Signature {
  int64_t kind;         // OpKind
  int64_t numel;        // elements of all tensors
  int64_t dtype;        // the tensors' at::ScalarType
  int64_t wire;         // the wire at::ScalarType
  int64_t average;      // 1 for an average
  int64_t algorithm;    // Algorithm
  int64_t root;         // broadcast root
  int64_t invalid_kind; // ErrorKind of a local argument error, 0 if none
  int64_t region;       // the shared region holding the tensor, -1 if none
  int64_t region_offset;  // the byte offset in it
  char message[kMessageBytes];  // the local argument error, NUL-terminated
};

// A failure with the Python exception it maps to.
struct EngineError : std::runtime_error {
  EngineError(ErrorKind k, const std::string& what) : std::runtime_error(what), kind(k) {}
  ErrorKind kind;
};

const char* kind_name(OpKind k) {
  switch (k) {
    case OpKind::kAllreduce: return "allreduce";
    case OpKind::kBroadcast: return "broadcast";
    case OpKind::kBarrier: return "barrier";
  }
  return "?";
}

const char* algorithm_name(int64_t a) { return a >= 0 && a < kNumAlgorithms ? kAlgorithms[a].name : "?"; }

// Marks w done with the outcome (error "" on success) and wakes its waiters.
void complete(Work& w, ErrorKind kind, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(w.mu);
    w.error_kind = kind;
    w.error = error.empty() ? "" : "twinhpc.Engine " + std::string(kind_name(w.kind)) + " '" + w.name +
                                       "' (#" + std::to_string(w.index) + "): " + error;
    w.timings.unpack_done = monotonic_us();
    w.done = true;
  }
  w.cv.notify_all();
}

// "1000 float32 elements (wire bfloat16, avg, ring)": a signature in words.
std::string describe(const Signature& s) {
  std::string text = std::to_string(s.numel) + " " +
                     dtype_name(static_cast<at::ScalarType>(s.dtype)) + " elements";
  if (s.kind == static_cast<int64_t>(OpKind::kAllreduce)) {
    text += std::string(" (wire ") + dtype_name(static_cast<at::ScalarType>(s.wire)) + ", " +
            (s.average ? "avg" : "sum") + ", algorithm " + algorithm_name(s.algorithm) + ")";
  } else if (s.kind == static_cast<int64_t>(OpKind::kBroadcast)) {
    text += " (root " + std::to_string(s.root) + ")";
  }
  return text;
}

bool same_operation(const Signature& a, const Signature& b) {
  return a.kind == b.kind && a.numel == b.numel && a.dtype == b.dtype && a.wire == b.wire &&
         a.average == b.average && a.algorithm == b.algorithm && a.root == b.root;
}

// The twinhpc op `unpack` through the dispatcher, so that CPU and CUDA tensors both work:
// outs[i] = flat[slice i] cast to outs[i]'s dtype, times scale.
void unpack_op(const at::Tensor& flat, at::TensorList outs, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("twinhpc::unpack", "")
                       .typed<void(const at::Tensor&, at::TensorList, double)>();
  op.call(flat, outs, scale);
}

// A 1-D view of the first n elements of `bytes` (a uint8 buffer, grown as needed) as dtype t.
at::Tensor flat_view(at::Tensor& bytes, int64_t n, at::ScalarType t, const at::TensorOptions& where) {
  const int64_t need = n * static_cast<int64_t>(c10::elementSize(t));
  if (!bytes.defined() || bytes.numel() < need) bytes = at::empty({need}, where.dtype(at::kByte));
  return bytes.narrow(0, 0, need).view(t);
}

// For each algorithm that forces one of Open MPI's (by code; NULL for the others), a duplicate of
// comm created while Open MPI's forced all-reduce algorithm is that one (collective). All NULL
// unless, on every rank, this is Open MPI with dynamic rules enabled and the algorithm variable
// writable (decided together, so a rank whose environment differs cannot leave the others
// waiting in MPI_Comm_dup).
std::vector<MPI_Comm> mpi_variants(MPI_Comm comm) {
  std::vector<MPI_Comm> out(kNumAlgorithms, MPI_COMM_NULL);
  // MPI_T sessions are reference-counted: holding one across the calls below makes each
  // call's own init/finalize cheap (a fresh MPI_T_init_thread reads every MCA variable,
  // about 0.25 s each here).
  int provided = 0;
  const bool session = MPI_T_init_thread(MPI_THREAD_MULTIPLE, &provided) == MPI_SUCCESS;
  struct Finalize {
    bool on;
    ~Finalize() { if (on) MPI_T_finalize(); }
  } finalize{session};
  int dynamic = 0, previous = 0;
  const char* algorithm_var = "coll_tuned_allreduce_algorithm";
  const int usable = get_control_variable("coll_tuned_use_dynamic_rules", &dynamic) && dynamic &&
                     get_control_variable(algorithm_var, &previous) &&
                     set_control_variable(algorithm_var, previous).empty();
  int everywhere = 0;
  MPI_Allreduce(&usable, &everywhere, 1, MPI_INT, MPI_LAND, comm);
  if (!everywhere) return out;
  for (int a = 0; a < kNumAlgorithms; ++a) {
    if (kAlgorithms[a].openmpi == nullptr) continue;
    set_control_variable(algorithm_var, openmpi_allreduce_code(kAlgorithms[a].openmpi));
    MPI_Comm_dup(comm, &out[a]);
  }
  set_control_variable(algorithm_var, previous);
  return out;
}

bool query_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

}  // namespace

std::vector<std::string> allreduce_algorithms() {
  std::vector<std::string> names;
  for (const AlgorithmSpec& a : kAlgorithms) names.emplace_back(a.name);
  return names;
}

int64_t monotonic_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// -- Work ----------------------------------------------------------------------------------------
std::pair<ErrorKind, std::string> Work::wait() {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [this] { return done; });
  return {error_kind, error};
}

bool Work::is_done() {
  std::lock_guard<std::mutex> lock(mu);
  return done;
}

// -- Engine: construction and the queue --------------------------------------------------------
Engine::Engine(MPI_Comm comm, double stall_timeout_s, int64_t segment_bytes, bool use_cuda_aware)
    : ring_(segment_bytes) {
  TORCH_CHECK_VALUE(comm != MPI_COMM_NULL, "twinhpc.Engine: the communicator is MPI_COMM_NULL");
  int initialized = 0, finalized = 0, level = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  TORCH_CHECK(initialized && !finalized, "twinhpc.Engine: MPI is not initialised (or already finalised)");
  MPI_Query_thread(&level);
  TORCH_CHECK(level == MPI_THREAD_MULTIPLE,
              "twinhpc.Engine: MPI was initialised without MPI_THREAD_MULTIPLE (the engine's "
              "thread calls MPI while Python may too); initialise it with mpi4py's default "
              "(mpi4py.rc.thread_level = 'multiple')");
  // Errors on an invalid handle would otherwise abort through the caller's error handler.
  MPI_Errhandler old;
  MPI_Comm_get_errhandler(MPI_COMM_WORLD, &old);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int code = MPI_Comm_dup(comm, &comm_);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, old);
  MPI_Errhandler_free(&old);
  TORCH_CHECK_VALUE(code == MPI_SUCCESS, "twinhpc.Engine: the communicator is not valid (MPI_Comm_dup failed)");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_dup(comm_, &stall_comm_);
  variants_ = mpi_variants(comm_);
  for (MPI_Comm c : variants_) {
    if (c != MPI_COMM_NULL) MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  }
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  shm_ = SharedMemory::create(comm_, segment_bytes);
  cuda_aware_ = use_cuda_aware && query_cuda_aware();
  table_ = {{INT64_MAX, kMpi}};
  stall_ = std::make_unique<StallInspector>(stall_comm_, stall_timeout_s);
  thread_ = std::thread([this] { loop(); });
}

// The ranks destroy their engines in whatever order their garbage collectors pick: no collective
// here (abandon() does nothing after close()).
Engine::~Engine() { abandon(); }

void Engine::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return;
    closing_ = true;
  }
  stop_thread();
  stall_.reset();
  shm_.reset();
  MPI_Comm_free(&stall_comm_);
  for (MPI_Comm& c : variants_) {
    if (c != MPI_COMM_NULL) MPI_Comm_free(&c);
  }
  MPI_Comm_free(&comm_);
}

void Engine::abandon() {
  std::deque<std::shared_ptr<Work>> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return;
    closing_ = true;
    dropped.swap(queue_);
  }
  for (const std::shared_ptr<Work>& w : dropped) {
    complete(*w, ErrorKind::kRuntime, "not run: the engine was destroyed without close()");
  }
  stop_thread();
  // Process-local: rank 0's polling thread stops and its receives are cancelled; another rank's
  // arrival messages (small, sent eagerly) complete without rank 0.
  stall_.reset();
  // Freeing the windows and the communicators is collective: they are left to MPI_Finalize,
  // and the SharedMemory object with them (its regions stay mapped).
  static_cast<void>(shm_.release());
}

void Engine::stop_thread() {
  cv_.notify_all();
  thread_.join();  // after the operation it is running; a closing engine's loop runs what is queued
  std::unique_lock<std::mutex> lock(mu_);  // a blocking caller may still be running one
  cv_.wait(lock, [this] { return !busy_; });
}

void Engine::set_table(std::vector<std::pair<int64_t, int>> table) {
  TORCH_CHECK_VALUE(!table.empty(), "twinhpc.Engine: empty algorithm table");
  for (const auto& [bytes, algorithm] : table) {
    TORCH_CHECK_VALUE(has_algorithm(algorithm), "twinhpc.Engine: algorithm ", algorithm_name(algorithm),
                      " (", algorithm, ") is not available on this communicator");
  }
  std::sort(table.begin(), table.end());
  std::lock_guard<std::mutex> lock(mu_);
  table_ = std::move(table);
}

std::vector<std::pair<int64_t, int>> Engine::table() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_;
}

bool Engine::has_algorithm(int algorithm) const {
  if (algorithm < 0 || algorithm >= kNumAlgorithms) return false;
  const AlgorithmSpec& a = kAlgorithms[algorithm];
  if (a.method == Method::kShm) return shm_ != nullptr || size_ == 1;
  if (a.openmpi != nullptr) return variants_[algorithm] != MPI_COMM_NULL;
  return true;
}

std::shared_ptr<Work> Engine::submit(std::shared_ptr<Work> work, bool blocking) {
  for (const at::Tensor& t : work->tensors) {
    if (work->invalid.empty() && t.defined() && !t.is_cpu() && t.device().type() != c10::DeviceType::Meta) {
      // The operation must not read the tensor before the caller's stream has produced it.
      c10::impl::VirtualGuardImpl impl(t.device().type());
      work->ready.emplace(t.device().type());
      work->ready->record(impl.getStream(t.device()));
      break;
    }
  }
  bool inline_run = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(!closing_, "twinhpc.Engine: the engine is closed");
    work->index = next_index_++;
    work->timings.enqueue = monotonic_us();
    inline_run = blocking && !busy_ && queue_.empty();
    if (inline_run) {
      busy_ = true;  // the thread takes nothing until this caller is done
    } else {
      queue_.push_back(work);
    }
  }
  bool wake = !inline_run;  // the thread has work
  if (inline_run) {
    execute(*work);
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      // Wake the thread only if someone queued work meanwhile, or close() waits: a needless
      // wake-up costs a context switch on every blocking call (a few microseconds, and on a
      // node with as many ranks as cores, CPU taken from the rank itself).
      wake = !queue_.empty() || closing_;
    }
  }
  if (wake) cv_.notify_all();
  if (blocking) work->wait();
  return work;
}

std::shared_ptr<Work> Engine::allreduce(std::vector<at::Tensor> tensors, bool average,
                                        std::optional<at::ScalarType> wire, std::string name,
                                        std::optional<int> algorithm, bool blocking) {
  auto w = std::make_shared<Work>();
  w->kind = OpKind::kAllreduce;
  w->name = std::move(name);
  w->average = average;
  w->tensors = std::move(tensors);
  auto invalid = [&](ErrorKind k, std::string why) {
    if (w->invalid.empty()) {
      w->invalid = std::move(why);
      w->invalid_kind = k;
    }
  };
  w->dtype = w->tensors.empty() ? at::kFloat : w->tensors[0].scalar_type();
  if (w->tensors.empty()) invalid(ErrorKind::kValue, "no tensors given");
  for (size_t i = 0; i < w->tensors.size(); ++i) {
    const at::Tensor& t = w->tensors[i];
    const std::string which = w->tensors.size() == 1 ? "the tensor" : "tensors[" + std::to_string(i) + "]";
    if (!t.defined()) {
      invalid(ErrorKind::kValue, which + " is undefined");
      continue;
    }
    if (!reducible(t.scalar_type())) {
      invalid(ErrorKind::kType, which + " has unsupported dtype " + dtype_name(t.scalar_type()) +
                                    " (supported: float32, float64, float16, bfloat16, int32, int64)");
    } else if (t.scalar_type() != w->dtype) {
      invalid(ErrorKind::kType, which + " has dtype " + dtype_name(t.scalar_type()) +
                                    " but tensors[0] has " + dtype_name(w->dtype) +
                                    "; fused tensors must share one dtype");
    }
    if (!t.is_contiguous()) {
      invalid(ErrorKind::kValue, which + " is not contiguous; the all-reduce writes into it in place "
                                         "(pass t.contiguous() and copy back, or reduce .grad of a contiguous parameter)");
    }
    if (t.device() != w->tensors[0].device()) {
      invalid(ErrorKind::kValue, which + " is on " + t.device().str() + " but tensors[0] is on " +
                                     w->tensors[0].device().str());
    }
    if (!t.is_cpu() && !t.is_cuda()) {
      invalid(ErrorKind::kValue, which + " is on " + t.device().str() + "; only CPU and CUDA tensors");
    }
    w->numel += t.numel();
  }
  w->wire = wire.value_or(w->dtype);
  if (w->invalid.empty()) {
    if (w->average && !is_floating(w->dtype)) {
      invalid(ErrorKind::kType, "cannot average " + dtype_name(w->dtype) +
                                    " tensors (integer division would truncate); use op='sum'");
    } else if (!reducible(w->wire)) {
      invalid(ErrorKind::kType, "unsupported wire dtype " + dtype_name(w->wire));
    } else if (w->wire != w->dtype && !(is_floating(w->wire) && is_floating(w->dtype))) {
      invalid(ErrorKind::kType, "cannot send " + dtype_name(w->dtype) + " tensors as " +
                                    dtype_name(w->wire) + "; wire casts are between floating-point dtypes only");
    }
  }
  const int64_t bytes = w->numel * static_cast<int64_t>(c10::elementSize(reducible(w->wire) ? w->wire : at::kFloat));
  if (algorithm) {
    if (!has_algorithm(*algorithm)) {
      invalid(ErrorKind::kValue, std::string("algorithm ") + algorithm_name(*algorithm) +
                                     " is not available on this communicator");
    } else {
      w->algorithm = *algorithm;
    }
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(table_.begin(), table_.end(), [&](const auto& e) { return bytes <= e.first; });
    w->algorithm = it == table_.end() ? table_.back().second : it->second;
  }
  // A single tensor in a shared region, summed in its own dtype, may be summed where it is
  // (if every rank's is at the same place: agree() decides). Not when an algorithm is forced.
  if (w->invalid.empty() && !algorithm && shm_ && w->tensors.size() == 1 && w->wire == w->dtype &&
      w->tensors[0].is_cpu()) {
    const at::Tensor& t = w->tensors[0];
    if (!shm_->locate(t.data_ptr(), t.numel() * static_cast<int64_t>(t.element_size()), &w->region,
                      &w->region_offset)) {
      w->region = -1;
    }
  }
  return submit(std::move(w), blocking);
}

std::shared_ptr<Work> Engine::broadcast(at::Tensor tensor, int root, std::string name, bool blocking) {
  auto w = std::make_shared<Work>();
  w->kind = OpKind::kBroadcast;
  w->name = std::move(name);
  w->root = root;
  w->dtype = w->wire = tensor.defined() ? tensor.scalar_type() : at::kFloat;
  w->numel = tensor.defined() ? tensor.numel() : 0;
  if (!tensor.defined()) {
    w->invalid = "the tensor is undefined";
  } else if (!tensor.is_contiguous()) {
    w->invalid = "the tensor is not contiguous; the broadcast writes into it in place";
  } else if (!tensor.is_cpu() && !tensor.is_cuda()) {
    w->invalid = "the tensor is on " + tensor.device().str() + "; only CPU and CUDA tensors";
  } else if (root < 0 || root >= size_) {
    w->invalid = "root " + std::to_string(root) + " is not a rank of a communicator of size " + std::to_string(size_);
  }
  if (!w->invalid.empty()) w->invalid_kind = ErrorKind::kValue;
  w->tensors.push_back(std::move(tensor));
  return submit(std::move(w), blocking);
}

std::shared_ptr<Work> Engine::barrier(std::string name, bool blocking) {
  auto w = std::make_shared<Work>();
  w->kind = OpKind::kBarrier;
  w->name = std::move(name);
  return submit(std::move(w), blocking);
}

// -- Engine: the thread ---------------------------------------------------------------------------
void Engine::loop() {
  for (;;) {
    std::shared_ptr<Work> w;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return (!queue_.empty() && !busy_) || (closing_ && queue_.empty()); });
      if (queue_.empty()) return;  // closing, and everything queued has run
      w = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    execute(*w);
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
    cv_.notify_all();
  }
}

void Engine::execute(Work& w) {
  // The engine writes tensors' memory directly; autograd must not interfere.
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  ErrorKind kind = ErrorKind::kNone;
  std::string error;
  try {
    run(w);
  } catch (const EngineError& e) {
    kind = e.kind;
    error = e.what();
  } catch (const c10::Error& e) {
    kind = ErrorKind::kRuntime;
    error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    kind = ErrorKind::kRuntime;
    error = e.what();
  }
  for (at::Tensor& t : w.tensors) {
    if (t.defined() && error.empty()) t.unsafeGetTensorImpl()->bump_version();
  }
  complete(w, kind, error);
}

void Engine::check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw EngineError(ErrorKind::kRuntime, std::string(what) + " failed: " + std::string(text, len));
}

void Engine::agree(Work& w) {
  Signature mine{};
  mine.kind = static_cast<int64_t>(w.kind);
  mine.numel = w.numel;
  mine.dtype = static_cast<int64_t>(w.dtype);
  mine.wire = static_cast<int64_t>(w.wire);
  mine.average = w.average;
  mine.algorithm = w.algorithm;
  mine.root = w.root;
  mine.invalid_kind = static_cast<int64_t>(w.invalid_kind);
  mine.region = w.region;
  mine.region_offset = w.region_offset;
  std::strncpy(mine.message, w.invalid.c_str(), kMessageBytes - 1);
  std::vector<Signature> all(size_);
  // Through MPI even on one node: an all-gather through the shared-memory window was tried and
  // made small all-reduces 30x slower, because with no MPI call left on the shm path nothing
  // progressed the stall inspector's arrival messages between rank 0's polls (20 ms), and the
  // senders' MPI_Wait on their send slots stalled.
  check_mpi(MPI_Allgather(&mine, sizeof(Signature), MPI_BYTE, all.data(), sizeof(Signature),
                          MPI_BYTE, comm_),
            "MPI_Allgather of the operation's signature");
  // Argument errors, each message once with the ranks that reported it.
  std::vector<std::pair<std::string, std::string>> errors;  // (message, ranks)
  ErrorKind kind = ErrorKind::kNone;
  for (int r = 0; r < size_; ++r) {
    if (all[r].invalid_kind == 0) continue;
    if (kind == ErrorKind::kNone) kind = static_cast<ErrorKind>(all[r].invalid_kind);
    auto it = std::find_if(errors.begin(), errors.end(), [&](const auto& e) { return e.first == all[r].message; });
    if (it == errors.end()) {
      errors.emplace_back(all[r].message, std::to_string(r));
    } else {
      it->second += ", " + std::to_string(r);
    }
  }
  if (!errors.empty()) {
    std::string text;
    for (const auto& [message, ranks] : errors) {
      text += (text.empty() ? "" : "; ") + (size_ == 1 ? "" : (ranks.find(',') == std::string::npos ? "rank " : "ranks ") + ranks + ": ") + message;
    }
    throw EngineError(kind, text);
  }
  bool same = true;
  for (int r = 1; r < size_; ++r) same = same && same_operation(all[0], all[r]);
  if (!same) {
    std::string list;
    for (int r = 0; r < size_; ++r) list += "; rank " + std::to_string(r) + ": " + describe(all[r]);
    throw EngineError(ErrorKind::kValue,
                      "the ranks disagree on the operation (different tensor sizes, dtypes or "
                      "options across ranks, or operations enqueued in a different order)" + list);
  }
  w.direct = w.region >= 0;
  for (int r = 0; r < size_; ++r) {
    w.direct = w.direct && all[r].region == w.region && all[r].region_offset == w.region_offset;
  }
}

void Engine::run(Work& w) {
  w.timings.start = monotonic_us();
  stall_->arrived(w.index, w.name.c_str());
  if (size_ > 1 || !w.invalid.empty()) {
    agree(w);
  } else {
    w.direct = w.region >= 0;
  }
  if (size_ == 1 && w.kind != OpKind::kBarrier) {
    // One rank: the sum, the average and the broadcast of its input are its input. Nothing is
    // packed, cast to a wire dtype or staged through host memory (a single GPU pays nothing).
    w.timings.pack_done = w.timings.reduce_done = monotonic_us();
    return;
  }
  switch (w.kind) {
    case OpKind::kBarrier:
      w.timings.pack_done = monotonic_us();
      check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
      w.timings.reduce_done = monotonic_us();
      return;
    case OpKind::kBroadcast: {
      w.timings.pack_done = monotonic_us();
      at::Tensor& t = w.tensors[0];
      const bool staged = !t.is_cpu() && !cuda_aware_;
      if (!t.is_cpu()) w.ready->synchronize();  // the caller's stream has produced t
      at::Tensor host = staged ? t.to(at::kCPU) : t;  // synchronous copy
      char* p = static_cast<char*>(host.data_ptr());
      const int64_t es = static_cast<int64_t>(host.element_size());
      for (int64_t lo = 0; lo < w.numel; lo += kMaxMpiCount) {
        const int64_t m = std::min(kMaxMpiCount, w.numel - lo);
        check_mpi(MPI_Bcast(p + lo * es, static_cast<int>(m), mpi_type(w.dtype), w.root, comm_), "MPI_Bcast");
      }
      if (staged) t.copy_(host);
      w.timings.reduce_done = monotonic_us();
      return;
    }
    case OpKind::kAllreduce:
      run_allreduce(w);
      return;
  }
}

void Engine::sum(void* buf, int64_t n, at::ScalarType t, int algorithm) {
  if (n == 0) return;  // (one rank never gets here: run() returns its input as it is)
  const AlgorithmSpec& a = kAlgorithms[algorithm];
  switch (a.method) {
    case Method::kMpiAllreduce: {
      MPI_Comm comm = a.openmpi != nullptr ? variants_[algorithm] : comm_;
      for (int64_t lo = 0; lo < n; lo += kMaxMpiCount) {
        const int64_t m = std::min(kMaxMpiCount, n - lo);
        check_mpi(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(buf) + lo * c10::elementSize(t),
                                static_cast<int>(m), mpi_type(t), mpi_sum(t), comm),
                  "MPI_Allreduce");
      }
      return;
    }
    case Method::kRing:
      check_mpi(ring_.allreduce(comm_, buf, n, t), "the ring all-reduce");
      return;
    case Method::kShm:
      shm_->allreduce(buf, n, t);
      return;
  }
}

at::Tensor Engine::shared_buffer(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0, "twinhpc.Engine.shared_buffer: negative size ", bytes);
  {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(!closing_, "twinhpc.Engine: the engine is closed");
  }
  if (!shm_) return at::zeros({bytes}, at::TensorOptions().dtype(at::kByte));
  return shm_->allocate(bytes);
}

void Engine::run_allreduce(Work& w) {
  const double scale = w.average ? 1.0 / size_ : 1.0;
  if (w.direct) {
    w.timings.pack_done = monotonic_us();
    shm_->allreduce_direct(w.region, w.region_offset, w.numel, w.dtype, scale);
    w.timings.reduce_done = monotonic_us();
    return;
  }
  const at::Tensor& first = w.tensors[0];
  // One tensor already in the wire dtype is summed where it is; otherwise pack.
  const bool in_place = w.tensors.size() == 1 && w.wire == w.dtype;
  if (first.is_cpu()) {
    at::Tensor flat = in_place ? first.view(-1) : flat_view(fusion_, w.numel, w.wire, first.options());
    if (!in_place) {
      int64_t offset = 0;
      for (const at::Tensor& t : w.tensors) {  // pack: unpack each tensor into its slice
        unpack_op(t.view(-1), {flat.narrow(0, offset, t.numel())}, 1.0);
        offset += t.numel();
      }
    }
    w.timings.pack_done = monotonic_us();
    sum(flat.data_ptr(), w.numel, w.wire, w.algorithm);
    w.timings.reduce_done = monotonic_us();
    if (!in_place) {
      unpack_op(flat, w.tensors, scale);
    } else if (w.average) {
      unpack_op(flat, {flat}, scale);  // in place: unpack allows flat == out
    }
    return;
  }
  // A device tensor: pack on the device (on a side stream, after the caller's stream produced
  // the tensors), then copy to pinned host memory unless MPI reads device memory itself.
  c10::impl::VirtualGuardImpl impl(first.device().type());
  const c10::Stream stream = impl.getStreamFromGlobalPool(first.device());
  const c10::StreamGuard guard(stream);
  w.ready->block(stream);
  at::Tensor flat = in_place ? first.view(-1) : flat_view(device_fusion_, w.numel, w.wire, first.options());
  if (!in_place) {
    int64_t offset = 0;
    for (const at::Tensor& t : w.tensors) {
      unpack_op(t.view(-1), {flat.narrow(0, offset, t.numel())}, 1.0);
      offset += t.numel();
    }
  }
  const bool staged = !(cuda_aware_ && kAlgorithms[w.algorithm].method == Method::kMpiAllreduce);
  at::Tensor host = flat;
  if (staged) {
    host = flat_view(staging_, w.numel, w.wire, at::TensorOptions().device(at::kCPU).pinned_memory(true));
    host.copy_(flat, /*non_blocking=*/true);
  }
  stream.synchronize();
  w.timings.pack_done = monotonic_us();
  sum(host.data_ptr(), w.numel, w.wire, w.algorithm);
  w.timings.reduce_done = monotonic_us();
  if (staged) flat.copy_(host, /*non_blocking=*/true);
  if (!in_place) {
    unpack_op(flat, w.tensors, scale);
  } else if (w.average) {
    unpack_op(flat, {flat}, scale);
  }
  stream.synchronize();
}

}  // namespace twinhpc
