// Times a full training step (forward, backward, AdamW) of a GPT-2 or Llama model in loom and the same model in
// PyTorch (torch_gpt2_step.py): Debian's PyTorch 1.13 (eager) and, where scripts/setup_bench.sh made .venv-bench, a
// current PyTorch 2.x from PyPI, eager and torch.compile. Each runs on 1 thread and on all the cores: the fastest
// thread count differs between them, so it reports every figure and loom's best against each peer's best and the best
// of all. Every run is a fresh process with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set (OpenBLAS
// reads its thread count once, at load). PyTorch 1.13's Linear runs on the same OpenBLAS as loom: where loom re-chose
// OpenBLAS's kernels for this CPU (tensor/cpu/blas_core.h) the 1.13 peer gets the same kernels through
// OPENBLAS_CORETYPE, its best setting. Prints one line per figure, then the rows of README's table and the command.
//
// Usage: bench_gpt2_step [--model gpt2|llama] [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]
//        (default 6 384 6 256 8 8192 5; Llama: HEADS/3 kv heads, intermediate 8*WIDTH/3 rounded up to 256, untied
//        head; "all the cores": those this process may run on)
// Internal: bench_gpt2_step --loom-only THREADS MODEL LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS (one loom run, as the
// parent starts it).
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/optim.h"
#include "recipes/model.h"
#include "tensor/cpu/blas_core.h"
#include "tensor/profiler.h"

using namespace loom;

namespace {

struct BenchShape {
  std::string model;  // "gpt2" or "llama"
  int64_t L, C, H, T, B, V, steps;
  std::string args() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%lld %lld %lld %lld %lld %lld %lld", (long long)L, (long long)C, (long long)H,
                  (long long)T, (long long)B, (long long)V, (long long)steps);
    return buf;
  }
  /// The bench's Llama sizes (torch_gpt2_step.py's llama_sizes is the same rule).
  int64_t kv_heads() const { return H % 3 == 0 ? H / 3 : H; }
  int64_t intermediate() const { return recipes::llama_intermediate(C); }
};

/// The model as the recipes build it (GPT-2 with a tied head, Llama untied, no dropout).
std::shared_ptr<nn::CausalLM> build(const BenchShape& s, Generator& gen) {
  recipes::ModelConfig m;
  m.family = s.model;
  m.n_layer = s.L;
  m.n_embd = s.C;
  m.n_head = s.H;
  m.n_kv_head = s.model == "llama" ? s.kv_heads() : s.H;
  m.vocab_size = s.V;
  m.seq_len = s.T;
  m.tie_embeddings = s.model == "gpt2";
  return recipes::build_model(m, gen);
}

std::string describe(const BenchShape& s) {
  char buf[256];
  if (s.model == "llama")
    std::snprintf(buf, sizeof buf, "Llama %lld layers, width %lld, %lld heads (%lld kv), intermediate %lld",
                  (long long)s.L, (long long)s.C, (long long)s.H, (long long)s.kv_heads(), (long long)s.intermediate());
  else
    std::snprintf(buf, sizeof buf, "GPT-2 %lld layers, width %lld, %lld heads", (long long)s.L, (long long)s.C,
                  (long long)s.H);
  return buf;
}

/// The lines of a text, without their newlines.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  return out;
}

/// The per-op table's category of one of loom's profiler rows (torch_gpt2_step.py's category() for PyTorch's ops).
std::string profile_category(const profiler::OpStat& st) {
  const std::string& n = st.name;
  auto has = [&](const char* part) { return n.find(part) != std::string::npos; };
  if (st.phase == "optimizer") return "AdamW (whole optimizer step)";
  if (has("Backward") || n == "AccumulateGrad") return "autograd engine (node glue)";
  if (n == "linear" || n == "linear_gelu" || n == "matmul" || n == "gemm_") return "matmuls (linear layers, LM head)";
  if (n == "attention") return "attention forward";
  if (n == "attention_backward") return "attention backward";
  if (has("norm")) return "layer norm / RMSNorm";
  if (has("gelu") || has("silu")) return "GELU / SiLU";
  if (has("cross_entropy") || has("softmax")) return "softmax + cross-entropy over the vocabulary";
  if (has("embedding")) return "embedding (forward and backward)";
  if (n == "copy_" || n == "contiguous" || n == "clone") return "copies";
  if (n == "alloc" || n == "free") return "allocation";
  return "other elementwise and reductions";
}

