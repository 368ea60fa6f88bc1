#include "tensor/profiler.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <unordered_map>
#include <utility>

namespace loom::profiler {
namespace detail {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct PtrPairHash {
  size_t operator()(const std::pair<const char*, const char*>& k) const {
    return std::hash<const void*>()(k.first) ^ (std::hash<const void*>()(k.second) * 0x9e3779b97f4a7c15ull);
  }
};

}  // namespace

/// One thread's recording: the stack of open scopes and the accumulated rows. Rows are
/// found by the (phase, name) pointers of string literals, or by name text for
/// std::string names, and merged by text in stop() (one literal may have several
/// addresses across translation units).
class Recorder {
 public:
  struct Row {
    const char* phase;
    std::string name;
    int64_t calls = 0;
    int64_t self_ns = 0;
    int64_t total_ns = 0;
  };
  struct Frame {
    size_t row;
    int64_t begin_ns;
    int64_t child_ns;  // inclusive time of the scopes closed directly inside this one
  };

  Recorder() = default;
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;
  // A thread that exits while recording: storages freed after this (static destructors)
  // must not open scopes on a destroyed recorder.
  ~Recorder();

  void clear() {
    ++epoch;
    stack.clear();
    rows.clear();
    by_ptr.clear();
    by_text.clear();
  }

  size_t row_of(const char* phase, const char* name) {
    auto [it, fresh] = by_ptr.try_emplace({phase, name}, rows.size());
    if (fresh) rows.push_back(Row{phase, name});
    return it->second;
  }
  size_t row_of(const char* phase, const std::string& name) {
    auto& names = by_text[phase];
    auto it = names.find(name);
    if (it != names.end()) return it->second;
    names.emplace(name, rows.size());
    rows.push_back(Row{phase, name});
    return rows.size() - 1;
  }

  void push(size_t row) { stack.push_back(Frame{row, now_ns(), 0}); }

  void pop(size_t depth) {
    const int64_t end = now_ns();
    // Scopes nest by construction (RAII on one thread); anything above depth is a frame
    // whose Scope never closed (it cannot happen without a bug) and is dropped.
    if (depth >= stack.size()) return;
    stack.resize(depth + 1);
    const Frame f = stack.back();
    stack.pop_back();
    const int64_t total = end - f.begin_ns;
    Row& r = rows[f.row];
    r.calls += 1;
    r.self_ns += total - f.child_ns;
    r.total_ns += total;
    if (!stack.empty()) stack.back().child_ns += total;
  }

  uint64_t epoch = 0;
  std::vector<Frame> stack;
  std::vector<Row> rows;
  std::unordered_map<std::pair<const char*, const char*>, size_t, PtrPairHash> by_ptr;
  std::unordered_map<const char*, std::unordered_map<std::string, size_t>> by_text;
};

thread_local Recorder* t_recorder = nullptr;

Recorder::~Recorder() {
  if (t_recorder == this) t_recorder = nullptr;
}

namespace {
thread_local const char* t_phase = "forward";

Recorder& this_thread_recorder() {
  thread_local Recorder r;
  return r;
}
}  // namespace

}  // namespace detail

void start() {
  detail::Recorder& r = detail::this_thread_recorder();
  r.clear();
  detail::t_recorder = &r;
}

std::vector<OpStat> stop() {
  detail::Recorder* r = detail::t_recorder;
  if (r == nullptr) return {};
  detail::t_recorder = nullptr;
  std::map<std::pair<std::string, std::string>, OpStat> merged;
  for (const auto& row : r->rows) {
    OpStat& s = merged[{row.phase, row.name}];
    s.phase = row.phase;
    s.name = row.name;
    s.calls += row.calls;
    s.self_ms += static_cast<double>(row.self_ns) * 1e-6;
    s.total_ms += static_cast<double>(row.total_ns) * 1e-6;
  }
  r->clear();
  std::vector<OpStat> out;
  out.reserve(merged.size());
  for (auto& [key, s] : merged)
    if (s.calls > 0) out.push_back(std::move(s));
  std::stable_sort(out.begin(), out.end(), [](const OpStat& a, const OpStat& b) { return a.self_ms > b.self_ms; });
  return out;
}

bool active() { return detail::t_recorder != nullptr; }

std::string format_table(const std::vector<OpStat>& stats, double wall_ms) {
  double self_sum = 0;
  for (const auto& s : stats) self_sum += s.self_ms;
  const double base = wall_ms > 0 ? wall_ms : self_sum;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-10s %-36s %8s %11s %11s %7s\n", "phase", "op", "calls", "self ms", "total ms",
                "% step");
  out += line;
  auto row = [&](const char* phase, const char* name, int64_t calls, double self, double total) {
    std::snprintf(line, sizeof line, "%-10s %-36s %8lld %11.3f %11.3f %6.1f%%\n", phase, name,
                  static_cast<long long>(calls), self, total, base > 0 ? 100.0 * self / base : 0.0);
    out += line;
  };
  for (const auto& s : stats) row(s.phase.c_str(), s.name.c_str(), s.calls, s.self_ms, s.total_ms);
  if (wall_ms > 0) row("", "(outside any scope)", 0, wall_ms - self_sum, wall_ms - self_sum);
  return out;
}

void Scope::open(const char* name) {
  detail::Recorder* r = detail::t_recorder;
  const size_t row = r->row_of(detail::t_phase, name);
  rec_ = r;
  epoch_ = r->epoch;
  depth_ = r->stack.size();
  r->push(row);
}

void Scope::open(const std::string& name) {
  detail::Recorder* r = detail::t_recorder;
  const size_t row = r->row_of(detail::t_phase, name);
  rec_ = r;
  epoch_ = r->epoch;
  depth_ = r->stack.size();
  r->push(row);
}

void Scope::close() noexcept {
  // Not counted when recording stopped, or restarted, since this scope opened.
  if (detail::t_recorder != rec_ || rec_->epoch != epoch_) return;
  rec_->pop(depth_);
}

Phase::Phase(const char* phase) : prev_(detail::t_phase) { detail::t_phase = phase; }

Phase::~Phase() { detail::t_phase = prev_; }

}  // namespace loom::profiler
