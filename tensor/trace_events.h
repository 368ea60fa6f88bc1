// The timeline recorder: spans (module forward/backward, optimizer, data, each
// collective's execution, every wait on one) and instants (a collective's
// enqueue) from every thread of this process, on one steady clock, written as
// Chrome trace event JSON (what Perfetto and chrome://tracing open). Off by
// default; when off, recording costs one relaxed atomic load. Low in the stack
// so collectives/, nn/, parallel/ and recipes/ all emit into the same timeline
// without knowing each other.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace loom::trace {

/// A named argument of an event: an integer or a string.
struct Arg {
  std::string key;
  std::string str;
  int64_t num = 0;
  bool is_num = false;
};

/// One event. ts_ns is steady-clock nanoseconds of this process (see now_ns);
/// rank is filled in when events are exported (chrome "pid").
struct Event {
  std::string name;   // "forward transformer.h.0", "allreduce", "wait allreduce"
  std::string cat;    // kForward, kBackward, kComm, kEnqueue, kWait, kStep, ...
  char ph = 'X';      // 'X': a span of dur_ns; 'i': an instant
  int tid = 0;        // recorder thread id (thread_id())
  int rank = 0;       // set on export / import
  int64_t ts_ns = 0;  // begin
  int64_t dur_ns = 0;
  std::vector<Arg> args;
  /// The integer argument `key`, or `fallback` when absent.
  int64_t num_arg(const std::string& key, int64_t fallback = -1) const;
  /// The string argument `key`, or "" when absent.
  std::string str_arg(const std::string& key) const;
  int64_t end_ns() const { return ts_ns + dur_ns; }
};

// Categories the analysis relies on.
inline constexpr const char* kForward = "forward";
inline constexpr const char* kBackward = "backward";
inline constexpr const char* kComm = "comm";        // a collective executing on its group's worker thread
inline constexpr const char* kEnqueue = "enqueue";  // instant: a collective issued on the caller's thread
inline constexpr const char* kWait = "wait";        // the caller blocked in Work::wait
inline constexpr const char* kStep = "step";        // optimizer, data, checkpoint, the step itself

namespace detail {
extern std::atomic<bool> g_enabled;
}

/// Whether events are being recorded (one relaxed load: the hot-path check).
inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }
/// Turns recording on or off (events already recorded are kept).
void set_enabled(bool on);
/// Steady-clock now in nanoseconds (CLOCK_MONOTONIC: comparable across the processes of one machine).
int64_t now_ns();

/// A small id of the calling thread, stable for its life (1, 2, ... in order of first use).
int thread_id();
/// Names the calling thread in the exported timeline ("train", "comm world").
void set_thread_name(const std::string& name);

/// Appends an event from the calling thread (its tid is set here). No-op when disabled.
void record(Event e);
/// Records a span [begin_ns, end_ns) on the calling thread.
void record_span(std::string name, const char* cat, int64_t begin_ns, int64_t end_ns, std::vector<Arg> args = {});
/// Records an instant on the calling thread.
void record_instant(std::string name, const char* cat, std::vector<Arg> args = {});

inline Arg num(std::string key, int64_t v) { return Arg{std::move(key), {}, v, true}; }
inline Arg str(std::string key, std::string v) { return Arg{std::move(key), std::move(v), 0, false}; }

/// Every recorded event of this process (all threads), sorted by begin time.
std::vector<Event> collect();
/// Names given with set_thread_name, by thread id.
std::vector<std::pair<int, std::string>> thread_names();
/// Drops every recorded event.
void clear();
/// Drops the events that ended before t_ns (keeps a ring of the last steps).
void drop_before(int64_t t_ns);

/// A span from construction to destruction on the calling thread; records
/// nothing when tracing was off at construction. Spans of one thread nest.
class Span {
 public:
  Span(const char* name, const char* cat) {
    if (enabled()) begin(name, cat);
  }
  /// An empty name records nothing (for callers that trace only some objects).
  Span(const std::string& name, const char* cat) {
    if (enabled() && !name.empty()) begin(name, cat);
  }
  ~Span() {
    if (active_) end();
  }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  /// Adds an argument (ignored when inactive).
  void arg(Arg a) {
    if (active_) args_.push_back(std::move(a));
  }

 private:
  void begin(std::string name, const char* cat);
  void end();
  bool active_ = false;
  std::string name_;
  const char* cat_ = "";
  int64_t begin_ns_ = 0;
  std::vector<Arg> args_;
};

/// Spans opened and closed by events rather than scopes (module backward: it
/// starts in a gradient hook and ends when a module at the same or an outer
/// depth starts, or the backward pass ends). A per-thread stack keeps them nested.
/// `path` is the dotted module path ("" for the root): open spans on top of the
/// stack whose path lies below it (a child whose output is also this module's,
/// so its hook fired first) are kept and moved inside the new span.
void open_span(std::string name, const char* cat, int depth, const std::string& path = "");
/// Closes (records) the open spans of depth >= depth, innermost first.
void close_spans(int depth);
/// Number of spans open on this thread; close_to(n) closes down to n of them.
size_t open_spans();
void close_to(size_t n);

}  // namespace loom::trace
