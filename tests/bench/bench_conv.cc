// Conv2d forward+backward GFLOP/s for three shapes and the ConvNet training step of issue 18 (conv 1->32, conv
// 32->64, 3x3 pad 1, ReLU, max-pool 2, dropout, linear 3136->128->10; batch 64, 28x28; AdamW) in images/s, in loom
// and in PyTorch eager (tests/bench/torch_conv.py), each on 1 thread and on all the cores this process may use, each
// in a fresh process with OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set. Prints one line per figure and, last, loom's
// best against PyTorch's best thread count.
//
// Usage: bench_conv [BATCH STEPS]   (default 64 10)
// Internal: bench_conv --loom-only THREADS BATCH STEPS (one loom run, as the parent starts it).
#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "autograd/conv.h"
#include "autograd/functions.h"
#include "nn/conv.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/optim.h"

using namespace loom;

namespace {

struct ConvShape {
  const char* name;
  int64_t N, C, H, W, OC, K, stride, pad;
  std::string spec() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s:%lld,%lld,%lld,%lld,%lld,%lld,%lld,%lld", name, (long long)N, (long long)C,
                  (long long)H, (long long)W, (long long)OC, (long long)K, (long long)stride, (long long)pad);
    return buf;
  }
};

const ConvShape kShapes[] = {
    {"convnet_conv1_64x1x28x28_k3_32", 64, 1, 28, 28, 32, 3, 1, 1},
    {"convnet_conv2_64x32x14x14_k3_64", 64, 32, 14, 14, 64, 3, 1, 1},
    {"resnet_8x64x56x56_k3_64", 8, 64, 56, 56, 64, 3, 1, 1},
};

template <typename F>
double best_time(F&& fn, int reps, int rounds = 3) {
  fn();  // warm-up
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
  }
  return best;
}