/// One loom run in this process: prints the model line and `loom threads=N tokens_per_s=X step_ms=Y openblas=...`.
int run_loom(const BenchShape& s, bool profile) {
  Generator gen(0);
  std::shared_ptr<nn::CausalLM> model = build(s, gen);
  nn::AdamWOptions opts;
  opts.lr = 1e-4;
  opts.weight_decay = 0.1;
  nn::AdamW opt(model->parameters(), opts);
  Tensor idx = ops::randint(0, s.V, {s.B, s.T}, gen);
  Tensor tgt = ops::randint(0, s.V, {s.B, s.T}, gen);

  std::vector<double> times;
  for (int64_t i = 0; i < s.steps + 2; ++i) {  // two warm-up steps
    auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    Tensor loss = model->loss(idx, tgt);
    loss.backward();
    opt.step();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) times.push_back(sec);
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  if (profile) {  // one more step under loom's profiler: `profile cat=...|ms=...` lines and the raw table
    auto t0 = std::chrono::steady_clock::now();
    profiler::start();
    opt.zero_grad();
    Tensor loss = model->loss(idx, tgt);
    loss.backward();
    opt.step();
    const std::vector<profiler::OpStat> stats = profiler::stop();
    const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("profile wall_ms=%.3f\n", wall);
    std::vector<std::pair<std::string, double>> cats;
    for (const auto& st : stats) {
      const std::string c = profile_category(st);
      auto it = std::find_if(cats.begin(), cats.end(), [&](const auto& kv) { return kv.first == c; });
      if (it == cats.end())
        cats.push_back({c, st.self_ms});
      else
        it->second += st.self_ms;
    }
    for (const auto& [c, ms] : cats) std::printf("profile cat=%s|ms=%.3f\n", c.c_str(), ms);
    for (const std::string& l : lines_of(profiler::format_table(stats, wall))) std::printf("loomprof %s\n", l.c_str());
  }
  std::printf("model: %s, seq %lld, batch %lld, vocab %lld, %.1fM params; median of %lld steps after 2 warm-up steps\n",
              describe(s).c_str(), (long long)s.T, (long long)s.B, (long long)s.V,
              static_cast<double>(model->num_parameters()) / 1e6, (long long)s.steps);
  const std::string& res = detail::blas_core_reselected();
  std::printf("loom threads=%d tokens_per_s=%.1f step_ms=%.2f openblas=%s%s%s\n", omp_get_max_threads(),
              static_cast<double>(s.B * s.T) / med, med * 1e3, detail::blas_core_name().c_str(),
              res.empty() ? "" : " reselected_from=", res.empty() ? "" : res.substr(0, res.find(' ')).c_str());
  return 0;
}

/// A shell word that reads back as s.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// A finished child process: its output (stdout and stderr) and pclose's status.
struct ChildRun {
  std::string out;
  int status = -1;
};

/// Runs `cmd` in a fresh process with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set to threads.
ChildRun run_process(const std::string& cmd, int threads) {
  const std::string t = std::to_string(threads);
  const std::string full =
      "env OMP_NUM_THREADS=" + t + " OPENBLAS_NUM_THREADS=" + t + " MKL_NUM_THREADS=" + t + " " + cmd + " 2>&1";
  std::fflush(stdout);
  ChildRun r;
  FILE* p = popen(full.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, got);
  r.status = pclose(p);
  return r;
}

