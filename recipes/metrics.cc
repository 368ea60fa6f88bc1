#include "recipes/metrics.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "tensor/error.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace loom::recipes {

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// A JSON number, or null for NaN/inf.
std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

}  // namespace

std::optional<double> gpu_peak_flops(const std::string& name, const std::string& precision) {
  // Dense tensor-core peaks (TFLOP/s), no structured sparsity. Order matters: "h100 pcie" before "h100".
  struct Row {
    const char* key;
    double bf16, f32;
  };
  static const Row kTable[] = {
      {"h200", 989.0, 494.0}, {"h100 pcie", 756.0, 378.0}, {"h100", 989.0, 494.0}, {"a100", 312.0, 156.0},
      {"l40s", 362.0, 183.0}, {"a10g", 70.0, 35.0},        {"v100", 125.0, 15.7},
  };
  const std::string n = lower(name);
  const std::string p = lower(precision);
  if (p != "bf16" && p != "f32") return std::nullopt;
  for (const Row& r : kTable)
    if (n.find(r.key) != std::string::npos) return (p == "bf16" ? r.bf16 : r.f32) * 1e12;
  return std::nullopt;
}

double measure_cpu_peak_flops() {
  // 384^3 sgemms are large enough for the BLAS to reach its steady rate and small enough that a few of them take
  // about 0.1 s on one core; the best run discounts a preempted one.
  constexpr int64_t n = 384;
  Generator gen(7);
  Tensor a = ops::randn({n, n}, gen), b = ops::randn({n, n}, gen);
  (void)ops::matmul(a, b);  // warm-up: thread pool, page faults
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    Tensor c = ops::matmul(a, b);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0) best = std::max(best, 2.0 * n * n * n / s);
  }
  return best;
}

namespace {
/// The largest per-rank peak and its rank; rank 0's own peak when the ranks' peaks are not known.
std::pair<int64_t, int> max_peak(const StepMetrics& m) {
  if (m.rank_peak_mem_bytes.empty()) return {m.peak_mem_bytes, 0};
  auto it = std::max_element(m.rank_peak_mem_bytes.begin(), m.rank_peak_mem_bytes.end());
  return {*it, static_cast<int>(it - m.rank_peak_mem_bytes.begin())};
}
}  // namespace

std::string metrics_json(const StepMetrics& m) {
  std::ostringstream os;
  const auto [peak_max, peak_rank] = max_peak(m);
  os << "{\"step\":" << m.step << ",\"loss\":" << num(m.loss) << ",\"lr\":" << num(m.lr)
     << ",\"grad_norm\":" << num(m.grad_norm) << ",\"tokens_per_s\":" << num(m.tokens_per_s)
     << ",\"mfu\":" << num(m.mfu) << ",\"mem_bytes\":" << m.mem_bytes << ",\"peak_mem_bytes\":" << m.peak_mem_bytes
     << ",\"peak_mem_bytes_max\":" << peak_max << ",\"peak_mem_rank\":" << peak_rank;
  if (!m.rank_peak_mem_bytes.empty() && m.rank_peak_mem_bytes.size() <= 64) {
    os << ",\"peak_mem_by_rank\":[";
    for (size_t i = 0; i < m.rank_peak_mem_bytes.size(); ++i) os << (i ? "," : "") << m.rank_peak_mem_bytes[i];
    os << "]";
  }
  os << ",\"step_time_s\":" << num(m.step_time_s);
  if (!m.rank_step_time_s.empty()) {
    auto [mn, mx] = std::minmax_element(m.rank_step_time_s.begin(), m.rank_step_time_s.end());
    os << ",\"step_time_max_s\":" << num(*mx) << ",\"step_time_min_s\":" << num(*mn)
       << ",\"slowest_rank\":" << (mx - m.rank_step_time_s.begin());
    if (m.rank_step_time_s.size() <= 64) {
      os << ",\"step_time_by_rank\":[";
      for (size_t i = 0; i < m.rank_step_time_s.size(); ++i) os << (i ? "," : "") << num(m.rank_step_time_s[i]);
      os << "]";
    }
  }
  if (m.eval_loss) os << ",\"eval_loss\":" << num(*m.eval_loss);
  if (m.comm)
    os << ",\"comm_s\":" << num(m.comm->comm_s) << ",\"comm_blocked_s\":" << num(m.comm->blocked_s)
       << ",\"comm_hidden_s\":" << num(m.comm->hidden_s) << ",\"comm_hidden_frac\":" << num(m.comm->hidden_frac);
  os << "}";
  return os.str();
}

std::string format_duration(double s) {
  char buf[32];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 10) {
    std::snprintf(buf, sizeof(buf), "%.1fs", s);
  } else if (s < 60) {
    std::snprintf(buf, sizeof(buf), "%.0fs", s);
  } else if (s < 3600) {
    auto t = static_cast<long long>(s + 0.5);
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", t / 60, t % 60);
  } else {
    auto t = static_cast<long long>(s / 60 + 0.5);
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", t / 60, t % 60);
  }
  return buf;
}

