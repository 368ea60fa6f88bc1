// Hybrid sharding (HSDP): FullyShard over the fsdp group of a dp x fsdp mesh with FullyShardOptions::replicate_group
// = the dp group. Three AdamW steps on every rank's rows of the global batch end where single-rank training ends, the
// replicas end identical, and every unit's gradient goes reduce-scatter (shard group) then all-reduce (replica group),
// in the same order, as the collective trace shows. Registered on 4 ranks (dp 2 x fsdp 2); on fewer ranks the mesh
// shrinks (2 ranks: dp 2 x fsdp 1; 1 rank: 1 x 1) so the test still runs the same code.
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "parallel/tensor_parallel.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::Run;
using ptest::world;

struct HsdpMesh {
  int dp = 1, fsdp = 1;
};

HsdpMesh hsdp_mesh() {
  const int W = world()->size();
  HsdpMesh m;
  m.dp = W % 2 == 0 ? 2 : 1;
  m.fsdp = W / m.dp;
  return m;
}

/// Single-rank training that adds in HSDP's rank-ordered tree: each replica d accumulates its `shards` row blocks in
/// order (loss / (replicas * shards) each), then the replicas' sums are added in order. Mathematically
/// ptest::single_rank_reference; in f32 the bits HSDP with GradReduce::kRankOrdered computes (see
/// FullyShardOptions::replicate_group). Cached.
const ptest::Reference& hsdp_order_reference(Family f, int replicas, int shards, const ptest::TrainConfig& cfg = {}) {
  static std::map<std::string, ptest::Reference> cache;
  std::ostringstream key;
  key << ptest::family_name(f) << "/" << replicas << "x" << shards << "/" << cfg.steps << "/" << cfg.lr;
  auto it = cache.find(key.str());
  if (it != cache.end()) return it->second;
  ptest::Reference ref;
  auto model = ptest::tiny_model(f);
  auto params = model->parameters();
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  const int blocks = replicas * shards;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::global_batch(step);
    std::vector<Tensor> sum(params.size());
    double loss_sum = 0;
    for (int d = 0; d < replicas; ++d) {
      opt.zero_grad();
      for (int s = 0; s < shards; ++s) {
        ptest::Batch part = ptest::rows(b, d * shards + s, blocks);
        Tensor loss = model->loss(part.idx, part.targets);
        loss_sum += loss.item<double>();
        loom::mul(loss, 1.0 / blocks).backward();
      }
      for (size_t i = 0; i < params.size(); ++i)
        sum[i] = d == 0 ? ops::clone(params[i].grad()) : ops::add(sum[i], params[i].grad());
    }
    for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(sum[i]);
    ref.losses.push_back(loss_sum / blocks);
    ref.grad_norms.push_back(nn::clip_grad_norm_(params, cfg.clip_norm));
    opt.step();
  }
  for (const auto& [name, t] : model->state_dict()) ref.params.insert(name, ops::clone(t));
  return cache.emplace(key.str(), std::move(ref)).first->second;
}

/// Three AdamW steps with HSDP on the mesh; rank (d, f) trains on row block d * fsdp + f of the global batch.
Run train_hsdp(Family f, const DeviceMesh& mesh, FullyShardOptions opts, const ptest::TrainConfig& cfg = {}) {
  auto shard = mesh.group("fsdp");
  opts.replicate_group = mesh.group("dp");
  const int F = mesh.size("fsdp"), D = mesh.size("dp");
  const int block = mesh.coordinate("dp") * F + mesh.coordinate("fsdp");
  auto model = ptest::tiny_model(f);
  FullyShard fsdp(model, shard, opts);
  nn::AdamW opt(fsdp.param_groups(cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  Run out;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), block, F * D);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    out.losses.push_back(ptest::group_mean(*world(), loss.item<double>()));
    out.grad_norms.push_back(fsdp.clip_grad_norm_(cfg.clip_norm));
    opt.step();
  }
  out.params = fsdp.full_state_dict(/*rank0_only=*/false);
  return out;
}

