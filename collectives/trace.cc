#include "collectives/trace.h"

#include <chrono>
#include <sstream>

namespace loom::collectives {

int64_t trace_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char* trace_state_name(TraceState s) {
  switch (s) {
    case TraceState::kQueued:
      return "queued";
    case TraceState::kRunning:
      return "running";
    case TraceState::kDone:
      return "done";
    case TraceState::kFailed:
      return "failed";
  }
  return "?";
}

uint64_t TraceRecorder::record(TraceEntry e) {
  std::lock_guard<std::mutex> g(mu_);
  uint64_t h = next_++;
  ring_[h % kCapacity] = std::move(e);
  handles_[h % kCapacity] = h;
  return h;
}

TraceEntry* TraceRecorder::find(uint64_t handle) {
  size_t i = handle % kCapacity;
  return handles_[i] == handle ? &ring_[i] : nullptr;
}

void TraceRecorder::start(uint64_t handle) {
  std::lock_guard<std::mutex> g(mu_);
  if (TraceEntry* e = find(handle)) {
    e->state = TraceState::kRunning;
    e->start_ns = trace_now_ns();
  }
}

void TraceRecorder::finish(uint64_t handle, bool ok) {
  std::lock_guard<std::mutex> g(mu_);
  if (TraceEntry* e = find(handle)) {
    e->state = ok ? TraceState::kDone : TraceState::kFailed;
    e->end_ns = trace_now_ns();
  }
}

std::vector<TraceEntry> TraceRecorder::snapshot() const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<TraceEntry> out;
  uint64_t first = next_ > kCapacity ? next_ - kCapacity : 0;
  for (uint64_t h = first; h < next_; ++h) out.push_back(ring_[h % kCapacity]);
  return out;
}

std::string TraceRecorder::format() const {
  std::ostringstream os;
  os << "# seq op numel dtype peer state enqueue_ns start_ns end_ns duration_us\n";
  for (const auto& e : snapshot()) {
    os << e.seq << ' ' << e.op << ' ' << e.numel << ' ' << dtype_name(e.dtype) << ' ' << e.peer << ' '
       << trace_state_name(e.state) << ' ' << e.enqueue_ns << ' ' << e.start_ns << ' ' << e.end_ns << ' '
       << (e.end_ns > 0 && e.start_ns > 0 ? (e.end_ns - e.start_ns) / 1000 : -1) << '\n';
  }
  return os.str();
}

}  // namespace loom::collectives
