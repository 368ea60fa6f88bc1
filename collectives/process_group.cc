#include "collectives/process_group.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "collectives/reduce.h"
#include "tensor/logging.h"
#include "tensor/ops.h"
#include "tensor/trace_events.h"
#include "tensor/trace_json.h"

namespace loom::collectives {

ProcessGroupOptions default_process_group_options() {
  ProcessGroupOptions o;
  const char* c = std::getenv("LOOM_COLLECTIVE_CHECK");
  o.check = c != nullptr && std::strcmp(c, "0") != 0 && *c != '\0';
  const char* d = std::getenv("LOOM_TRACE_DIR");
  if (d != nullptr && *d != '\0') o.trace_dir = d;
  const char* ifn = std::getenv("LOOM_GLOO_IFNAME");
  if (ifn == nullptr) ifn = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifn != nullptr) o.iface = ifn;
  if (const char* m = std::getenv("MASTER_ADDR")) o.master_addr = m;
  if (const char* p = std::getenv("MASTER_PORT")) o.master_port = std::atoi(p);
  return o;
}

namespace {
// Wall-clock milliseconds: the one clock ranks on different hosts share (NTP), for "whose last event is oldest".
int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "seq wall_ms desc" as published in progress/<rank>.
struct Progress {
  uint64_t seq = 0;
  int64_t wall_ms = 0;
  std::string desc;
};
Progress parse_progress(const std::string& v) {
  Progress p;
  std::istringstream is(v);
  is >> p.seq >> p.wall_ms;
  std::getline(is >> std::ws, p.desc);
  return p;
}

std::string ranks_str(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  s += ']';
  return s;
}
}  // namespace

ProcessGroup::ProcessGroup(std::shared_ptr<Store> store, int rank, int size, const std::string& backend,
                           ProcessGroupOptions options, std::string name, std::vector<int> global_ranks)
    : rank_(rank),
      size_(size),
      backend_name_(backend),
      opts_(std::move(options)),
      name_(std::move(name)),
      global_ranks_(std::move(global_ranks)) {
  LOOM_CHECK(store != nullptr, "ProcessGroup: store is null");
  LOOM_CHECK(size >= 1 && rank >= 0 && rank < size, "ProcessGroup: rank ", rank, " is not in [0, ", size, ")");
  if (global_ranks_.empty()) {
    global_ranks_.resize(static_cast<size_t>(size));
    std::iota(global_ranks_.begin(), global_ranks_.end(), 0);
  }
  LOOM_CHECK(static_cast<int>(global_ranks_.size()) == size, "ProcessGroup: ", global_ranks_.size(),
             " global ranks for a group of ", size);
  if (opts_.trace_dir.empty()) opts_.trace_dir = std::filesystem::temp_directory_path().string();
  base_store_ = store;
  store_ = std::make_shared<PrefixStore>("pg/" + name_, store);
  BackendContext ctx;
  ctx.rank = rank_;
  ctx.size = size_;
  ctx.global_ranks = global_ranks_;
  ctx.store = std::make_shared<PrefixStore>(backend, store_);
  ctx.group_name = name_;
  ctx.timeout = store->timeout();
  ctx.hostname = opts_.hostname;
  ctx.iface = opts_.iface;
  ctx.master_addr = opts_.master_addr;
  ctx.master_port = opts_.master_port;
  backend_ = create_backend(backend, ctx);
  worker_ = std::thread([this] { worker_loop(); });
  watchdog_ = std::thread([this] { watchdog_loop(); });
}

ProcessGroup::~ProcessGroup() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  watchdog_.join();
}

void ProcessGroup::flush() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return queue_.empty() && !busy_; });
}

