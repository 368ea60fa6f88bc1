// Times a full GPT-2 training step (forward, backward, AdamW) in loom and, in
// the same run, the same model in PyTorch (torch_gpt2_step.py) on the same
// number of threads; prints one line per figure and the ratio.
//
// Usage: bench_gpt2_step [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]
//        (default 6 384 6 256 8 4096 5; threads = OMP_NUM_THREADS or all cores)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/gpt2.h"
#include "nn/optim.h"

using namespace loom;

int main(int argc, char** argv) {
  std::vector<int64_t> a = {6, 384, 6, 256, 8, 4096, 5};
  for (int i = 1; i < argc && i <= 7; ++i) a[i - 1] = std::atoll(argv[i]);
  const int64_t L = a[0], C = a[1], H = a[2], T = a[3], B = a[4], V = a[5], steps = a[6];
  const int threads = omp_get_max_threads();

  nn::GPT2Config cfg;
  cfg.n_layer = L;
  cfg.n_embd = C;
  cfg.n_head = H;
  cfg.n_positions = T;
  cfg.vocab_size = V;
  Generator gen(0);
  nn::GPT2 model(cfg, gen);
  nn::AdamWOptions opts;
  opts.lr = 1e-4;
  opts.weight_decay = 0.1;
  nn::AdamW opt(model.parameters(), opts);
  Tensor idx = ops::randint(0, V, {B, T}, gen);
  Tensor tgt = ops::randint(0, V, {B, T}, gen);

  std::vector<double> times;
  for (int64_t i = 0; i < steps + 2; ++i) {  // two warm-up steps
    auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    Tensor loss = model.loss(idx, tgt);
    loss.backward();
    opt.step();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) times.push_back(s);
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  const double ours = static_cast<double>(B * T) / med;
  std::printf(
      "model: GPT-2 %lld layers, width %lld, %lld heads, seq %lld, batch %lld, vocab %lld, %.1fM params, "
      "%d threads\n",
      (long long)L, (long long)C, (long long)H, (long long)T, (long long)B, (long long)V,
      static_cast<double>(model.num_parameters()) / 1e6, threads);
  std::printf("loom  tokens_per_s=%.1f step_ms=%.2f\n", ours, med * 1e3);

  char cmd[512];
  std::snprintf(cmd, sizeof cmd,
                "/usr/bin/python3 %s/tests/bench/torch_gpt2_step.py %lld %lld %lld %lld %lld %lld %lld %d",
                LOOM_SOURCE_DIR, (long long)L, (long long)C, (long long)H, (long long)T, (long long)B, (long long)V,
                (long long)steps, threads);
  FILE* p = popen(cmd, "r");
  double theirs = 0;
  char line[256];
  while (p && std::fgets(line, sizeof line, p)) {
    std::fputs(line, stdout);
    std::sscanf(line, "torch tokens_per_s=%lf", &theirs);
  }
  if (p) pclose(p);
  if (theirs > 0)
    std::printf("ratio loom/torch tokens_per_s=%.3f\n", ours / theirs);
  else
    std::printf("ratio unavailable: the PyTorch run failed (is Debian's python3-torch installed?)\n");
  return 0;
}