/// Runs `cmd` with threads set, echoes the lines that start with one of `echo`, and returns the tokens/s of the line
/// that starts with `prefix` (`loom ` or `torch `), or nothing when the run printed none.
std::optional<double> run_child(const std::string& cmd, int threads, const std::string& prefix,
                                const std::vector<std::string>& echo) {
  const ChildRun run = run_process(cmd, threads);
  std::optional<double> rate;
  std::string tail;  // the child's other output, shown when it printed no figure
  for (const std::string& l : lines_of(run.out)) {
    double v = 0;
    const size_t at = l.find("tokens_per_s=");
    if (l.rfind(prefix, 0) == 0 && at != std::string::npos && std::sscanf(l.c_str() + at, "tokens_per_s=%lf", &v) == 1)
      rate = v;
    if (std::any_of(echo.begin(), echo.end(), [&](const std::string& e) { return l.rfind(e, 0) == 0; }))
      std::printf("%s\n", l.c_str());
    else
      tail += l + "\n";
    if (tail.size() > 2000) tail.erase(0, tail.size() - 2000);
  }
  if (!rate || run.status != 0) {
    std::printf("%s threads=%d failed (exit status %d)%s%s", prefix.substr(0, prefix.size() - 1).c_str(), threads,
                run.status, tail.empty() ? "" : "; its output ended:\n", tail.c_str());
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

/// The `profile cat=NAME|ms=X` lines of a run (and its `profile wall_ms=`, as "(step wall time)").
std::vector<std::pair<std::string, double>> profile_lines(const std::string& out) {
  std::vector<std::pair<std::string, double>> rows;
  for (const std::string& l : lines_of(out)) {
    if (l.rfind("profile wall_ms=", 0) == 0) rows.push_back({"(step wall time)", std::atof(l.c_str() + 16)});
    const size_t bar = l.find("|ms=");
    if (l.rfind("profile cat=", 0) == 0 && bar != std::string::npos)
      rows.push_back({l.substr(12, bar - 12), std::atof(l.c_str() + bar + 4)});
  }
  return rows;
}

struct Peer {
  std::string name;    // column name
  std::string prefix;  // the figure line's first word
  std::string cmd;     // up to the sizes
  std::string opts;    // after the sizes and the thread count
};

/// One profiled step on 1 thread of loom and of each eager peer: a table per category, ms and share of the step.
void print_profiles(const std::string& self, const BenchShape& s, const std::vector<Peer>& peers) {
  std::vector<std::string> names = {"loom"};
  std::vector<std::vector<std::pair<std::string, double>>> cols;
  const std::string lo = run_process(quoted(self) + " --loom-only 1 " + s.model + " " + s.args() + " --profile", 1).out;
  cols.push_back(profile_lines(lo));
  for (const Peer& p : peers) {
    if (p.opts.find("compile") != std::string::npos) continue;  // a compiled graph has no per-op rows
    names.push_back(p.name);
    cols.push_back(profile_lines(run_process(p.cmd + " " + s.args() + " 1" + p.opts + " --profile", 1).out));
  }
  auto get = [](const std::vector<std::pair<std::string, double>>& c, const std::string& k) -> std::optional<double> {
    for (const auto& [n, v] : c)
      if (n == k) return v;
    return std::nullopt;
  };
  std::vector<std::string> cats;
  for (const auto& [n, v] : cols[0])
    if (n != "(step wall time)") cats.push_back(n);
  for (const auto& c : cols)
    for (const auto& [n, v] : c)
      if (n != "(step wall time)" && std::find(cats.begin(), cats.end(), n) == cats.end()) cats.push_back(n);
  cats.push_back("(outside any op)");
  std::printf("per-op profile, 1 thread, one step (self time in ms and share of the step):\n| op |");
  for (const auto& n : names) std::printf(" %s ms | share |", n.c_str());
  std::printf("\n");
  for (const std::string& c : cats) {
    std::printf("| %s |", c.c_str());
    for (const auto& col : cols) {
      const std::optional<double> wall = get(col, "(step wall time)");
      std::optional<double> v = get(col, c);
      if (c == "(outside any op)" && wall) {
        double sum = 0;
        for (const auto& [n, x] : col)
          if (n != "(step wall time)") sum += x;
        v = *wall - sum;
      }
      if (v && wall && *wall > 0)
        std::printf(" %.1f | %.1f%% |", *v, 100.0 * *v / *wall);
      else
        std::printf(" %s | |", v ? std::to_string(*v).c_str() : "-");
    }
    std::printf("\n");
  }
  std::printf("| step (wall) |");
  for (const auto& col : cols) {
    const std::optional<double> wall = get(col, "(step wall time)");
    std::printf(" %s | 100%% |", wall ? std::to_string(static_cast<int>(*wall + 0.5)).c_str() : "n/a");
  }
  std::printf("\nloom's own table (tensor/profiler.h):\n");
  for (const std::string& l : lines_of(lo))
    if (l.rfind("loomprof ", 0) == 0) std::printf("%s\n", l.c_str() + 9);
}

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const auto pf = std::find(args.begin(), args.end(), "--profile");
  const bool profile = pf != args.end();
  if (profile) args.erase(pf);
  const bool child = args.size() >= 2 && args[0] == "--loom-only";
  std::string model = "gpt2";
  if (child) {
    model = args[2];
    args.erase(args.begin(), args.begin() + 3);
  } else if (!args.empty() && args[0].rfind("--model", 0) == 0) {
    if (args[0] == "--model" && args.size() >= 2) {
      model = args[1];
      args.erase(args.begin(), args.begin() + 2);
    } else if (args[0].rfind("--model=", 0) == 0) {
      model = args[0].substr(8);
      args.erase(args.begin());
    }
  }
  const char* usage =
      "usage: bench_gpt2_step [--model gpt2|llama] [--profile] [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]\n";
  if (model != "gpt2" && model != "llama") {
    std::fprintf(stderr, "bench_gpt2_step: --model is '%s', expected gpt2 or llama\n%s", model.c_str(), usage);
    return 2;
  }
  std::vector<int64_t> a = {6, 384, 6, 256, 8, 8192, 5};
  for (size_t i = 0; i < args.size(); ++i) {
    char* end = nullptr;
    const long long v = std::strtoll(args[i].c_str(), &end, 10);
    if (i >= a.size() || args[i].empty() || *end != '\0' || v < 1) {
      std::fprintf(stderr, "bench_gpt2_step: argument %zu is '%s', expected a positive integer\n%s", i + 1,
                   args[i].c_str(), usage);
      return 2;
    }
    a[i] = v;
  }
  const BenchShape s{model, a[0], a[1], a[2], a[3], a[4], a[5], a[6]};
  if (s.C % s.H != 0) {
    std::fprintf(stderr, "bench_gpt2_step: WIDTH %lld is not a multiple of HEADS %lld\n%s", (long long)s.C,
                 (long long)s.H, usage);
    return 2;
  }
  if (child) return run_loom(s, profile);

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

  const std::string script = quoted(std::string(LOOM_SOURCE_DIR) + "/tests/bench/torch_gpt2_step.py");
  // Each peer's command line up to the sizes; then SIZES THREADS and its options.
  std::string opts = " --model ";
  opts += s.model;
  // PyTorch 1.13's Linear runs on Debian's OpenBLAS: give it the kernels loom chose (its best on this CPU).
  const std::string core = detail::blas_core_reselected().empty() ? "" : detail::blas_core_name();
  std::vector<Peer> peers = {{"PyTorch 1.13 eager", "torch ",
                              (core.empty() ? "" : "OPENBLAS_CORETYPE=" + core + " ") + "/usr/bin/python3 " + script,
                              " --mode eager" + opts}};
  const std::string venv = std::string(LOOM_SOURCE_DIR) + "/.venv-bench/bin/python";
  const bool modern = ::access(venv.c_str(), X_OK) == 0;
  if (modern)
    for (const std::string mode : {"eager", "compile"})
      peers.push_back({"PyTorch 2.x " + mode, "torch ", quoted(venv) + " " + script, " --mode " + mode + opts});

  std::printf("command: %s%s %s\n", argv[0], s.model == "gpt2" ? "" : " --model llama", s.args().c_str());
  if (!core.empty())
    std::printf(
        "openblas: loom re-chose %s kernels (OpenBLAS fell back to %s); PyTorch 1.13 runs with "
        "OPENBLAS_CORETYPE=%s\n",
        core.c_str(), detail::blas_core_reselected().substr(0, detail::blas_core_reselected().find(' ')).c_str(),
        core.c_str());
  if (!modern) std::printf("PyTorch 2.x: not installed (scripts/setup_bench.sh makes .venv-bench)\n");
  struct Row {
    int threads;
    std::optional<double> loom;
    std::vector<std::optional<double>> peer;
  };
  std::vector<Row> rows;
  bool model_shown = false;
  for (int t : counts) {
    Row r{t, std::nullopt, {}};
    std::vector<std::string> echo = {"loom "};
    if (!model_shown) echo.push_back("model: ");
    r.loom = run_child(quoted(self) + " --loom-only " + std::to_string(t) + " " + s.model + " " + s.args(), t, "loom ",
                       echo);
    model_shown = model_shown || r.loom.has_value();
    for (const Peer& p : peers) {
      r.peer.push_back(run_child(p.cmd + " " + s.args() + " " + std::to_string(t) + p.opts, t, p.prefix, {p.prefix}));
      std::printf("ratio threads=%d loom/(%s)=%s\n", t, p.name.c_str(), ratio(r.loom, r.peer.back()).c_str());
    }
    rows.push_back(r);
  }
  if (std::none_of(rows.begin(), rows.end(), [](const Row& r) { return r.loom.has_value(); })) {
    std::fprintf(stderr, "bench_gpt2_step: no loom run succeeded\n");
    return 1;
  }
  // Each at its own best thread count.
  const Row* best_loom = nullptr;
  for (const auto& r : rows)
    if (r.loom && (!best_loom || *r.loom > *best_loom->loom)) best_loom = &r;
  const std::optional<double> bl = best_loom->loom;
  std::optional<double> best_all;
  std::string best_all_name = "n/a";
  std::vector<std::pair<std::optional<double>, int>> peer_best(peers.size(), {std::nullopt, 0});
  for (size_t k = 0; k < peers.size(); ++k) {
    for (const auto& r : rows)
      if (r.peer[k] && (!peer_best[k].first || *r.peer[k] > *peer_best[k].first)) peer_best[k] = {r.peer[k], r.threads};
    std::printf("best loom tokens_per_s=%s (%s) %s tokens_per_s=%s (%s) loom/peer=%s\n", cell(bl).c_str(),
                threads_word(best_loom->threads).c_str(), peers[k].name.c_str(), cell(peer_best[k].first).c_str(),
                peer_best[k].first ? threads_word(peer_best[k].second).c_str() : "failed",
                ratio(bl, peer_best[k].first).c_str());
    if (peer_best[k].first && (!best_all || *peer_best[k].first > *best_all)) {
      best_all = peer_best[k].first;
      best_all_name = peers[k].name + ", " + threads_word(peer_best[k].second);
    }
  }
  std::printf("best loom/best peer=%s (loom %s, %s)\n", ratio(bl, best_all).c_str(),
              threads_word(best_loom->threads).c_str(), best_all_name.c_str());
  if (rows.size() > 1 && rows[0].loom && rows.back().loom)
    std::printf("loom scaling %s/1 thread=%s\n", threads_word(rows.back().threads).c_str(),
                ratio(rows.back().loom, rows[0].loom).c_str());
  if (!peer_best[0].first) std::printf("PyTorch 1.13 did not run: is Debian's python3-torch installed?\n");

  if (profile) print_profiles(self, s, peers);

  // README's table: | threads | loom | each peer ... |
  std::printf("README rows:\n| threads | loom tokens/s |");
  for (const Peer& p : peers) std::printf(" %s |", p.name.c_str());
  std::printf("\n");
  for (const auto& r : rows) {
    std::printf("| %d | %s |", r.threads, cell(r.loom).c_str());
    for (size_t k = 0; k < peers.size(); ++k)
      std::printf(" %s (%s) |", cell(r.peer[k]).c_str(), ratio(r.loom, r.peer[k]).c_str());
    std::printf("\n");
  }
  std::printf("| best of each (loom %s) | %s |", threads_word(best_loom->threads).c_str(), cell(bl).c_str());
  for (size_t k = 0; k < peers.size(); ++k)
    std::printf(" %s (**%s**) |", cell(peer_best[k].first).c_str(), ratio(bl, peer_best[k].first).c_str());
  std::printf("\n");
  return 0;
}