std::shared_ptr<Work> ProcessGroup::enqueue(const std::string& op, const Tensor& t, int peer, bool collective,
                                            Millis timeout, std::function<void(Millis)> run, std::string extra) {
  // On the caller's thread, before the lock: e.g. an event on its current CUDA stream (nccl).
  std::function<void()> before = backend_->on_enqueue();
  std::lock_guard<std::mutex> g(mu_);
  uint64_t seq = collective ? next_seq_++ : next_p2p_++;
  auto work = std::make_shared<Work>(op, seq, name_);
  TraceEntry e;
  e.seq = seq;
  e.op = op;
  e.numel = t.defined() ? t.numel() : 0;
  e.dtype = t.defined() ? t.dtype() : DType::u8;
  e.peer = peer;
  e.enqueue_ns = trace_now_ns();
  if (trace::enabled() && collective)
    trace::record_instant(
        "enqueue " + op, trace::kEnqueue,
        {trace::num("seq", static_cast<int64_t>(seq)), trace::str("op", op), trace::str("group", name_),
         trace::num("bytes", t.defined() ? static_cast<int64_t>(t.nbytes()) : 0)});
  Task task;
  task.work = work;
  task.trace_handle = trace_.record(e);
  task.collective = collective;
  task.bytes = t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
  std::ostringstream d;
  d << op << "(";
  if (t.defined()) d << dtype_name(t.dtype()) << ", " << t.numel() << " elements";
  d << extra << ")";
  task.desc = d.str();
  task.timeout = effective(timeout);
  task.run = std::move(run);
  task.before = std::move(before);
  if (!broken_.empty()) {
    trace_.finish(task.trace_handle, false);
    work->finish(std::make_exception_ptr(CommError(::loom::detail::str_cat(
        "ProcessGroup '", name_, "': ", task.desc, " #", seq, " refused: the group is broken by an earlier error (",
        broken_, "); create a new group or restart the job"))));
    return work;
  }
  queue_.push_back(std::move(task));
  cv_.notify_all();
  return work;
}

void ProcessGroup::worker_loop() {
  trace::set_thread_name("comm " + name_);
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      running_ = task.work;
      running_task_ = &task;
      running_deadline_ns_ =
          trace_now_ns() +
          std::chrono::duration_cast<std::chrono::nanoseconds>(task.timeout + opts_.watchdog_grace).count();
    }
    execute(task);
    {
      std::lock_guard<std::mutex> g(mu_);
      busy_ = false;
      running_.reset();
      running_task_ = nullptr;
    }
    cv_.notify_all();
  }
}

void ProcessGroup::watchdog_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, Millis(100));
    if (running_ && !running_->is_completed() && trace_now_ns() > running_deadline_ns_) {
      // The backend ignored its timeout: fail the Work ourselves so the caller
      // gets a report, and refuse later calls.
      Task t = *running_task_;  // the worker's copy may go away while unlocked
      auto work = running_;
      lk.unlock();
      auto ex = make_timeout(t, "the backend did not return (watchdog)");
      work->finish(ex);
      lk.lock();
      for (auto& q : queue_) {
        trace_.finish(q.trace_handle, false);
        q.work->finish(std::make_exception_ptr(
            CommError("ProcessGroup '" + name_ + "': " + q.desc + " cancelled: an earlier collective timed out")));
      }
      queue_.clear();
    }
  }
}

void ProcessGroup::execute(Task& task) {
  trace_.start(task.trace_handle);
  try {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!broken_.empty())
        LOOM_THROW(CommError, "ProcessGroup '", name_, "': ", task.desc, " refused: the group is broken (", broken_,
                   ")");
    }
    if (task.collective && opts_.publish_progress)
      store_->set("progress/" + std::to_string(rank_),
                  std::to_string(task.work->seq()) + " " + std::to_string(wall_ms()) + " " + task.desc);
    if (task.collective && opts_.check) check_agreement(task);
    if (task.before) task.before();
    const int64_t t0 = trace::enabled() ? trace::now_ns() : 0;
    task.run(task.timeout);
    if (t0 != 0) record_comm_span(task, t0);
    trace_.finish(task.trace_handle, true);
    task.work->finish();
  } catch (const Timeout& e) {
    trace_.finish(task.trace_handle, false);
    if (trace::enabled()) record_comm_span(task, trace_now_ns());
    task.work->finish(make_timeout(task, e.what()));
  } catch (...) {
    trace_.finish(task.trace_handle, false);
    task.work->finish(std::current_exception());
  }
}

