// Times a full GPT-2 training step (forward, backward, AdamW) in loom and the
// same model in PyTorch (torch_gpt2_step.py), each on 1 thread and on all the
// cores: the fastest thread count differs between the two (PyTorch can be
// fastest on one thread where loom is fastest on all), so it reports each pair
// and loom's best against PyTorch's best. Every run is a fresh process with
// OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set (OpenBLAS reads its thread count
// once, at load). Prints one line per figure, then the rows of README's table
// and the command that made them.
//
// Usage: bench_gpt2_step [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]
//        (default 6 384 6 256 8 4096 5; "all the cores": those this process may run on)
// Internal: bench_gpt2_step --loom-only THREADS LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS (one loom run, as the
// parent starts it).
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "tensor/cpu/blas_core.h"

using namespace loom;

namespace {

struct BenchShape {
  int64_t L, C, H, T, B, V, steps;
  std::string args() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%lld %lld %lld %lld %lld %lld %lld", (long long)L, (long long)C, (long long)H,
                  (long long)T, (long long)B, (long long)V, (long long)steps);
    return buf;
  }
};

/// One loom run in this process: prints the model line and `loom threads=N tokens_per_s=X step_ms=Y`.
int run_loom(const BenchShape& s) {
  nn::GPT2Config cfg;
  cfg.n_layer = s.L;
  cfg.n_embd = s.C;
  cfg.n_head = s.H;
  cfg.n_positions = s.T;
  cfg.vocab_size = s.V;
  Generator gen(0);
  nn::GPT2 model(cfg, gen);
  nn::AdamWOptions opts;
  opts.lr = 1e-4;
  opts.weight_decay = 0.1;
  nn::AdamW opt(model.parameters(), opts);
  Tensor idx = ops::randint(0, s.V, {s.B, s.T}, gen);
  Tensor tgt = ops::randint(0, s.V, {s.B, s.T}, gen);

  std::vector<double> times;
  for (int64_t i = 0; i < s.steps + 2; ++i) {  // two warm-up steps
    auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    Tensor loss = model.loss(idx, tgt);
    loss.backward();
    opt.step();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) times.push_back(sec);
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  std::printf(
      "model: GPT-2 %lld layers, width %lld, %lld heads, seq %lld, batch %lld, vocab %lld, %.1fM params; median of "
      "%lld steps after 2 warm-up steps\n",
      (long long)s.L, (long long)s.C, (long long)s.H, (long long)s.T, (long long)s.B, (long long)s.V,
      static_cast<double>(model.num_parameters()) / 1e6, (long long)s.steps);
  const std::string& res = detail::blas_core_reselected();
  std::printf("loom threads=%d tokens_per_s=%.1f step_ms=%.2f openblas=%s%s%s\n", omp_get_max_threads(),
              static_cast<double>(s.B * s.T) / med, med * 1e3, detail::blas_core_name().c_str(),
              res.empty() ? "" : " reselected:", res.c_str());
  return 0;
}

/// A shell word that reads back as s.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// Runs `cmd` with threads set, echoes the lines that start with one of `echo`, and returns the tokens/s of the line
/// that starts with `prefix` (`loom ` or `torch `), or nothing when the run printed none.
std::optional<double> run_child(const std::string& cmd, int threads, const std::string& prefix,
                                const std::vector<std::string>& echo) {
  const std::string t = std::to_string(threads);
  const std::string full =
      "env OMP_NUM_THREADS=" + t + " OPENBLAS_NUM_THREADS=" + t + " MKL_NUM_THREADS=" + t + " " + cmd + " 2>&1";
  std::fflush(stdout);
  FILE* p = popen(full.c_str(), "r");
  if (!p) return std::nullopt;
  std::optional<double> rate;
  std::string tail;  // the child's other output, shown when it printed no figure
  char line[1024];
  while (std::fgets(line, sizeof line, p)) {
    const std::string l = line;
    double v = 0;
    if (l.rfind(prefix, 0) == 0) {
      const char* at = std::strstr(line, "tokens_per_s=");
      if (at && std::sscanf(at, "tokens_per_s=%lf", &v) == 1) rate = v;
    }
    bool shown = false;
    for (const auto& e : echo)
      if (l.rfind(e, 0) == 0) {
        std::fputs(line, stdout);
        shown = true;
        break;
      }
    if (!shown) tail += l;
    if (tail.size() > 2000) tail.erase(0, tail.size() - 2000);
  }
  const int status = pclose(p);
  if (!rate || status != 0) {
    std::printf("%s threads=%d failed (exit status %d)%s%s", prefix.substr(0, prefix.size() - 1).c_str(), threads,
                status, tail.empty() ? "" : "; its output ended:\n", tail.c_str());
    if (!tail.empty() && tail.back() != '\n') std::printf("\n");
    return std::nullopt;
  }
  return rate;
}

