// Work: the handle a ProcessGroup call returns at once. The collective runs on
// the group's worker thread; wait() blocks until it finished or failed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>

#include "collectives/types.h"

namespace loom::collectives {

class Work {
 public:
  /// `group` names the process group (for the timeline's wait spans).
  Work(std::string op, uint64_t seq, std::string group = "")
      : op_(std::move(op)), seq_(seq), group_(std::move(group)) {}

  /// True once the collective finished, successfully or not (never blocks).
  bool is_completed() const;
  /// Blocks until completion; with tracing on (tensor/trace_events.h) records
  /// the time blocked as a "wait" span carrying op, group and seq. Rethrows the collective's error (Timeout,
  /// CommError, InvalidArgument). Throws Timeout naming op and sequence number
  /// if it is still running after `timeout` (the collective itself goes on).
  void wait(Millis timeout = Millis::max());
  /// The error the collective failed with; null while running or on success.
  std::exception_ptr exception() const;
  /// Op name ("allreduce", ...) and sequence number within its group.
  const std::string& op() const { return op_; }
  uint64_t seq() const { return seq_; }

  /// Marks the work finished (error null on success). Later calls are ignored,
  /// so the watchdog and the worker may race to finish it.
  void finish(std::exception_ptr error = nullptr);

 private:
  std::string op_;
  uint64_t seq_;
  std::string group_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

}  // namespace loom::collectives