void ProcessGroup::check_agreement(const Task& task) {
  const std::string prefix = "check/" + std::to_string(task.work->seq()) + "/";
  store_->set(prefix + std::to_string(rank_), task.desc);
  std::vector<std::string> keys;
  for (int r = 0; r < size_; ++r) keys.push_back(prefix + std::to_string(r));
  store_->wait(keys, task.timeout);
  std::string mismatch;
  for (int r = 0; r < size_ && mismatch.empty(); ++r) {
    std::string other = store_->get_string(keys[static_cast<size_t>(r)]);
    if (other != task.desc)
      mismatch = ::loom::detail::str_cat("rank ", r, " called ", other, " #", task.work->seq(), " where rank ", rank_,
                                         " called ", task.desc);
  }
  if (store_->add(prefix + "n", 1) == size_) {
    for (const auto& k : keys) store_->delete_key(k);
    store_->delete_key(prefix + "n");
  }
  if (!mismatch.empty())
    LOOM_THROW(InvalidArgument, "collective check (LOOM_COLLECTIVE_CHECK) in group '", name_, "': ", mismatch,
               "; every rank must issue the same collectives with the same sizes and dtypes in the same order");
}

std::string ProcessGroup::diagnose(const Task& task) {
  const uint64_t seq = task.work->seq();
  const std::string op = task.work->op();
  std::vector<int> missing;
  std::string mismatch, first_missing;
  // The rank whose last recorded collective is the oldest: a rank stuck outside collectives (a hang in its own
  // compute, a straggler) stopped publishing first. A rank that never entered any is older than all.
  int oldest = -1;
  int64_t oldest_ms = INT64_MAX;
  std::string oldest_what;
  const int64_t now_ms = wall_ms();
  try {
    for (int r = 0; r < size_; ++r) {
      std::string key = "progress/" + std::to_string(r);
      if (!store_->check({key})) {
        if (r == rank_) continue;
        missing.push_back(r);
        if (first_missing.empty())
          first_missing =
              ::loom::detail::str_cat("rank ", r, " never entered ", op, " #", seq, " (it entered no collective)");
        if (oldest_ms != INT64_MIN) {
          oldest_ms = INT64_MIN;
          oldest = r;
          oldest_what = "it recorded no collective";
        }
        continue;
      }
      Progress p = parse_progress(store_->get_string(key));
      if (p.wall_ms < oldest_ms) {
        oldest_ms = p.wall_ms;
        oldest = r;
        oldest_what = ::loom::detail::str_cat("its last, ", p.desc, " #", p.seq, ", began ", now_ms - p.wall_ms,
                                              " ms before this report");
      }
      if (r == rank_) continue;
      if (p.seq < seq) {
        missing.push_back(r);
        if (first_missing.empty())
          first_missing = ::loom::detail::str_cat("rank ", r, " never entered ", op, " #", seq, " (its last was ",
                                                  p.desc, " #", p.seq, ")");
      } else if (p.seq == seq && p.desc != task.desc && mismatch.empty()) {
        mismatch = ::loom::detail::str_cat("rank ", r, " called ", p.desc, " #", seq, " where rank ", rank_, " called ",
                                           task.desc, " #", seq);
      }
    }
    store_->set("trace/" + std::to_string(rank_), trace_.format());
  } catch (const std::exception& e) {
    return ::loom::detail::str_cat("ranks that never arrived: unknown (store unreachable: ", e.what(),
                                   ")\ndiagnosis: ", "the store is down; rank 0 or the launcher may have died");
  }
  std::string line = !mismatch.empty() ? mismatch
                     : !first_missing.empty()
                         ? first_missing
                         : ::loom::detail::str_cat("every rank entered ", op, " #", seq,
                                                   "; a peer stalled or died inside it, or the network is too slow");
  std::vector<int> missing_global;
  for (int r : missing) missing_global.push_back(r);
  std::string oldest_line;
  if (oldest >= 0)
    oldest_line = ::loom::detail::str_cat("\noldest last event: rank ", global_ranks_[static_cast<size_t>(oldest)],
                                          " (group rank ", oldest, "; ", oldest_what, ")");
  return ::loom::detail::str_cat("ranks that never arrived: ", ranks_str(missing_global), "\ndiagnosis: ", line,
                                 oldest_line);
}

