// The quick-start job until the YAML pretraining recipe lands: trains a tiny
// GPT-2 on a synthetic but learnable token stream (a sparse Markov chain) on
// the CPU and prints the loss falling towards the stream's entropy floor.
//
// Usage: train_tiny [--steps N] [--seed S] [--threads N] [--parallel none|ddp|fsdp|tp|fsdp_tp] [--backend gloo|mpi]
// Started by trainlaunch, mpirun or srun it trains on every rank: ddp and fsdp
// split the global batch of 16 rows over the ranks, tp splits the model over
// them, fsdp_tp does both on a (fsdp = W/2) x (tp = 2) mesh.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <omp.h>

#include "autograd/functions.h"
#include "collectives/init.h"
#include "nn/clip_grad.h"
#include "nn/gpt2.h"
#include "nn/lr_scheduler.h"
#include "nn/optim.h"
#include "parallel/ddp.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "parallel/tensor_parallel.h"

using namespace loom;

namespace {

constexpr int64_t kVocab = 64;
constexpr int64_t kSuccessors = 3;  // each token is followed by one of 3 tokens

/// A Markov chain over kVocab tokens with kSuccessors successors each, and its
/// conditional entropy (nats/token), the loss a perfect model reaches.
struct MarkovStream {
  std::vector<int64_t> next;  // (V, kSuccessors)
  std::vector<double> prob;   // (V, kSuccessors)
  std::vector<int64_t> tokens;
  double entropy = 0;