std::string cell(const std::optional<double>& v) {
  char buf[32];
  if (!v) return "n/a";
  std::snprintf(buf, sizeof buf, "%.0f", *v);
  return buf;
}

std::string ratio(const std::optional<double>& a, const std::optional<double>& b) {
  char buf[32];
  if (!a || !b || *b <= 0) return "n/a";
  std::snprintf(buf, sizeof buf, "%.2f", *a / *b);
  return buf;
}

std::string threads_word(int n) { return std::to_string(n) + (n == 1 ? " thread" : " threads"); }

}  // namespace

int main(int argc, char** argv) {
  const bool child = argc >= 3 && std::strcmp(argv[1], "--loom-only") == 0;
  const int first = child ? 3 : 1;
  std::vector<int64_t> a = {6, 384, 6, 256, 8, 4096, 5};
  for (int i = first; i < argc && i - first < 7; ++i) {
    char* end = nullptr;
    const long long v = std::strtoll(argv[i], &end, 10);
    if (*argv[i] == '\0' || *end != '\0' || v < 1) {
      std::fprintf(stderr,
                   "bench_gpt2_step: argument %d is '%s', expected a positive integer\n"
                   "usage: bench_gpt2_step [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]\n",
                   i - first + 1, argv[i]);
      return 2;
    }
    a[static_cast<size_t>(i - first)] = v;
  }
  const BenchShape s{a[0], a[1], a[2], a[3], a[4], a[5], a[6]};
  if (child) return run_loom(s);

  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    std::fprintf(stderr, "bench_gpt2_step: cannot find its own executable (/proc/self/exe): %s\n",
                 std::strerror(errno));
    return 1;
  }
  self[n] = '\0';
  const int all = std::max(1, omp_get_num_procs());
  std::vector<int> counts = {1};
  if (all > 1) counts.push_back(all);

  std::printf("command: %s %s\n", argv[0], s.args().c_str());
  struct Pair {
    int threads;
    std::optional<double> loom, torch;
  };
  std::vector<Pair> pairs;
  bool model_shown = false;
  for (int t : counts) {
    Pair p{t, std::nullopt, std::nullopt};
    std::vector<std::string> echo = {"loom "};
    if (!model_shown) echo.push_back("model: ");
    p.loom = run_child(quoted(self) + " --loom-only " + std::to_string(t) + " " + s.args(), t, "loom ", echo);
    model_shown = model_shown || p.loom.has_value();
    p.torch = run_child("/usr/bin/python3 " + quoted(std::string(LOOM_SOURCE_DIR) + "/tests/bench/torch_gpt2_step.py") +
                            " " + s.args() + " " + std::to_string(t),
                        t, "torch ", {"torch "});
    std::printf("ratio threads=%d loom/torch=%s\n", t, ratio(p.loom, p.torch).c_str());
    pairs.push_back(p);
  }
  if (std::none_of(pairs.begin(), pairs.end(), [](const Pair& p) { return p.loom.has_value(); })) {
    std::fprintf(stderr, "bench_gpt2_step: no loom run succeeded\n");
    return 1;
  }
  // Each at its own best thread count.
  const Pair* best_loom = nullptr;
  const Pair* best_torch = nullptr;
  for (const auto& p : pairs) {
    if (p.loom && (!best_loom || *p.loom > *best_loom->loom)) best_loom = &p;
    if (p.torch && (!best_torch || *p.torch > *best_torch->torch)) best_torch = &p;
  }
  const std::optional<double> bl = best_loom->loom, bt = best_torch ? best_torch->torch : std::nullopt;
  std::printf("best loom tokens_per_s=%s (%s) torch tokens_per_s=%s (%s) loom/torch=%s\n", cell(bl).c_str(),
              threads_word(best_loom->threads).c_str(), cell(bt).c_str(),
              best_torch ? threads_word(best_torch->threads).c_str() : "failed", ratio(bl, bt).c_str());
  if (!bt) std::printf("PyTorch did not run: is Debian's python3-torch installed for /usr/bin/python3?\n");

  // README's table: | threads | loom tokens/s | PyTorch tokens/s | loom / PyTorch |
  std::printf("README rows:\n");
  for (const auto& p : pairs)
    std::printf("| %d | %s | %s | %s |\n", p.threads, cell(p.loom).c_str(), cell(p.torch).c_str(),
                ratio(p.loom, p.torch).c_str());
  std::printf("| best of each (loom %s, PyTorch %s) | %s | %s | **%s** |\n", threads_word(best_loom->threads).c_str(),
              best_torch ? threads_word(best_torch->threads).c_str() : "n/a", cell(bl).c_str(), cell(bt).c_str(),
              ratio(bl, bt).c_str());
  return 0;
}
