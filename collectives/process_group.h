// ProcessGroup: the collectives every parallel wrapper talks through. Each call
// takes tensors and an options struct, gets a sequence number, is recorded in
// the trace and runs in order on the group's worker thread; the caller gets a
// Work at once. A watchdog turns a stuck collective into a diagnosed Timeout.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/backend.h"
#include "collectives/store.h"
#include "collectives/trace.h"
#include "collectives/types.h"
#include "collectives/work.h"
#include "tensor/tensor.h"

namespace loom::collectives {

/// Options of a group; every field has a default.
struct ProcessGroupOptions {
  /// Default per-collective timeout: LOOM_COLLECTIVE_TIMEOUT_S or 600 s.
  Millis timeout = env_timeout("LOOM_COLLECTIVE_TIMEOUT_S", Millis(600000));
  /// Before each collective, verify through the Store that every rank calls the
  /// same op with the same sizes and dtype. Default: LOOM_COLLECTIVE_CHECK=1.
  bool check = false;
  /// Publish each rank's progress in the Store so a timeout can name the ranks
  /// that never arrived (one small store write per collective).
  bool publish_progress = true;
  /// Directory of trace files written on a timeout: LOOM_TRACE_DIR or /tmp.
  std::string trace_dir;
  /// Extra time the watchdog grants a backend past the timeout before it
  /// fails the Work itself (for a backend stuck inside a blocking call).
  Millis watchdog_grace{2000};
  /// Where gloo listens (address or interface); empty: automatic.
  std::string hostname, iface;
  /// Where rank 0's store lives. With neither hostname nor iface, gloo
  /// listens on the local address of the route there (empty: 127.0.0.1).
  std::string master_addr;
  int master_port = 0;
};

/// Fills check/trace_dir/iface/master_addr from the environment
/// (LOOM_COLLECTIVE_CHECK, LOOM_TRACE_DIR, LOOM_GLOO_IFNAME or
/// GLOO_SOCKET_IFNAME, MASTER_ADDR, MASTER_PORT).
ProcessGroupOptions default_process_group_options();

class ProcessGroup {
 public:
  /// Connects `size` ranks through `store` with the named backend. Blocks until
  /// every rank constructed its group (or the store timeout fires). `name`
  /// names the group in errors and store keys ("world" for the default group).
  ProcessGroup(std::shared_ptr<Store> store, int rank, int size, const std::string& backend,
               ProcessGroupOptions options = default_process_group_options(), std::string name = "world",
               std::vector<int> global_ranks = {});
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  const std::string& backend_name() const { return backend_name_; }
  /// World ranks of this group's members, by group rank.
  const std::vector<int>& global_ranks() const { return global_ranks_; }
  const ProcessGroupOptions& options() const { return opts_; }

  /// In-place reduction of t (any shape, contiguous) over the group.
  std::shared_ptr<Work> allreduce(Tensor t, const AllreduceOptions& o = {});
  /// in: (size * n) elements; out: n elements, gets chunk rank() of the reduction.
  std::shared_ptr<Work> reduce_scatter(Tensor out, Tensor in, const ReduceScatterOptions& o = {});
  /// out: (size * n) elements, rank-major; in: n elements.
  std::shared_ptr<Work> all_gather(Tensor out, Tensor in, const AllGatherOptions& o = {});
  /// outs[r] (n elements each, size() of them) gets rank r's in.
  std::shared_ptr<Work> all_gather(std::vector<Tensor> outs, Tensor in, const AllGatherOptions& o = {});
  /// t on o.root is copied into t on every rank.
  std::shared_ptr<Work> broadcast(Tensor t, const BroadcastOptions& o = {});
  std::shared_ptr<Work> barrier(const BarrierOptions& o = {});
  /// Point-to-point; a send must be matched by a recv with the same tag, in
  /// program order on both sides (sends do not overtake the queue).
  std::shared_ptr<Work> send(Tensor t, int dst, const SendRecvOptions& o = {});
  std::shared_ptr<Work> recv(Tensor t, int src, const SendRecvOptions& o = {});
  /// in, out: (size * n) elements; chunk j of in goes to rank j, chunk j of out
  /// comes from rank j.
  std::shared_ptr<Work> all_to_all(Tensor out, Tensor in, const AllToAllOptions& o = {});

  /// A sub-group of the given group ranks (sorted, distinct). Every rank of this
  /// group must call it with the same ranks in the same order; non-members get
  /// nullptr. Throws InvalidArgument on a bad rank list.
  std::shared_ptr<ProcessGroup> new_group(const std::vector<int>& ranks);

  /// The last 64 collectives of this rank (oldest first).
  std::vector<TraceEntry> trace() const { return trace_.snapshot(); }
  /// Collectives issued so far (the next sequence number).
  uint64_t seq() const { return next_seq_; }
  /// Writes this rank's trace to a file; returns its path. On a timeout the
  /// timeline of the last steps is written beside it (loom_timeline_*.json).
  std::string dump_trace(const std::string& reason) const;
  /// Blocks until every queued call finished (errors stay in their Works).
  void flush();

 private:
  struct Task {
    std::shared_ptr<Work> work;
    uint64_t trace_handle;
    bool collective;   // counts in the collective sequence
    std::string desc;  // "allreduce(float32, 16 elements)" for checks and errors
    Millis timeout;
    std::function<void(Millis)> run;
    std::function<void()> before;  // Backend::on_enqueue()'s, run right before `run`
    int64_t bytes = 0;             // of the input on this rank (timeline)
  };
  std::shared_ptr<Work> enqueue(const std::string& op, const Tensor& t, int peer, bool collective, Millis timeout,
                                std::function<void(Millis)> run, std::string extra = "");
  void worker_loop();
  void watchdog_loop();
  void execute(Task& task);
  void check_agreement(const Task& task);
  std::string diagnose(const Task& task);
  std::exception_ptr make_timeout(const Task& task, const std::string& cause);
  /// The collective's execution span in the timeline (tensor/trace_events.h), from t0 to now.
  void record_comm_span(const Task& task, int64_t t0) const;
  /// Writes the timeline of the last steps (the recorder's events, or this group's collective ring when tracing
  /// is off) as Chrome trace JSON next to the collective trace; returns its path.
  std::string dump_timeline() const;
  Millis effective(Millis t) const { return t.count() > 0 ? t : opts_.timeout; }

  std::shared_ptr<Store> base_store_;  // unprefixed, for sub-groups
  std::shared_ptr<Store> store_;       // "pg/<name>/"
  int rank_, size_;
  std::string backend_name_;
  ProcessGroupOptions opts_;
  std::string name_;
  std::vector<int> global_ranks_;
  std::unique_ptr<Backend> backend_;
  TraceRecorder trace_;
  std::atomic<uint64_t> next_seq_{0};
  uint64_t next_p2p_ = 0;
  int subgroups_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool stop_ = false;
  bool busy_ = false;
  std::string broken_;  // set after a timeout: later calls fail fast
  // The task the worker is running (watchdog's view).
  std::shared_ptr<Work> running_;
  std::string running_desc_;
  int64_t running_deadline_ns_ = 0;
  Task* running_task_ = nullptr;
  std::thread worker_;
  std::thread watchdog_;
};

}  // namespace loom::collectives
