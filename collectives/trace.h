// The collective trace: each group records its last 64 collectives (op,
// sequence number, sizes, dtype, enqueue/start/end times) in a ring buffer.
// Always on; read by tests (overlap checks) and written out on a timeout.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace loom::collectives {

enum class TraceState { kQueued, kRunning, kDone, kFailed };

/// One recorded call. Times are steady-clock nanoseconds (CLOCK_MONOTONIC, so
/// comparable across processes on one machine); 0 when not reached yet.
struct TraceEntry {
  uint64_t seq = 0;   // collective sequence number (p2p ops have their own counter)
  std::string op;     // "allreduce", "all_gather", "send", ...
  int64_t numel = 0;  // elements of the input on this rank
  DType dtype = DType::f32;
  int peer = -1;  // root for broadcast, peer for send/recv, else -1
  TraceState state = TraceState::kQueued;
  int64_t enqueue_ns = 0, start_ns = 0, end_ns = 0;
};

/// Steady-clock now, in nanoseconds.
int64_t trace_now_ns();
const char* trace_state_name(TraceState s);

/// Fixed-capacity ring of TraceEntry. Thread-safe.
class TraceRecorder {
 public:
  static constexpr size_t kCapacity = 64;
  /// Records a queued call; returns a handle for start/finish.
  uint64_t record(TraceEntry e);
  void start(uint64_t handle);
  void finish(uint64_t handle, bool ok);
  /// The retained entries, oldest first.
  std::vector<TraceEntry> snapshot() const;
  /// One line per entry: "seq op numel dtype state start end duration".
  std::string format() const;

 private:
  TraceEntry* find(uint64_t handle);
  mutable std::mutex mu_;
  std::vector<TraceEntry> ring_ = std::vector<TraceEntry>(kCapacity);
  std::vector<uint64_t> handles_ = std::vector<uint64_t>(kCapacity, UINT64_MAX);
  uint64_t next_ = 0;
};

}  // namespace loom::collectives