int run_loom(int threads, int64_t batch, int steps) {
#if defined(OPENBLAS_VERSION)
  std::printf("loom openblas core=%s threads=%d\n", openblas_get_corename(), threads);
#endif
  Generator gen(0);
  for (const ConvShape& s : kShapes) {
    Tensor x = ops::randn({s.N, s.C, s.H, s.W}, gen), w = ops::randn({s.OC, s.C, s.K, s.K}, gen);
    Tensor b = ops::randn({s.OC}, gen);
    Conv2dOptions o;
    o.stride = {s.stride, s.stride};
    o.padding = {s.pad, s.pad};
    const int64_t OH = (s.H + 2 * s.pad - s.K) / s.stride + 1, OW = (s.W + 2 * s.pad - s.K) / s.stride + 1;
    Tensor r = ops::randn({s.N, s.OC, OH, OW}, gen);
    const double t = best_time(
        [&] {
          Tensor y = ops::conv2d(x, w, b, o);
          Tensor dx = ops::conv2d_backward_input(r, w, x.sizes(), o);
          Tensor dw = ops::conv2d_backward_weight(r, x, w.sizes(), o);
          Tensor db = ops::conv2d_backward_bias(r);
        },
        3);
    const double flops = 3 * 2.0 * s.N * s.OC * OH * OW * s.C * s.K * s.K;
    std::printf("loom conv %s threads=%d gflops=%.2f\n", s.name, threads, flops / t / 1e9);
    std::fflush(stdout);
  }
  auto model = std::make_shared<nn::Sequential>(
      std::make_shared<nn::Conv2d>(1, 32, 3, nn::Conv2dOptions{{1, 1}, {1, 1}}, gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::MaxPool2d>(2),
      std::make_shared<nn::Conv2d>(32, 64, 3, nn::Conv2dOptions{{1, 1}, {1, 1}}, gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::MaxPool2d>(2), std::make_shared<nn::Dropout>(0.25, gen), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(64 * 7 * 7, 128, nn::LinearOptions{}, gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Dropout>(0.5, gen), std::make_shared<nn::Linear>(128, 10, nn::LinearOptions{}, gen));
  nn::AdamWOptions ao;
  ao.lr = 1e-3;
  ao.weight_decay = 0.01;
  nn::AdamW opt(model->parameters(), ao);
  Tensor x = ops::randn({batch, 1, 28, 28}, gen), y = ops::randint(0, 10, {batch}, gen);
  const double t = best_time(
      [&] {
        opt.zero_grad();
        Tensor loss = cross_entropy((*model)(x), y);
        loss.backward();
        opt.step();
      },
      steps);
  std::printf("loom convnet threads=%d images_per_s=%.1f step_ms=%.2f\n", threads, batch / t, t * 1e3);
  return 0;
}

/// Runs cmd with the thread variables set; returns its stdout lines.
std::vector<std::string> run_child(const std::string& cmd, int threads) {
  const std::string t = std::to_string(threads);
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  const std::string full = std::string(core ? "OPENBLAS_CORETYPE=" + std::string(core) + " " : "") +
                           "OMP_NUM_THREADS=" + t + " OPENBLAS_NUM_THREADS=" + t + " MKL_NUM_THREADS=" + t + " " + cmd;
  std::vector<std::string> lines;
  FILE* p = popen(full.c_str(), "r");
  if (!p) return lines;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) {
    std::string l(buf);
    if (!l.empty() && l.back() == '\n') l.pop_back();
    std::printf("%s\n", l.c_str());
    std::fflush(stdout);
    lines.push_back(l);
  }
  if (pclose(p) != 0) std::printf("(%s failed)\n", full.c_str());
  return lines;
}

/// The number after "key=" in line, or -1.
double field(const std::string& line, const std::string& key) {
  const auto i = line.find(key + "=");
  return i == std::string::npos ? -1 : std::atof(line.c_str() + i + key.size() + 1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && std::strcmp(argv[1], "--loom-only") == 0)
    return run_loom(std::atoi(argv[2]), std::atoll(argv[3]), std::atoi(argv[4]));
  const int64_t batch = argc > 1 ? std::atoll(argv[1]) : 64;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 10;
  cpu_set_t set;
  int cores = 1;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
  // OpenBLAS picks its kernels from the CPU model; on a virtual CPU it reports no model for it falls back to the
  // generic Prescott kernels (3x slower sgemm). Where the flags show AVX-512 or AVX2 and the user set nothing, name the
  // core for both loom and PyTorch (whose Linear goes to the same OpenBLAS) and say so.
  if (!std::getenv("OPENBLAS_CORETYPE")) {
    FILE* f = std::fopen("/proc/cpuinfo", "r");
    std::string flags;
    char line[8192];
    while (f && std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "flags", 5) == 0) {
        flags = line;
        break;
      }
    if (f) std::fclose(f);
    const char* core = flags.find(" avx512f") != std::string::npos ? "SkylakeX"
                       : flags.find(" avx2") != std::string::npos  ? "Haswell"
                                                                   : nullptr;
    if (core) {
      setenv("OPENBLAS_CORETYPE", core, 1);
      std::printf("OPENBLAS_CORETYPE=%s for both (the CPU's flags; OpenBLAS may not recognise a virtual CPU's model)\n",
                  core);
    }
  }
  std::vector<int> counts = {1};
  if (cores > 1) counts.push_back(cores);
  std::string specs;
  for (const ConvShape& s : kShapes) specs += " " + s.spec();
  const std::string self = "/proc/self/exe";
  char exe[4096];
  const ssize_t n = readlink(self.c_str(), exe, sizeof exe - 1);
  exe[n > 0 ? n : 0] = 0;
  const std::string python = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  const std::string peer = python + " " + LOOM_SOURCE_DIR + "/tests/bench/torch_conv.py";
  // best figure per (who, what) over thread counts, and the thread count it came from
  std::map<std::string, std::pair<double, int>> best;
  for (int t : counts) {
    const std::string args = " " + std::to_string(batch) + " " + std::to_string(steps);
    for (const std::string& who : {std::string("loom"), std::string("torch")}) {
      const std::string cmd = who == "loom" ? std::string(exe) + " --loom-only " + std::to_string(t) + args
                                            : peer + " " + std::to_string(t) + args + specs;
      for (const std::string& l : run_child(cmd, t)) {
        std::string what;
        double v = field(l, "gflops");
        if (v >= 0) {
          what = l.substr(l.find(" conv ") + 6);
          what = what.substr(0, what.find(' '));
        } else if ((v = field(l, "images_per_s")) >= 0) {
          what = "convnet";
        } else {
          continue;
        }
        auto& b = best[who + " " + what];
        if (v > b.first) b = {v, t};
      }
    }
  }
  std::printf("\nbest thread count of each, same run (%d cores):\n", cores);
  std::vector<std::string> whats;
  for (const ConvShape& s : kShapes) whats.push_back(s.name);
  whats.push_back("convnet");
  for (const std::string& w : whats) {
    const auto l = best["loom " + w], p = best["torch " + w];
    const char* unit = w == "convnet" ? "images/s (batch, AdamW step)" : "GFLOP/s fwd+bwd";
    std::printf("%s: loom %.1f (%d threads) vs PyTorch %.1f (%d threads) %s: %.2fx\n", w.c_str(), l.first, l.second,
                p.first, p.second, unit, p.first > 0 ? l.first / p.first : 0.0);
  }
  return 0;
}