std::exception_ptr ProcessGroup::make_timeout(const Task& task, const std::string& cause) {
  std::string diag = diagnose(task);
  std::string path;
  try {
    path = dump_trace(task.desc + " #" + std::to_string(task.work->seq()) + " timed out");
  } catch (const std::exception& e) {
    path = std::string("(not written: ") + e.what() + ")";
  }
  std::string timeline;
  try {
    timeline = dump_timeline();
  } catch (const std::exception& e) {
    timeline = std::string("(not written: ") + e.what() + ")";
  }
  std::string msg = ::loom::detail::str_cat(
      "ProcessGroup '", name_, "' (", backend_name_, ", rank ", rank_, " of ", size_, ", members ",
      ranks_str(global_ranks_), "): ", task.desc, " #", task.work->seq(), " timed out after ", task.timeout.count(),
      " ms (collective timeout; set LOOM_COLLECTIVE_TIMEOUT_S or the op's "
      "options.timeout); cause: ",
      cause, "\ntrace of the last collectives written to ", path,
      "\ntimeline of the last steps (Chrome trace JSON) written to ", timeline, "\n", diag);
  {
    std::lock_guard<std::mutex> g(mu_);
    if (broken_.empty()) broken_ = task.desc + " #" + std::to_string(task.work->seq()) + " timed out";
  }
  LOOM_ERROR(msg);
  return std::make_exception_ptr(Timeout(msg));
}

std::string ProcessGroup::dump_trace(const std::string& reason) const {
  std::string safe = name_;
  for (char& c : safe)
    if (c == '/' || c == ' ') c = '_';
  std::string path = opts_.trace_dir + "/loom_trace_" + safe + "_rank" +
                     std::to_string(global_ranks_[static_cast<size_t>(rank_)]) + "_pid" + std::to_string(::getpid()) +
                     ".txt";
  std::ofstream f(path, std::ios::trunc);
  LOOM_CHECK_T(IoError, f.good(), "dump_trace: cannot write ", path, "; set LOOM_TRACE_DIR to a writable directory");
  f << "# loom collective trace: group " << name_ << ", backend " << backend_name_ << ", rank " << rank_ << " of "
    << size_ << "\n# reason: " << reason << "\n"
    << trace_.format();
  return path;
}

void ProcessGroup::record_comm_span(const Task& task, int64_t t0) const {
  trace::record_span(
      task.work->op(), trace::kComm, t0, trace::now_ns(),
      {trace::num("seq", static_cast<int64_t>(task.work->seq())), trace::str("op", task.work->op()),
       trace::str("group", name_), trace::num("bytes", task.bytes), trace::num("p2p", task.collective ? 0 : 1)});
}