  MarkovStream(int64_t length, uint64_t seed) {
    Generator gen(seed);
    auto succ = ops::randint(0, kVocab, {kVocab, kSuccessors}, gen).to_vector<int64_t>();
    auto w = ops::rand({kVocab, kSuccessors}, gen, DType::f64).to_vector<double>();
    next = succ;
    prob.resize(w.size());
    for (int64_t v = 0; v < kVocab; ++v) {
      double s = 0;
      for (int64_t j = 0; j < kSuccessors; ++j) s += w[v * kSuccessors + j] + 0.5;
      for (int64_t j = 0; j < kSuccessors; ++j) prob[v * kSuccessors + j] = (w[v * kSuccessors + j] + 0.5) / s;
    }
    auto u = ops::rand({length}, gen, DType::f64).to_vector<double>();
    tokens.resize(length);
    std::vector<int64_t> visits(kVocab, 0);
    int64_t cur = 0;
    for (int64_t i = 0; i < length; ++i) {
      tokens[i] = cur;
      ++visits[cur];
      double acc = 0;
      int64_t j = 0;
      for (; j < kSuccessors - 1; ++j) {
        acc += prob[cur * kSuccessors + j];
        if (u[i] < acc) break;
      }
      cur = next[cur * kSuccessors + j];
    }
    // Duplicate successors merge into one outcome; the entropy accounts for that.
    for (int64_t v = 0; v < kVocab; ++v) {
      std::vector<double> p(kVocab, 0.0);
      for (int64_t j = 0; j < kSuccessors; ++j) p[next[v * kSuccessors + j]] += prob[v * kSuccessors + j];
      double h = 0;
      for (double x : p)
        if (x > 0) h -= x * std::log(x);
      entropy += h * static_cast<double>(visits[v]) / static_cast<double>(length);
    }
  }
};

int64_t parse_int(const char* flag, const char* value) {
  char* end = nullptr;
  long long v = std::strtoll(value, &end, 10);
  if (!*value || *end || v <= 0) {
    std::fprintf(stderr, "train_tiny: %s expects a positive integer, got '%s'\n", flag, value);
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 300, seed = 1337, threads = 0;
  std::string parallel = "none", backend = "gloo";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--parallel" || a == "--backend") && i + 1 < argc) {
      (a == "--parallel" ? parallel : backend) = argv[++i];
    } else if ((a == "--steps" || a == "--seed" || a == "--threads") && i + 1 < argc) {
      int64_t v = parse_int(argv[i], argv[i + 1]);
      (a == "--steps" ? steps : a == "--seed" ? seed : threads) = v;
      ++i;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: train_tiny [--steps N] [--seed S] [--threads N] [--parallel none|ddp|fsdp|tp|fsdp_tp]\n"
          "                  [--backend gloo|mpi]\n"
          "Trains a tiny GPT-2 on a synthetic Markov-chain token stream on the CPU; under trainlaunch,\n"
          "mpirun or srun with --parallel it trains data-parallel (ddp), fully sharded (fsdp),\n"
          "tensor-parallel (tp) or fsdp x tp across the ranks.\n");
      return 0;
    } else {
      std::fprintf(stderr, "train_tiny: unknown option '%s' (try --help)\n", argv[i]);
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  if (parallel != "none" && parallel != "ddp" && parallel != "fsdp" && parallel != "tp" && parallel != "fsdp_tp") {
    std::fprintf(stderr, "train_tiny: --parallel must be none, ddp, fsdp, tp or fsdp_tp, got '%s'\n", parallel.c_str());
    return 2;
  }

  try {
    const int64_t B = 16, T = 32;
    MarkovStream data(200000, static_cast<uint64_t>(seed));
    nn::GPT2Config cfg;
    cfg.vocab_size = kVocab;
    cfg.n_positions = T;
    cfg.n_embd = 64;
    cfg.n_layer = 2;
    cfg.n_head = 4;
    Generator gen(static_cast<uint64_t>(seed));
    auto model = std::make_shared<nn::GPT2>(cfg, gen);

    // Layout: ranks from the environment (trainlaunch / mpirun / srun) when --parallel is given.
    std::shared_ptr<collectives::ProcessGroup> world;
    int dp_rank = 0, dp_size = 1;
    std::unique_ptr<parallel::DeviceMesh> mesh;
    std::unique_ptr<parallel::DistributedDataParallel> ddp;
    std::unique_ptr<parallel::FullyShard> fsdp;
    std::shared_ptr<collectives::ProcessGroup> tp_group, dp_group;
    if (parallel != "none") {
      world = collectives::init_process_group(backend);
      const int W = world->size();
      if (parallel == "fsdp_tp" && W % 2 != 0) {
        std::fprintf(stderr, "train_tiny: --parallel fsdp_tp needs an even number of ranks, got %d\n", W);
        return 2;
      }
      if (parallel == "ddp") mesh.reset(new parallel::DeviceMesh(world, {{"dp", W}}));
      if (parallel == "fsdp") mesh.reset(new parallel::DeviceMesh(world, {{"fsdp", W}}));
      if (parallel == "tp") mesh.reset(new parallel::DeviceMesh(world, {{"tp", W}}));
      if (parallel == "fsdp_tp") mesh.reset(new parallel::DeviceMesh(world, {{"fsdp", W / 2}, {"tp", 2}}));
      if (mesh->has_dim("tp")) {
        tp_group = mesh->group("tp");
        parallel::tensor_parallelize(*model, tp_group);
      }
      if (parallel == "ddp") dp_group = mesh->group("dp");
      if (mesh->has_dim("fsdp")) dp_group = mesh->group("fsdp");
      if (dp_group) {
        dp_rank = dp_group->rank();
        dp_size = dp_group->size();
      }
      if (B % dp_size != 0) {
        std::fprintf(stderr, "train_tiny: the global batch of %lld rows does not split over %d data-parallel ranks\n",
                     static_cast<long long>(B), dp_size);
        return 2;
      }
      if (parallel == "ddp") ddp.reset(new parallel::DistributedDataParallel(model, dp_group));
      if (dp_group && parallel != "ddp") fsdp.reset(new parallel::FullyShard(model, dp_group));
    }
    const bool chatty = !world || world->rank() == 0;
    if (chatty) std::printf("%s\n", model->summary().c_str());
    if (chatty && mesh) std::printf("layout: %s, backend %s\n", mesh->str().c_str(), backend.c_str());
    if (chatty)
      std::printf(
          "data: Markov chain over %lld tokens, %lld successors each; entropy floor %.4f nats/token "
          "(uniform guess %.4f)\n",
          static_cast<long long>(kVocab), static_cast<long long>(kSuccessors), data.entropy,
          std::log(static_cast<double>(kVocab)));

    nn::AdamWOptions opts;
    opts.beta1 = 0.9;
    opts.beta2 = 0.95;
    nn::AdamW opt(fsdp ? fsdp->param_groups(3e-3, 0.1) : nn::weight_decay_groups(model->named_parameters(), 3e-3, 0.1),
                  opts);
    nn::WarmupCosineLR sched(opt, 3e-3, 3e-4, steps / 10, steps);

    Generator batch_gen(static_cast<uint64_t>(seed) + 1);
    const int64_t n = static_cast<int64_t>(data.tokens.size());
    double first_loss = 0, last_loss = 0, smoothed = 0;
    auto t_start = std::chrono::steady_clock::now();
    const int64_t local_b = B / dp_size;  // this rank's rows of the global batch
    for (int64_t step = 0; step < steps; ++step) {
      // Every rank draws the whole global batch (same generator) and keeps its rows.
      auto starts = ops::randint(0, n - T - 1, {B}, batch_gen).to_vector<int64_t>();
      std::vector<int64_t> x(local_b * T), y(local_b * T);
      for (int64_t b = 0; b < local_b; ++b)
        for (int64_t t = 0; t < T; ++t) {
          x[b * T + t] = data.tokens[starts[dp_rank * local_b + b] + t];
          y[b * T + t] = data.tokens[starts[dp_rank * local_b + b] + t + 1];
        }
      Tensor idx = from_vector<int64_t>(x, {local_b, T}), tgt = from_vector<int64_t>(y, {local_b, T});
      if (fsdp) {
        fsdp->zero_grad();
      } else {
        opt.zero_grad();
      }
      Tensor loss = model->loss(idx, tgt);
      loss.backward();
      double gnorm = fsdp       ? fsdp->clip_grad_norm_(1.0, 2.0, tp_group)
                     : tp_group ? parallel::tp_clip_grad_norm_(model->parameters(), 1.0, *tp_group)
                                : nn::clip_grad_norm_(model->parameters(), 1.0);
      double lr = sched.last_lr();
      opt.step();
      sched.step();
      double l = loss.item();
      if (dp_group) {  // the global batch's loss: mean over data-parallel ranks
        Tensor t = ops::full({1}, l, DType::f64);
        dp_group->allreduce(t, {collectives::ReduceOp::kAvg})->wait();
        l = t.item();
      }
      if (step == 0) first_loss = smoothed = l;
      smoothed = 0.9 * smoothed + 0.1 * l;
      last_loss = smoothed;
      if (chatty && (step % 25 == 0 || step == steps - 1)) {
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
        std::printf("step %4lld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tokens/s\n", static_cast<long long>(step),
                    l, lr, gnorm, static_cast<double>((step + 1) * B * T) / secs);
        std::fflush(stdout);
      }
    }
    if (chatty)
      std::printf("loss %.4f -> %.4f (smoothed) in %lld steps; entropy floor %.4f\n", first_loss, last_loss,
                  static_cast<long long>(steps), data.entropy);
    if (!(last_loss < first_loss - 1.0)) {
      std::fprintf(stderr, "train_tiny: the loss did not fall by 1 nat; something is wrong\n");
      return 1;
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "train_tiny: %s\n", e.what());
    return 1;
  }
}
