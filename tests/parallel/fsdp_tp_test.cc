// FSDP x TP on a 2-D mesh: the model is made tensor-parallel over `tp`, then FullyShard shards the TP-local
// parameters over `fsdp`; each fsdp rank trains on its rows of the global batch. Three AdamW steps end where
// single-rank training ends (losses and gradient norms against whole-batch training, parameters against the
// single-rank replay that adds in the ranks' order, tests/parallel/tp_reference.h). Registered on 4 ranks (fsdp 2 x
// tp 2); on fewer ranks the mesh shrinks (2 ranks: fsdp 2 x tp 1, 1 rank: 1 x 1) so the test still runs the same code.
#include <gtest/gtest.h>

#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "parallel/tensor_parallel.h"
#include "tests/parallel/harness.h"
#include "tests/parallel/tp_reference.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::world;

void expect_fsdp_tp_matches_single_rank(Family f) {
  const int W = world()->size();
  const int fsdp_size = W >= 2 ? 2 : 1, tp_size = W / fsdp_size;
  ASSERT_EQ(fsdp_size * tp_size, W) << "FsdpTp runs on 1, 2 or 4 ranks";
  DeviceMesh mesh(world(), {{"fsdp", fsdp_size}, {"tp", tp_size}});
  auto tp = mesh.group("tp"), fsdp = mesh.group("fsdp");
  const ptest::TrainConfig cfg;

  auto model = ptest::tiny_model(f);
  tensor_parallelize(*model, tp);  // on two tp ranks the all-reduce adds in a fixed order already
  FullyShardOptions opts;
  opts.grad_reduce = GradReduce::kRankOrdered;  // fsdp ranks' gradients added in rank order, as the replay does
  FullyShard sharded(model, fsdp, opts);
  nn::AdamW opt(sharded.param_groups(cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  std::vector<double> losses, grad_norms;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), mesh.coordinate("fsdp"), fsdp_size);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    losses.push_back(ptest::group_mean(*fsdp, loss.item<double>()));
    grad_norms.push_back(sharded.clip_grad_norm_(cfg.clip_norm, 2.0, tp));
    opt.step();
  }
  nn::StateDict params = tp_gather_state_dict(*model, sharded.full_state_dict(/*rank0_only=*/false), *tp);

  const auto& whole = ptest::single_rank_reference(f, cfg);
  ptest::expect_values_near(losses, whole.losses, 1e-5, "loss");
  ptest::expect_values_near(grad_norms, whole.grad_norms, 1e-5, "grad norm");
  ptest::expect_state_near(params, ptest::tp_order_reference(f, tp_size, fsdp_size, cfg).params, 1e-5);
  // Every rank ends with the same full parameters (one rank's divergence would show as a mismatch above on that rank
  // only; this states it directly).
  for (const auto& [name, t] : params) {
    Tensor mine = ops::contiguous(t), first = ops::clone(mine);
    world()->broadcast(first, {0})->wait();
    EXPECT_EQ(ops::max(ops::abs(ops::sub(mine, first))).item(), 0.0) << name << " on rank " << world()->rank();
  }
}

TEST(FsdpTp, GPT2MatchesSingleRankAfterThreeSteps) { expect_fsdp_tp_matches_single_rank(Family::kGPT2); }

TEST(FsdpTp, LlamaMatchesSingleRankAfterThreeSteps) { expect_fsdp_tp_matches_single_rank(Family::kLlama); }

}  // namespace
}  // namespace loom::parallel