std::string ProcessGroup::dump_timeline() const {
  std::vector<trace::Event> events = trace::collect();
  if (events.empty()) {
    // Tracing was off: the always-on collective ring of this group is the timeline.
    for (const TraceEntry& e : trace_.snapshot()) {
      std::vector<trace::Arg> args{trace::num("seq", static_cast<int64_t>(e.seq)), trace::str("op", e.op),
                                   trace::str("group", name_),
                                   trace::num("bytes", e.numel * static_cast<int64_t>(element_size(e.dtype))),
                                   trace::str("state", trace_state_name(e.state))};
      trace::Event q;
      q.name = "enqueue " + e.op;
      q.cat = trace::kEnqueue;
      q.ph = 'i';
      q.ts_ns = e.enqueue_ns;
      q.args = args;
      events.push_back(q);
      if (e.start_ns > 0) {
        trace::Event x;
        x.name = e.op;
        x.cat = trace::kComm;
        x.tid = 1;
        x.ts_ns = e.start_ns;
        x.dur_ns = (e.end_ns > 0 ? e.end_ns : trace_now_ns()) - e.start_ns;
        x.args = args;
        events.push_back(x);
      }
    }
  }
  std::string safe = name_;
  for (char& c : safe)
    if (c == '/' || c == ' ') c = '_';
  const int grank = global_ranks_[static_cast<size_t>(rank_)];
  std::string path = opts_.trace_dir + "/loom_timeline_" + safe + "_rank" + std::to_string(grank) + "_pid" +
                     std::to_string(::getpid()) + ".json";
  std::ofstream f(path, std::ios::trunc);
  LOOM_CHECK_T(IoError, f.good(), "dump_timeline: cannot write ", path, "; set LOOM_TRACE_DIR to a writable directory");
  f << trace::to_chrome_json(events, grank, trace::thread_names(), 0);
  return path;
}

// ------------------------------------------------------------------ ops

namespace {
void check_tensor(const char* op, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": tensor is undefined");
  LOOM_CHECK(t.is_contiguous(), op, ": tensor of shape ", t.numel(), " elements is not contiguous; pass contiguous(t)");
  LOOM_CHECK(detail::collective_dtype(t.dtype()), op, ": dtype ", dtype_name(t.dtype()),
             " is not supported; use f32, f64, f16, bf16, i32 or i64");
}
void check_reduce(const char* op, const Tensor& t, ReduceOp r) {
  LOOM_CHECK(r != ReduceOp::kAvg || is_floating(t.dtype()), op, ": ReduceOp avg needs a floating dtype, got ",
             dtype_name(t.dtype()), "; use sum and divide");
}
bool is_half(DType d) { return d == DType::f16 || d == DType::bf16; }
}  // namespace

std::shared_ptr<Work> ProcessGroup::allreduce(Tensor t, const AllreduceOptions& o) {
  check_tensor("allreduce", t);
  check_reduce("allreduce", t, o.op);
  const ReduceOp op = o.op;
  if (o.rank_ordered && size_ > 1) {
    LOOM_CHECK(op == ReduceOp::kSum || op == ReduceOp::kAvg, "allreduce: rank_ordered supports sum and avg, not ",
               reduce_op_name(op));
    return enqueue(
        "allreduce", t, -1, true, o.timeout,
        [this, t, op](Millis to) mutable {
          Tensor flat = ops::reshape(t, {t.numel()});
          Tensor parts = empty({size_ * t.numel()}, t.dtype());
          backend_->all_gather(parts, flat, to);
          detail::ordered_sum(flat, parts, size_, op == ReduceOp::kAvg ? 1.0 / size_ : 1.0);
        },
        std::string(", ") + reduce_op_name(op) + ", rank-ordered");
  }
  const bool native = backend_->handles_half_and_avg();
  return enqueue(
      "allreduce", t, -1, true, o.timeout,
      [this, t, op, native](Millis to) mutable {
        if (native) return backend_->allreduce(t, op, to);
        ReduceOp bop = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
        Tensor work = is_half(t.dtype()) ? detail::half_to_f32(t) : t;
        backend_->allreduce(work, bop, to);
        if (op == ReduceOp::kAvg) detail::scale_inplace(work, 1.0 / size_);
        if (is_half(t.dtype())) detail::f32_to_half(work, t);
      },
      std::string(", ") + reduce_op_name(op));
}