/// Losses and gradient norms within 1e-5 of whole-batch single-rank training; parameters within 1e-5 of the
/// single-rank replay of HSDP's rank-ordered tree (after a default-reduction run checked within summation tolerance);
/// every rank, replicas included, ends with the same parameters.
void expect_hsdp_matches_single_rank(Family f, const FullyShardOptions& base = {}) {
  SCOPED_TRACE(ptest::family_name(f));
  const HsdpMesh m = hsdp_mesh();
  DeviceMesh mesh(world(), {{"dp", m.dp}, {"fsdp", m.fsdp}});
  Run last;
  auto train = [&](bool rank_ordered) {
    FullyShardOptions o = base;
    if (rank_ordered) o.grad_reduce = GradReduce::kRankOrdered;
    last = train_hsdp(f, mesh, o);
    return last;
  };
  ptest::expect_matches_single_rank(train, false, ptest::single_rank_reference(f),
                                    hsdp_order_reference(f, m.dp, m.fsdp));
  for (const auto& [name, t] : last.params) {
    Tensor mine = ops::contiguous(t), first = ops::clone(mine);
    world()->broadcast(first, {0})->wait();
    EXPECT_EQ(ops::max(ops::abs(ops::sub(mine, first))).item(), 0.0) << name << " on rank " << world()->rank();
  }
}

TEST(Hsdp, GPT2MatchesSingleRankAfterThreeSteps) { expect_hsdp_matches_single_rank(Family::kGPT2); }

TEST(Hsdp, LlamaMatchesSingleRankAfterThreeSteps) { expect_hsdp_matches_single_rank(Family::kLlama); }

TEST(Hsdp, WithoutOverlapAndAsZero2MatchesSingleRank) {
  FullyShardOptions no_overlap;
  no_overlap.overlap = false;
  no_overlap.prefetch = false;
  expect_hsdp_matches_single_rank(Family::kGPT2, no_overlap);
  FullyShardOptions zero2;
  zero2.reshard_after_forward = false;
  expect_hsdp_matches_single_rank(Family::kLlama, zero2);
}

TEST(Hsdp, EachGradientIsReduceScatteredThenAllReducedAcrossReplicasInOrder) {
  const HsdpMesh m = hsdp_mesh();
  DeviceMesh mesh(world(), {{"dp", m.dp}, {"fsdp", m.fsdp}});
  auto shard = mesh.group("fsdp"), replica = mesh.group("dp");
  auto model = ptest::tiny_model(Family::kGPT2);
  FullyShardOptions o;
  o.replicate_group = replica;
  FullyShard fsdp(model, shard, o);
  // Large enough that a block's backward takes milliseconds, so reduce-scatters finish while backward still runs.
  ptest::Batch b = ptest::rows(ptest::global_batch(0, 256), world()->rank(), world()->size());
  const size_t groups = fsdp.parameters().size();
  int early = 0;  // backward passes in which a replica all-reduce was issued before the last reduce-scatter
  for (int iter = 0; iter < 3; ++iter) {
    const uint64_t rs_from = shard->trace().empty() ? 0 : shard->trace().back().seq + 1;
    const uint64_t ar_from = replica->trace().empty() ? 0 : replica->trace().back().seq + 1;
    model->loss(b.idx, b.targets).backward();
    std::vector<collectives::TraceEntry> rs, ar;
    for (const auto& e : shard->trace())
      if (e.seq >= rs_from && e.op == "reduce_scatter") rs.push_back(e);
    for (const auto& e : replica->trace())
      if (e.seq >= ar_from) ar.push_back(e);
    if (m.dp == 1) {
      EXPECT_TRUE(ar.empty()) << "a replica group of one rank issues nothing";
      continue;
    }
    ASSERT_EQ(rs.size(), groups) << "one reduce-scatter per flat group";
    ASSERT_EQ(ar.size(), groups) << "one replica all-reduce per flat group, nothing else on the replica group";
    for (size_t k = 0; k < groups; ++k) {
      EXPECT_EQ(ar[k].op, "allreduce");
      EXPECT_EQ(ar[k].numel * m.fsdp, rs[k].numel)
          << "the k-th all-reduce carries the k-th reduce-scatter's shard (" << k << ")";
      EXPECT_GE(ar[k].start_ns, rs[k].end_ns) << "all-reduce " << k << " started before its reduce-scatter ended";
    }
    if (ar.front().enqueue_ns < rs.back().enqueue_ns) ++early;
  }
  if (m.dp > 1) {
    EXPECT_GT(early, 0) << "no replica all-reduce overlapped the rest of backward";
  }
}