std::string format_bytes(int64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) {
    std::snprintf(buf, sizeof(buf), "%lld B", static_cast<long long>(bytes));
  } else if (b < 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024));
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024 * 1024));
  }
  return buf;
}

std::string format_count(double v) {
  char buf[32];
  if (!std::isfinite(v)) return "?";
  if (v < 1e3) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  } else if (v < 1e6) {
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  } else if (v < 1e9) {
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2fG", v / 1e9);
  }
  return buf;
}

std::string console_line(const StepMetrics& m, int64_t total_steps, double eta_s) {
  char buf[512];
  int n = std::snprintf(buf, sizeof(buf), "step %lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s",
                        static_cast<long long>(m.step), static_cast<long long>(total_steps), m.loss, m.lr, m.grad_norm,
                        format_count(m.tokens_per_s).c_str());
  std::string s(buf, static_cast<size_t>(std::max(0, n)));
  if (m.mfu > 0) {
    std::snprintf(buf, sizeof(buf), " | MFU %.1f%%", 100.0 * m.mfu);
    s += buf;
  }
  s += " | mem " + format_bytes(m.mem_bytes) + " peak " + format_bytes(m.peak_mem_bytes);
  if (m.rank_peak_mem_bytes.size() > 1) {
    const auto [peak_max, peak_rank] = max_peak(m);
    s += " (max " + format_bytes(peak_max) + " r" + std::to_string(peak_rank) + ")";
  }
  std::snprintf(buf, sizeof(buf), " | step %.0f ms", 1e3 * m.step_time_s);
  s += buf;
  if (m.rank_step_time_s.size() > 1) {
    auto [mn, mx] = std::minmax_element(m.rank_step_time_s.begin(), m.rank_step_time_s.end());
    std::snprintf(buf, sizeof(buf), " (ranks %.0f-%.0f ms, slowest r%d)", 1e3 * *mn, 1e3 * *mx,
                  static_cast<int>(mx - m.rank_step_time_s.begin()));
    s += buf;
  }
  if (m.eval_loss) {
    std::snprintf(buf, sizeof(buf), " | eval loss %.4f", *m.eval_loss);
    s += buf;
  }
  if (m.comm) {
    std::snprintf(buf, sizeof(buf), " | comm %.0f ms, blocked %.0f ms, %.0f%% hidden", 1e3 * m.comm->comm_s,
                  1e3 * m.comm->blocked_s, 100 * m.comm->hidden_frac);
    s += buf;
  }
  s += " | ETA " + format_duration(eta_s);
  return s;
}

std::string progress_bar(int64_t step, int64_t total_steps, double loss, double eta_s, int width) {
  const double frac = total_steps > 0 ? std::clamp(static_cast<double>(step) / total_steps, 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(frac * width + 0.5);
  std::string bar;
  bar.reserve(static_cast<size_t>(width) + 2);
  bar.push_back('[');
  bar.append(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  bar.push_back(']');
  char buf[160];
  std::snprintf(buf, sizeof(buf), " %lld/%lld %3.0f%% | loss %.4f | ETA %s", static_cast<long long>(step),
                static_cast<long long>(total_steps), 100.0 * frac, loss, format_duration(eta_s).c_str());
  return bar + buf;
}

std::optional<int64_t> metrics_line_step(const std::string& line) {
  const std::string key = "\"step\":";
  auto p = line.find(key);
  if (p == std::string::npos) return std::nullopt;
  p += key.size();
  while (p < line.size() && line[p] == ' ') ++p;
  size_t end = p;
  while (end < line.size() && std::isdigit(static_cast<unsigned char>(line[end]))) ++end;
  if (end == p) return std::nullopt;
  return std::stoll(line.substr(p, end - p));
}

MetricsFile::MetricsFile(const std::string& path, std::optional<int64_t> resume_step) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  std::vector<std::string> keep;
  if (resume_step) {
    // Steps logged after the checkpoint we resume from are trained (and logged) again: drop them so the file reads
    // as one run.
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      auto s = metrics_line_step(line);
      if (s && *s <= *resume_step) keep.push_back(line);
    }
  }
  out_.open(path, std::ios::out | std::ios::trunc);
  LOOM_CHECK_T(IoError, out_.good(), "metrics file ", path,
               ": cannot open for writing; set logging.metrics_file to a writable path");
  for (const auto& l : keep) out_ << l << '\n';
  out_.flush();
}

void MetricsFile::write(const std::string& json_line) {
  out_ << json_line << '\n';
  out_.flush();
  LOOM_CHECK_T(IoError, out_.good(), "metrics file ", path_, ": write failed (disk full?)");
}

}  // namespace loom::recipes