std::shared_ptr<Work> ProcessGroup::reduce_scatter(Tensor out, Tensor in, const ReduceScatterOptions& o) {
  check_tensor("reduce_scatter", out);
  check_tensor("reduce_scatter", in);
  check_reduce("reduce_scatter", in, o.op);
  LOOM_CHECK(in.dtype() == out.dtype(), "reduce_scatter: in is ", dtype_name(in.dtype()), ", out is ",
             dtype_name(out.dtype()));
  LOOM_CHECK(in.numel() == out.numel() * size_, "reduce_scatter: in has ", in.numel(), " elements, expected size ",
             size_, " x out ", out.numel(), " = ", out.numel() * size_);
  const ReduceOp op = o.op;
  if (o.rank_ordered && size_ > 1) {
    LOOM_CHECK(op == ReduceOp::kSum || op == ReduceOp::kAvg, "reduce_scatter: rank_ordered supports sum and avg, not ",
               reduce_op_name(op));
    return enqueue(
        "reduce_scatter", in, -1, true, o.timeout,
        [this, out, in, op](Millis to) mutable {
          Tensor parts = empty({in.numel()}, in.dtype());  // chunk r: rank r's contribution to this rank's chunk
          backend_->all_to_all(parts, in, to);
          detail::ordered_sum(out, parts, size_, op == ReduceOp::kAvg ? 1.0 / size_ : 1.0);
        },
        std::string(", ") + reduce_op_name(op) + ", rank-ordered");
  }
  const bool native = backend_->handles_half_and_avg();
  return enqueue(
      "reduce_scatter", in, -1, true, o.timeout,
      [this, out, in, op, native](Millis to) mutable {
        if (native) return backend_->reduce_scatter(out, in, op, to);
        ReduceOp bop = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
        const bool half = is_half(in.dtype());
        Tensor win = half ? detail::half_to_f32(in) : in;
        Tensor wout = half ? empty(out.sizes(), DType::f32) : out;
        backend_->reduce_scatter(wout, win, bop, to);
        if (op == ReduceOp::kAvg) detail::scale_inplace(wout, 1.0 / size_);
        if (half) detail::f32_to_half(wout, out);
      },
      std::string(", ") + reduce_op_name(op));
}

std::shared_ptr<Work> ProcessGroup::all_gather(Tensor out, Tensor in, const AllGatherOptions& o) {
  check_tensor("all_gather", out);
  check_tensor("all_gather", in);
  LOOM_CHECK(in.dtype() == out.dtype(), "all_gather: in is ", dtype_name(in.dtype()), ", out is ",
             dtype_name(out.dtype()));
  LOOM_CHECK(out.numel() == in.numel() * size_, "all_gather: out has ", out.numel(), " elements, expected size ", size_,
             " x in ", in.numel(), " = ", in.numel() * size_);
  return enqueue("all_gather", in, -1, true, o.timeout,
                 [this, out, in](Millis to) mutable { backend_->all_gather(out, in, to); });
}

std::shared_ptr<Work> ProcessGroup::all_gather(std::vector<Tensor> outs, Tensor in, const AllGatherOptions& o) {
  check_tensor("all_gather", in);
  LOOM_CHECK(static_cast<int>(outs.size()) == size_, "all_gather: ", outs.size(), " output tensors for a group of ",
             size_);
  for (const auto& t : outs) {
    check_tensor("all_gather", t);
    LOOM_CHECK(t.numel() == in.numel() && t.dtype() == in.dtype(), "all_gather: an output has ", t.numel(), " ",
               dtype_name(t.dtype()), " elements, expected ", in.numel(), " ", dtype_name(in.dtype()));
  }
  return enqueue("all_gather", in, -1, true, o.timeout, [this, outs, in](Millis to) mutable {
    Tensor flat = empty({in.numel() * size_}, in.dtype());
    backend_->all_gather(flat, in, to);
    const size_t bytes = in.nbytes();
    const auto* src = static_cast<const uint8_t*>(flat.data_ptr());
    for (int r = 0; r < size_; ++r) std::memcpy(outs[static_cast<size_t>(r)].data_ptr(), src + r * bytes, bytes);
  });
}

