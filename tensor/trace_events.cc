#include "tensor/trace_events.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>

namespace loom::trace {

namespace detail {
std::atomic<bool> g_enabled{false};
}

namespace {

// One buffer per thread, registered once; the owner appends under its own
// (uncontended) mutex, collect() takes each in turn.
struct ThreadBuffer {
  std::mutex mu;
  int tid = 0;
  std::string name;
  std::vector<Event> events;
};

struct Registry {
  std::mutex mu;
  std::vector<std::shared_ptr<ThreadBuffer>> buffers;  // kept after a thread ends: its events stay exportable
  int next_tid = 1;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: threads may record during static destruction
  return *r;
}

ThreadBuffer& local_buffer() {
  thread_local std::shared_ptr<ThreadBuffer> buf = [] {
    auto b = std::make_shared<ThreadBuffer>();
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    b->tid = r.next_tid++;
    r.buffers.push_back(b);
    return b;
  }();
  return *buf;
}

struct OpenSpan {
  std::string name;
  const char* cat;
  int depth;
  int64_t begin_ns;
  std::string path;
};

bool below(const std::string& path, const std::string& ancestor) {
  return ancestor.empty() || (path.size() > ancestor.size() && path.compare(0, ancestor.size(), ancestor) == 0 &&
                              path[ancestor.size()] == '.');
}
thread_local std::vector<OpenSpan> t_open;
void close_spans_at(int depth, int64_t t);  // closes the open spans of depth >= depth at time t

}  // namespace

int64_t Event::num_arg(const std::string& key, int64_t fallback) const {
  for (const auto& a : args)
    if (a.key == key && a.is_num) return a.num;
  return fallback;
}

std::string Event::str_arg(const std::string& key) const {
  for (const auto& a : args)
    if (a.key == key && !a.is_num) return a.str;
  return "";
}

void set_enabled(bool on) { detail::g_enabled.store(on, std::memory_order_relaxed); }

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int thread_id() { return local_buffer().tid; }

void set_thread_name(const std::string& name) {
  ThreadBuffer& b = local_buffer();
  std::lock_guard<std::mutex> g(b.mu);
  b.name = name;
}

void record(Event e) {
  if (!enabled()) return;
  ThreadBuffer& b = local_buffer();
  e.tid = b.tid;
  std::lock_guard<std::mutex> g(b.mu);
  b.events.push_back(std::move(e));
}

void record_span(std::string name, const char* cat, int64_t begin_ns, int64_t end_ns, std::vector<Arg> args) {
  if (!enabled()) return;
  Event e;
  e.name = std::move(name);
  e.cat = cat;
  e.ts_ns = begin_ns;
  e.dur_ns = std::max<int64_t>(0, end_ns - begin_ns);
  e.args = std::move(args);
  record(std::move(e));
}

void record_instant(std::string name, const char* cat, std::vector<Arg> args) {
  if (!enabled()) return;
  Event e;
  e.name = std::move(name);
  e.cat = cat;
  e.ph = 'i';
  e.ts_ns = now_ns();
  e.args = std::move(args);
  record(std::move(e));
}

std::vector<Event> collect() {
  std::vector<std::shared_ptr<ThreadBuffer>> bufs;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    bufs = r.buffers;
  }
  std::vector<Event> out;
  for (auto& b : bufs) {
    std::lock_guard<std::mutex> g(b->mu);
    out.insert(out.end(), b->events.begin(), b->events.end());
  }
  // Parents before children at equal begin times: longer spans first.
  std::stable_sort(out.begin(), out.end(), [](const Event& a, const Event& b) {
    return a.ts_ns != b.ts_ns ? a.ts_ns < b.ts_ns : a.dur_ns > b.dur_ns;
  });
  return out;
}

std::vector<std::pair<int, std::string>> thread_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  std::vector<std::pair<int, std::string>> out;
  for (auto& b : r.buffers) {
    std::lock_guard<std::mutex> g2(b->mu);
    if (!b->name.empty()) out.emplace_back(b->tid, b->name);
  }
  return out;
}

void clear() { drop_before(INT64_MAX); }

void drop_before(int64_t t_ns) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  for (auto& b : r.buffers) {
    std::lock_guard<std::mutex> g2(b->mu);
    auto& ev = b->events;
    ev.erase(std::remove_if(ev.begin(), ev.end(), [&](const Event& e) { return e.end_ns() < t_ns; }), ev.end());
  }
}

void Span::begin(std::string name, const char* cat) {
  active_ = true;
  name_ = std::move(name);
  cat_ = cat;
  begin_ns_ = now_ns();
}

void Span::end() { record_span(std::move(name_), cat_, begin_ns_, now_ns(), std::move(args_)); }

void open_span(std::string name, const char* cat, int depth, const std::string& path) {
  if (!enabled()) return;
  std::vector<OpenSpan> kept;  // descendants on top of the stack, innermost first
  while (!t_open.empty() && t_open.back().depth >= depth && below(t_open.back().path, path)) {
    kept.push_back(std::move(t_open.back()));
    t_open.pop_back();
  }
  const int64_t t = now_ns();
  if (!t_open.empty() && t_open.back().depth >= depth) {
    // A finished sibling subtree is below: the kept spans began inside it, so they end with it.
    for (auto& k : kept) record_span(std::move(k.name), k.cat, k.begin_ns, t);
    kept.clear();
    close_spans_at(depth, t);
  }
  const int64_t begin = kept.empty() ? t : kept.back().begin_ns;
  t_open.push_back(OpenSpan{std::move(name), cat, depth, begin, path});
  for (auto it = kept.rbegin(); it != kept.rend(); ++it) t_open.push_back(std::move(*it));
}

void close_spans(int depth) { close_spans_at(depth, now_ns()); }

namespace {
void close_spans_at(int depth, int64_t t) {
  while (!t_open.empty() && t_open.back().depth >= depth) {
    record_span(std::move(t_open.back().name), t_open.back().cat, t_open.back().begin_ns, t);
    t_open.pop_back();
  }
}
}  // namespace

size_t open_spans() { return t_open.size(); }

void close_to(size_t n) {
  const int64_t t = now_ns();
  while (t_open.size() > n) {
    record_span(std::move(t_open.back().name), t_open.back().cat, t_open.back().begin_ns, t);
    t_open.pop_back();
  }
}

}  // namespace loom::trace
