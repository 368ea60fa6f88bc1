// loom's per-op profiler: a table of time per (phase, op) for a stretch of work on one
// thread, the CPU counterpart of torch.profiler's key_averages() table. Ops, autograd
// nodes, the allocator and the optimizers open a Scope; between start() and stop() each
// Scope on the recording thread adds its inclusive time (total) and its time minus the
// scopes nested in it (self) to its row. Phase ("forward", "backward", "optimizer") is set
// by the autograd engine and the optimizers with Phase.
//
// Cost when off: one thread-local pointer test per Scope; while recording, two steady-clock
// reads and a hash lookup per Scope (~0.1 us on the 2-core VM). Only the thread that called
// start() records: OpenMP workers inside an op, and any other thread, open no scopes (their
// time is inside the op that started them). Not for CUDA ops: their kernels run
// asynchronously, so a Scope there times the launch, not the kernel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loom::profiler {

/// One row of the table: every Scope of one name opened while one phase was current.
struct OpStat {
  std::string phase;    // "forward", "backward" or "optimizer" (the phase the op ran in)
  std::string name;     // the scope's name ("linear", "gelu_backward", "LinearBackward", "alloc", ...)
  int64_t calls = 0;    // scopes closed
  double self_ms = 0;   // time inside this scope minus time inside scopes nested in it
  double total_ms = 0;  // inclusive (a scope nested in one of its own name counts twice here)
};

/// Begins recording on the calling thread, clearing what was recorded before (also when
/// already recording: scopes open at this point are then not counted).
void start();
/// Ends recording on the calling thread and returns the stats sorted by self_ms, largest
/// first (ties by phase, then name). Scopes still open are not counted. Empty when this
/// thread was not recording.
std::vector<OpStat> stop();
/// Whether the calling thread is recording.
bool active();

/// The stats as a text table (phase, op, calls, self ms, total ms, % of the step), one row
/// per stat in the given order. With wall_ms > 0, the share is of wall_ms and a last row
/// "(outside any scope)" holds wall_ms minus the sum of self times; otherwise the share is
/// of the sum of self times.
std::string format_table(const std::vector<OpStat>& stats, double wall_ms = 0.0);

namespace detail {
class Recorder;
/// The calling thread's recorder while it records, else null (the hot-path test).
extern thread_local Recorder* t_recorder;
}  // namespace detail

/// Times one op on the calling thread (RAII); when not recording it costs one
/// thread-local pointer test. A const char* name must outlive the recording (pass a
/// string literal, or use the std::string overload).
class Scope {
 public:
  explicit Scope(const char* name) {
    if (detail::t_recorder != nullptr) [[unlikely]]
      open(name);
  }
  explicit Scope(const std::string& name) {
    if (detail::t_recorder != nullptr) [[unlikely]]
      open(name);
  }
  ~Scope() {
    if (rec_ != nullptr) [[unlikely]]
      close();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void open(const char* name);
  void open(const std::string& name);
  void close() noexcept;
  detail::Recorder* rec_ = nullptr;  // set only when this scope opened a frame
  uint64_t epoch_ = 0;               // the recording it belongs to (start() begins a new one)
  size_t depth_ = 0;                 // its index on the recorder's stack
};

/// Sets the calling thread's phase while it lives ("backward", "optimizer"; the default
/// is "forward") and restores the previous one. phase must be a string literal (or outlive
/// the recording). Scopes take the phase current when they open.
class Phase {
 public:
  explicit Phase(const char* phase);
  ~Phase();
  Phase(const Phase&) = delete;
  Phase& operator=(const Phase&) = delete;

 private:
  const char* prev_;
};

}  // namespace loom::profiler