std::shared_ptr<Work> ProcessGroup::broadcast(Tensor t, const BroadcastOptions& o) {
  check_tensor("broadcast", t);
  LOOM_CHECK(o.root >= 0 && o.root < size_, "broadcast: root ", o.root, " is not in [0, ", size_, ")");
  int root = o.root;
  return enqueue(
      "broadcast", t, root, true, o.timeout, [this, t, root](Millis to) mutable { backend_->broadcast(t, root, to); },
      ", root " + std::to_string(root));
}

std::shared_ptr<Work> ProcessGroup::barrier(const BarrierOptions& o) {
  return enqueue("barrier", Tensor(), -1, true, o.timeout, [this](Millis to) { backend_->barrier(to); });
}

std::shared_ptr<Work> ProcessGroup::send(Tensor t, int dst, const SendRecvOptions& o) {
  check_tensor("send", t);
  LOOM_CHECK(dst >= 0 && dst < size_ && dst != rank_, "send: destination ", dst, " is not another rank of [0, ", size_,
             ")");
  int tag = o.tag;
  return enqueue("send", t, dst, false, o.timeout, [this, t, dst, tag](Millis to) { backend_->send(t, dst, tag, to); });
}

std::shared_ptr<Work> ProcessGroup::recv(Tensor t, int src, const SendRecvOptions& o) {
  check_tensor("recv", t);
  LOOM_CHECK(src >= 0 && src < size_ && src != rank_, "recv: source ", src, " is not another rank of [0, ", size_, ")");
  int tag = o.tag;
  return enqueue("recv", t, src, false, o.timeout,
                 [this, t, src, tag](Millis to) mutable { backend_->recv(t, src, tag, to); });
}

std::shared_ptr<Work> ProcessGroup::all_to_all(Tensor out, Tensor in, const AllToAllOptions& o) {
  check_tensor("all_to_all", out);
  check_tensor("all_to_all", in);
  LOOM_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() && in.numel() % size_ == 0, "all_to_all: in (",
             in.numel(), " ", dtype_name(in.dtype()), ") and out (", out.numel(), " ", dtype_name(out.dtype()),
             ") must match and divide by the group size ", size_);
  return enqueue("all_to_all", in, -1, true, o.timeout,
                 [this, out, in](Millis to) mutable { backend_->all_to_all(out, in, to); });
}

std::shared_ptr<ProcessGroup> ProcessGroup::new_group(const std::vector<int>& ranks) {
  LOOM_CHECK(!ranks.empty(), "new_group: empty rank list");
  for (size_t i = 0; i < ranks.size(); ++i) {
    LOOM_CHECK(ranks[i] >= 0 && ranks[i] < size_, "new_group: rank ", ranks[i], " is not in [0, ", size_, ")");
    LOOM_CHECK(i == 0 || ranks[i] > ranks[i - 1], "new_group: ranks must be sorted and distinct, got ",
               ranks_str(ranks));
  }
  std::string sub = name_ + "/g" + std::to_string(subgroups_++) + ranks_str(ranks);
  auto it = std::find(ranks.begin(), ranks.end(), rank_);
  if (it == ranks.end()) return nullptr;
  std::vector<int> global;
  for (int r : ranks) global.push_back(global_ranks_[static_cast<size_t>(r)]);
  return std::make_shared<ProcessGroup>(base_store_, static_cast<int>(it - ranks.begin()),
                                        static_cast<int>(ranks.size()), backend_name_, opts_, sub, global);
}

}  // namespace loom::collectives
