#include "recipes/trace_window.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tensor/error.h"
#include "tensor/ops.h"

namespace loom::recipes {

namespace {

int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LOOM_CHECK_T(IoError, f.good(), "trace: cannot read ", path,
               " (every rank writes its trace there; is the run directory on a file system all ranks share?)");
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc | std::ios::binary);
  f << text;
  f.close();
  LOOM_CHECK_T(IoError, f.good(), "trace: cannot write ", path, "; check that the run directory is writable");
}

}  // namespace

TraceWindow::TraceWindow(collectives::ProcessGroup& world, int64_t from, int64_t to, std::string dir, nn::Module* model,
                         int module_depth)
    : world_(world), from_(from), to_(to), dir_(std::move(dir)) {
  if (from_ <= 0) return;
  LOOM_CHECK(to_ >= from_, "TraceWindow: steps [", from_, ", ", to_, "] are not a range with from <= to");
  if (model) nn::set_trace_names(*model, module_depth);
  trace::set_thread_name("train");
  // Each rank's steady clock onto its wall clock (NTP keeps hosts within about a millisecond; on one host this is
  // exact), then the earliest rank's start as 0. The smallest (wall - steady) of a few reads is the least disturbed.
  int64_t off = INT64_MAX;
  for (int i = 0; i < 5; ++i) {
    const int64_t s = trace::now_ns();
    const int64_t w = wall_ns();
    off = std::min(off, w - s);
  }
  Tensor t = ops::full({1}, static_cast<double>(trace::now_ns() + off), DType::f64);
  world_.allreduce(t, {collectives::ReduceOp::kMin})->wait();
  const auto base = static_cast<int64_t>(t.item<double>());
  offset_ns_ = off - base;
  std::filesystem::create_directories(dir_);
}

void TraceWindow::begin_step(int64_t step) {
  if (from_ <= 0) return;
  if (!on_ && !done_ && step >= from_ && step <= to_) {  // >=: a run resumed inside the window
    trace::clear();
    trace::set_enabled(true);
    on_ = true;
  }
  step_begin_ns_ = trace::now_ns();
}

std::optional<trace::ExposedComm> TraceWindow::end_step(int64_t step) {
  if (!on_) return std::nullopt;
  const int64_t end = trace::now_ns();
  trace::record_span("step " + std::to_string(step), trace::kStep, step_begin_ns_, end, {trace::num("step", step)});
  const trace::ExposedComm x = trace::exposed_comm(trace::collect(), step_begin_ns_, end);
  if (step >= to_) finish();
  return x;
}

void TraceWindow::finish() {
  if (!on_) return;
  trace::set_enabled(false);
  on_ = false;
  done_ = true;
  write();
  trace::clear();
}

void TraceWindow::write() {
  const int rank = world_.rank(), W = world_.size();
  const std::string mine = dir_ + "/trace_rank" + std::to_string(rank) + ".json";
  write_file(mine, trace::to_chrome_json(trace::collect(), rank, trace::thread_names(), offset_ns_));
  world_.barrier()->wait();
  if (rank != 0) return;
  std::vector<std::string> docs;
  for (int r = 0; r < W; ++r) docs.push_back(read_file(dir_ + "/trace_rank" + std::to_string(r) + ".json"));
  const std::string merged = trace::merge_chrome_json(docs);
  merged_path_ = dir_ + "/trace.json";
  write_file(merged_path_, merged);
  std::vector<trace::Event> all;
  for (int r = 0; r < W; ++r) {
    auto ev = trace::from_chrome_json(docs[static_cast<size_t>(r)], "the trace of rank " + std::to_string(r));
    all.insert(all.end(), ev.begin(), ev.end());
  }
  report_ = trace::find_straggler(all, W);
}

}  // namespace loom::recipes