// The 3-D mesh dp x fsdp x tp: the model made tensor-parallel over tp, FullyShard over fsdp with dp as the replicate
// group; rank (d, f, t) trains on row block d * fsdp + f. Registered on 8 ranks (2 x 2 x 2); on fewer the mesh shrinks
// (4: dp 2 x fsdp 1 x tp 2). Losses and gradient norms (clipping counts neither replicas nor tp-replicated parameters
// twice) within 1e-5 of whole-batch training; parameters within summation tolerance of it (the tp reduction adds in
// another order than single-rank training, ptest::expect_state_near_reordered); every rank ends with the same
// parameters.
TEST(HsdpTp, GPT2OnADpFsdpTpMeshMatchesSingleRank) {
  const int W = world()->size();
  const int tp_size = W >= 4 ? 2 : 1, dp = W / tp_size >= 2 ? 2 : 1, fsdp_size = W / (tp_size * dp);
  ASSERT_EQ(dp * fsdp_size * tp_size, W);
  DeviceMesh mesh(world(), {{"dp", dp}, {"fsdp", fsdp_size}, {"tp", tp_size}});
  auto tp = mesh.group("tp");
  const ptest::TrainConfig cfg;
  const Family f = Family::kGPT2;
  auto model = ptest::tiny_model(f);
  tensor_parallelize(*model, tp);
  FullyShardOptions opts;
  opts.replicate_group = mesh.group("dp");
  FullyShard sharded(model, mesh.group("fsdp"), opts);
  nn::AdamW opt(sharded.param_groups(cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  const int block = mesh.coordinate("dp") * fsdp_size + mesh.coordinate("fsdp");
  ptest::Run got;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), block, dp * fsdp_size);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    got.losses.push_back(ptest::group_mean(*world(), loss.item<double>()));
    got.grad_norms.push_back(sharded.clip_grad_norm_(cfg.clip_norm, 2.0, tp));
    opt.step();
  }
  got.params = tp_gather_state_dict(*model, sharded.full_state_dict(/*rank0_only=*/false), *tp);
  const auto& whole = ptest::single_rank_reference(f, cfg);
  ptest::expect_values_near(got.losses, whole.losses, 1e-5, "loss");
  ptest::expect_values_near(got.grad_norms, whole.grad_norms, 1e-5, "grad norm");
  ptest::expect_state_near_reordered(got.params, ptest::single_rank_reference(f, cfg, dp * fsdp_size).params, cfg);
  for (const auto& [name, t] : got.params) {
    Tensor mine = ops::contiguous(t), first = ops::clone(mine);
    world()->broadcast(first, {0})->wait();
    EXPECT_EQ(ops::max(ops::abs(ops::sub(mine, first))).item(), 0.0) << name << " on rank " << world()->rank();
  }
}

TEST(Hsdp, ReplicateGroupEqualToTheShardGroupIsAnError) {
  auto model = ptest::tiny_model(Family::kGPT2);
  FullyShardOptions o;
  o.replicate_group = world();
  try {
    FullyShard fsdp(model, world(), o);
    ADD_FAILURE() << "expected an error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("replicate_group"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom::parallel
