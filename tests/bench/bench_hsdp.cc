// Hybrid sharding (HSDP) against plain FSDP on a 2-node job: bytes over the inter-node link per step and step time. Run
// by scripts/bench_hsdp_netns.sh on two simulated nodes (network namespaces joined by a rate-limited link), 2 ranks per
// node under trainlaunch; every rank runs:
//   bench_hsdp [BACKEND LAYERS WIDTH HEADS SEQ BATCH_PER_RANK VOCAB STEPS]   (default gloo 4 256 4 32 1 2048 5)
// The default is a link-bound step (3.7M parameters, 32 tokens per rank): on a small CPU more tokens per rank make the
// step compute-bound and the link's share of it small.
// Layouts over W ranks, ranks [0, W/2) on node 0 and the rest on node 1 (the launcher's node ranks):
//   fsdp: FullyShard over all W ranks (its all-gathers and reduce-scatters cross the link);
//   hsdp: dp 2 x fsdp W/2: sharded within a node, the shard gradient all-reduced across the 2 nodes.
// The link bytes are the transmit counters of each node's interface (LOOM_BENCH_IFACE, default lan0; read by local
// rank 0 from /sys/class/net/IFACE/statistics/tx_bytes) before and after the timed steps, summed over the nodes:
// everything a node sends to the other crosses the link (traffic between ranks of one node stays on loopback).
// One line per layout: layout backend ranks step_ms (median over steps, max over ranks) link_MB_per_step.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "collectives/init.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"

using namespace loom;

namespace {

double group_reduce(collectives::ProcessGroup& g, double v, collectives::ReduceOp op) {
  Tensor t = ops::full({1}, v, DType::f64);
  g.allreduce(t, {op})->wait();
  return t.item<double>();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

/// Bytes this node has sent on the link (local rank 0 only; 0 elsewhere), or -1 when the counter cannot be read.
double node_tx_bytes(bool local_leader, const std::string& iface) {
  if (!local_leader) return 0;
  std::ifstream in("/sys/class/net/" + iface + "/statistics/tx_bytes");
  double v = -1;
  if (!(in >> v)) return -1;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string backend = argc > 1 ? argv[1] : "gloo";
  std::vector<int64_t> a = {4, 256, 4, 32, 1, 2048, 5};
  for (int i = 2; i < argc && i <= 8; ++i) a[i - 2] = std::atoll(argv[i]);
  const int64_t L = a[0], C = a[1], H = a[2], T = a[3], B = a[4], V = a[5], steps = std::max<int64_t>(a[6], 1);
  const char* iface_env = std::getenv("LOOM_BENCH_IFACE");
  const std::string iface = iface_env && *iface_env ? iface_env : "lan0";
  auto world = collectives::init_process_group(backend);
  const int W = world->size(), rank = world->rank();
  const bool leader = collectives::rank_info_from_env().local_rank == 0;
  if (W % 2 != 0 || W < 4) {
    if (rank == 0) std::fprintf(stderr, "bench_hsdp: needs an even world of at least 4 ranks (2 nodes), got %d\n", W);
    return 2;
  }

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
  if (rank == 0) {
    std::printf(
        "# GPT-2 %lld layers, width %lld, seq %lld, batch %lld per rank, %lld parameters; %d ranks on 2 nodes\n",
        static_cast<long long>(L), static_cast<long long>(C), static_cast<long long>(T), static_cast<long long>(B),
        static_cast<long long>(numel), W);
    std::printf("# layout backend ranks step_ms link_MB_per_step\n");
    std::fflush(stdout);
  }
  parallel::DeviceMesh mesh(world, {{"dp", 2}, {"fsdp", W / 2}});

  for (const char* layout : {"fsdp", "hsdp"}) {
    const bool hsdp = std::string(layout) == "hsdp";
    Generator gen(0);
    auto model = std::make_shared<nn::GPT2>(cfg, gen);
    parallel::FullyShardOptions opts;
    if (hsdp) opts.replicate_group = mesh.group("dp");
    parallel::FullyShard fsdp(model, hsdp ? mesh.group("fsdp") : world, opts);
    nn::AdamW opt(fsdp.param_groups(1e-4, 0.1), nn::AdamWOptions{});
    std::vector<double> times;
    double tx0 = 0;
    for (int64_t s = 0; s <= steps; ++s) {  // step 0 warms up (allocations, AdamW state, connections)
      world->barrier()->wait();
      if (s == 1) tx0 = node_tx_bytes(leader, iface);
      auto t0 = std::chrono::steady_clock::now();
      opt.zero_grad();
      model->loss(idx, targets).backward();
      fsdp.clip_grad_norm_(1.0);
      opt.step();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (s > 0) times.push_back(ms);
    }
    world->barrier()->wait();
    const double tx1 = node_tx_bytes(leader, iface);
    const double sent = leader ? (tx0 < 0 || tx1 < 0 ? -1e30 : tx1 - tx0) : 0;
    const double link = group_reduce(*world, sent, collectives::ReduceOp::kSum);
    std::vector<double> step_max;
    for (double t : times) step_max.push_back(group_reduce(*world, t, collectives::ReduceOp::kMax));
    if (rank == 0) {
      if (link < 0) {
        std::printf("%-5s %-5s %d %10.1f %10s  (no /sys/class/net/%s counter)\n", layout, backend.c_str(), W,
                    median(step_max), "n/a", iface.c_str());
      } else {
        std::printf("%-5s %-5s %d %10.1f %10.2f\n", layout, backend.c_str(), W, median(step_max),
                    link / static_cast<double>(steps) / 1e6);
      }
      std::fflush(stdout);
    }
  }
  world->barrier()->wait();
  return 0;
}
