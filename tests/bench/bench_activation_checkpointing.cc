// Step time and peak memory of GPT-2 training with activation checkpointing none / selective / selective:2 / full on
// the CPU, in one process on the same model and batch: the recompute overhead in % of the step time without
// checkpointing (by the process's CPU time, which a loaded machine disturbs less than wall time; wall time too), and
// the peak bytes above the resting state (parameters, gradients, AdamW state) of a step, i.e. the activations. The
// modes take turns step by step, so a change in the machine's load touches them all alike; the median step of each is
// reported. Prints one line per mode, then the rows of README's table and the command.
//
// Usage: bench_activation_checkpointing [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]   (default 6 256 4 256 8 1024 5)
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/activation_checkpointing.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "tensor/storage.h"

using namespace loom;

namespace {

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct Mode {
  std::string spec;
  std::unique_ptr<Generator> gen;  // the model's dropout draws from it: one per mode, the same stream in each
  std::shared_ptr<nn::GPT2> model;
  std::unique_ptr<nn::AdamW> opt;
  std::vector<double> times;      // wall seconds per step
  std::vector<double> cpu_times;  // CPU seconds of the process per step (all threads): steadier on a loaded machine
  int64_t peak = 0;
  int64_t kept = 0;  // bytes the forward leaves allocated for backward (with the logits and the loss)
  double loss = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> a = {6, 256, 4, 256, 8, 1024, 5};
  for (int i = 1; i < argc && i - 1 < 7; ++i) {
    char* end = nullptr;
    const long long v = std::strtoll(argv[i], &end, 10);
    if (*argv[i] == '\0' || *end != '\0' || v < 1) {
      std::fprintf(stderr,
                   "bench_activation_checkpointing: argument %d is '%s', expected a positive integer\n"
                   "usage: bench_activation_checkpointing [LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS]\n",
                   i, argv[i]);
      return 2;
    }
    a[static_cast<size_t>(i - 1)] = v;
  }
  const int64_t L = a[0], C = a[1], H = a[2], T = a[3], B = a[4], V = a[5], steps = a[6];
  nn::GPT2Config cfg;
  cfg.n_layer = L;
  cfg.n_embd = C;
  cfg.n_head = H;
  cfg.n_positions = T;
  cfg.vocab_size = V;
  cfg.dropout = 0.1;  // the recompute replays the dropout masks too
  try {
    cfg.validate();
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_activation_checkpointing: %s\n", e.what());
    return 2;
  }

  std::vector<Mode> modes;
  for (const char* spec : {"none", "selective", "selective:2", "full"}) {
    Mode m;
    m.spec = spec;
    m.gen = std::make_unique<Generator>(0);
    m.model = std::make_shared<nn::GPT2>(cfg, *m.gen);
    nn::apply_activation_checkpointing(*m.model, nn::ActivationCheckpointing::parse(spec));
    nn::AdamWOptions o;
    o.lr = 1e-4;
    o.weight_decay = 0.1;
    m.opt = std::make_unique<nn::AdamW>(m.model->parameters(), o);
    modes.push_back(std::move(m));
  }
  Generator data(1);
  Tensor idx = ops::randint(0, V, {B, T}, data), tgt = ops::randint(0, V, {B, T}, data);

  for (int64_t i = 0; i < steps + 1; ++i) {  // one warm-up step (allocates the gradients and AdamW state)
    for (auto& m : modes) {
      manual_seed(static_cast<uint64_t>(100 + i));  // attention dropout draws from the default generator
      m.opt->zero_grad();
      const int64_t base = memory_stats().allocated_bytes;
      reset_peak_memory_stats();
      auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_seconds();
      Tensor loss = m.model->loss(idx, tgt);
      const int64_t after_forward = memory_stats().allocated_bytes - base;
      loss.backward();
      m.opt->step();
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double cpu = cpu_seconds() - c0;
      if (i == 0) continue;
      m.times.push_back(sec);
      m.cpu_times.push_back(cpu);
      m.peak = std::max(m.peak, memory_stats().peak_bytes - base);
      m.kept = std::max(m.kept, after_forward);
      m.loss = loss.item();
    }
  }
  std::printf("command: %s %lld %lld %lld %lld %lld %lld %lld\n", argv[0], (long long)L, (long long)C, (long long)H,
              (long long)T, (long long)B, (long long)V, (long long)steps);
  std::printf(
      "model: GPT-2 %lld layers, width %lld, %lld heads, seq %lld, batch %lld, vocab %lld, dropout 0.1, %.1fM params, "
      "%d threads; median of %lld steps after 1 warm-up step, the modes taking turns\n",
      (long long)L, (long long)C, (long long)H, (long long)T, (long long)B, (long long)V,
      static_cast<double>(modes[0].model->num_parameters()) / 1e6, omp_get_max_threads(), (long long)steps);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double base_t = median(modes[0].times), base_c = median(modes[0].cpu_times);
  const double base_peak = static_cast<double>(modes[0].peak);
  for (const auto& m : modes) {
    const double t = median(m.times);
    const double c = median(m.cpu_times);
    std::printf(
        "mode=%s step_ms=%.1f overhead_pct=%.1f step_cpu_ms=%.1f cpu_overhead_pct=%.1f activation_peak_mib=%.1f "
        "peak_vs_none_pct=%.1f kept_after_forward_mib=%.1f loss=%.6f\n",
        m.spec.c_str(), t * 1e3, 100.0 * (t - base_t) / base_t, c * 1e3, 100.0 * (c - base_c) / base_c,
        static_cast<double>(m.peak) / (1 << 20), 100.0 * static_cast<double>(m.peak) / base_peak,
        static_cast<double>(m.kept) / (1 << 20), m.loss);
  }
  std::printf(
      "\n| activation checkpointing | step (ms) | CPU time per step (ms) | recompute overhead (CPU time) | kept after "
      "forward (MiB) | activation peak (MiB) | peak vs none |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const auto& m : modes) {
    const double t = median(m.times), c = median(m.cpu_times);
    std::printf("| %s | %.0f | %.0f | %+.0f%% | %.1f | %.1f | %.0f%% |\n", m.spec.c_str(), t * 1e3, c * 1e3,
                100.0 * (c - base_c) / base_c, static_cast<double>(m.kept) / (1 << 20),
                static_cast<double>(m.peak) / (1 << 20), 100.0 * static_cast<double>(m.peak) / base_peak);
  }
  // Same losses in every mode: the checkpointed steps compute what the plain ones do.
  for (const auto& m : modes)
    if (m.loss != modes[0].loss) {
      std::fprintf(stderr, "bench_activation_checkpointing: mode %s ended at loss %.9g, none at %.9g\n", m.spec.c_str(),
                   m.loss, modes[0].loss);
      return 1;
    }
  return 0;
}
