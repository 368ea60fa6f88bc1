// FullyShard step time and memory per rank: a GPT-2 training step (forward,
// backward, clipping, AdamW) wrapped in FullyShard with prefetch and overlap
// (the default), without prefetch, without overlap (every collective waited on
// at once: the baseline) and as ZeRO-2. Run under mpirun or trainlaunch:
//   mpirun -np N bench_fsdp [BACKEND LAYERS WIDTH HEADS SEQ BATCH_PER_RANK VOCAB STEPS]
//   (default gloo 6 256 4 128 4 2048 5)
// One line per variant: variant backend ranks step_ms (median over steps,
// max over ranks) peak_MiB (max over ranks, since the wrap) held_MiB (after a
// step: shards, their gradients, AdamW state) single_rank_held_MiB.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "collectives/init.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "parallel/fully_shard.h"

using namespace loom;

namespace {

double group_max(collectives::ProcessGroup& g, double v) {
  Tensor t = ops::full({1}, v, DType::f64);
  g.allreduce(t, {collectives::ReduceOp::kMax})->wait();
  return t.item<double>();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string backend = argc > 1 ? argv[1] : "gloo";
  std::vector<int64_t> a = {6, 256, 4, 128, 4, 2048, 5};
  for (int i = 2; i < argc && i <= 8; ++i) a[i - 2] = std::atoll(argv[i]);
  const int64_t L = a[0], C = a[1], H = a[2], T = a[3], B = a[4], V = a[5], steps = std::max<int64_t>(a[6], 1);
  auto group = collectives::init_process_group(backend);
  const int W = group->size(), rank = group->rank();

  nn::GPT2Config cfg;
  cfg.n_layer = L;
  cfg.n_embd = C;
  cfg.n_head = H;
  cfg.n_positions = T;
  cfg.vocab_size = V;
  Generator data_gen(1000 + rank);
  Tensor idx = ops::randint(0, V, {B, T}, data_gen), targets = ops::randint(0, V, {B, T}, data_gen);
  const int64_t numel = [&] {
    Generator gen(0);
    return nn::GPT2(cfg, gen).num_parameters();
  }();
  const double mib = 1024.0 * 1024.0;
  if (rank == 0)
    std::printf("# GPT-2 %lld layers, width %lld, seq %lld, batch %lld per rank, %lld parameters\n",
                static_cast<long long>(L), static_cast<long long>(C), static_cast<long long>(T),
                static_cast<long long>(B), static_cast<long long>(numel));

  struct Variant {
    const char* name;
    parallel::FullyShardOptions opts;
  };
  std::vector<Variant> variants(4);
  variants[0].name = "fsdp";
  variants[1].name = "no_prefetch";
  variants[1].opts.prefetch = false;
  variants[2].name = "no_overlap";
  variants[2].opts.overlap = false;
  variants[2].opts.prefetch = false;
  variants[3].name = "zero2";
  variants[3].opts.reshard_after_forward = false;
  for (const auto& v : variants) {
    const int64_t base = memory_stats().allocated_bytes;
    Generator gen(0);
    auto model = std::make_shared<nn::GPT2>(cfg, gen);
    parallel::FullyShard fsdp(model, group, v.opts);
    nn::AdamW opt(fsdp.param_groups(1e-4, 0.1), nn::AdamWOptions{});
    reset_peak_memory_stats();
    std::vector<double> times;
    for (int64_t s = 0; s <= steps; ++s) {  // step 0 warms up (allocations, AdamW state)
      group->barrier()->wait();
      auto t0 = std::chrono::steady_clock::now();
      opt.zero_grad();
      model->loss(idx, targets).backward();
      fsdp.clip_grad_norm_(1.0);
      opt.step();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (s > 0) times.push_back(group_max(*group, ms));
    }
    const double held = group_max(*group, static_cast<double>(memory_stats().allocated_bytes - base));
    const double peak = group_max(*group, static_cast<double>(memory_stats().peak_bytes - base));
    if (rank == 0)
      std::printf("%-12s %-5s %d %10.1f %10.2f %10.2f %10.2f\n", v.name, backend.c_str(), W, median(times), peak / mib,
                  held / mib, 16.0 * static_cast<double>(numel) / mib);
  }
  group->barrier()->wait();
  return 0;
}
