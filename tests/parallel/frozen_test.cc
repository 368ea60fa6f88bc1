// Frozen parameters (requires_grad false) under DDP, FullyShard and tensor parallelism: a tiny GPT-2 with frozen
// embeddings and block weights and LoRA adapters beside them trains three AdamW steps to what single-rank training of
// the same model reaches; the frozen parameters end bit for bit where they started, get no gradient and no optimizer
// state; FullyShard keeps no gradient bytes and reduce-scatters nothing for them. The suites are named DDP*,
// FullyShard*, TensorParallel* and FsdpTp* so the mpirun entries of those wrappers run them (2 and 4 ranks, gloo and
// mpi; FsdpTp on 4).
#include <gtest/gtest.h>

#include <set>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "nn/freeze.h"
#include "nn/lora.h"
#include "parallel/ddp.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "parallel/tensor_parallel.h"
#include "tensor/storage.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::world;

constexpr int kSteps = 3;
constexpr double kLr = 1e-2, kWd = 0.1, kClip = 0.5;

/// Tiny GPT-2 set up for adapter fine-tuning: embeddings (and the tied head) and every block's weights frozen, LoRA
/// adapters (r 4, alpha 8, both drawn so both train from the first step) beside each block's attn.c_attn and
/// mlp.c_fc, ln_f trainable. Every FSDP unit then holds frozen and trainable parameters. Same weights on every rank.
std::shared_ptr<nn::GPT2> lora_gpt2() {
  auto model = std::dynamic_pointer_cast<nn::GPT2>(ptest::tiny_model(Family::kGPT2));
  nn::freeze_parameters(*model, {"transformer.wte.*", "transformer.wpe.*", "transformer.h.*"}, "test.freeze");
  Generator gen(2024);
  nn::LoRAOptions lo;
  lo.rank = 4;
  lo.alpha = 8.0;
  lo.zero_init_b = false;
  for (auto& block : model->blocks()) {
    nn::CausalSelfAttention& a = *block->attn;
    a.c_attn = a.register_module("c_attn", std::make_shared<nn::LoRALinear>(*a.c_attn, lo, gen));
    auto& mlp = dynamic_cast<nn::GeluMLP&>(*block->mlp);
    mlp.c_fc = mlp.register_module("c_fc", std::make_shared<nn::LoRALinear>(*mlp.c_fc, lo, gen));
  }
  return model;
}

/// Tiny GPT-2 with its embeddings and every attention layer frozen (tensor_parallelize replaces the Linears, so no
/// adapters here).
std::shared_ptr<nn::CausalLM> frozen_attention_gpt2() {
  auto model = ptest::tiny_model(Family::kGPT2);
  nn::freeze_parameters(*model, {"transformer.w?e.weight", "transformer.h.*.attn.*"}, "test.freeze");
  return model;
}

nn::StateDict cloned(const nn::StateDict& d) {
  nn::StateDict out;
  for (const auto& [k, v] : d) out.insert(k, ops::clone(ops::to(v, kCPU)));
  return out;
}

/// The state-dict names of m's frozen and of its trainable parameters.
std::pair<std::set<std::string>, std::set<std::string>> split_names(const nn::Module& m) {
  std::set<std::string> frozen, trainable;
  for (const auto& [name, p] : m.named_parameters()) (p.requires_grad() ? trainable : frozen).insert(name);
  return {frozen, trainable};
}

/// AdamW groups as a PyTorch user builds them from model.parameters(): every parameter, frozen ones included (decay on
/// >= 2-D). The optimizer must skip those that never get a gradient.
std::vector<nn::ParamGroup> all_param_groups(const nn::Module& m) {
  nn::ParamGroup decay{{}, kLr, kWd}, no_decay{{}, kLr, 0.0};
  for (const auto& [name, p] : m.named_parameters()) (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  return {decay, no_decay};
}

struct FrozenRun {
  std::vector<double> losses;
  nn::StateDict params;
};

/// Single-rank training of make()'s model on the global batches: each step's gradient accumulated over `blocks` row
/// blocks in order (loss / blocks each), clipped, one AdamW step over the trainable parameters.
FrozenRun reference(const std::function<std::shared_ptr<nn::CausalLM>()>& make, int blocks) {
  auto model = make();
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), kLr, kWd), nn::AdamWOptions{});
  FrozenRun out;
  for (int step = 0; step < kSteps; ++step) {
    opt.zero_grad();
    double loss_sum = 0.0;
    for (int r = 0; r < blocks; ++r) {
      ptest::Batch b = ptest::rows(ptest::global_batch(step), r, blocks);
      Tensor loss = model->loss(b.idx, b.targets);
      loss_sum += loss.item<double>();
      loom::mul(loss, 1.0 / blocks).backward();
    }
    out.losses.push_back(loss_sum / blocks);
    nn::clip_grad_norm_(model->parameters(), kClip);
    opt.step();
  }
  out.params = cloned(model->state_dict());
  return out;
}

/// Frozen tensors of got equal init bit for bit; every trainable one moved.
void expect_only_trainable_moved(const nn::StateDict& got, const nn::StateDict& init,
                                 const std::set<std::string>& frozen, const std::set<std::string>& trainable) {
  ASSERT_FALSE(frozen.empty());
  ASSERT_FALSE(trainable.empty());
  nn::StateDict got_frozen, init_frozen;
  for (const auto& name : frozen) {
    ASSERT_TRUE(got.contains(name)) << name;
    got_frozen.insert(name, got.at(name));
    init_frozen.insert(name, init.at(name));
  }
  ptest::expect_state_near(got_frozen, init_frozen, 0.0);
  for (const auto& name : trainable) {
    ASSERT_TRUE(got.contains(name)) << name;
    EXPECT_GT(ops::max(ops::abs(ops::sub(got.at(name), init.at(name)))).item(), 0.0) << name << " did not train";
  }
}

/// Optimizer state exists exactly for the parameters that require grad, and holds `want_numel` elements per moment.
void expect_state_only_for_trainable(const nn::AdamW& opt, int64_t want_numel) {
  const nn::OptimizerState st = opt.state_dict();
  int64_t index = 0, exp_avg_numel = 0;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params) {
      auto it = st.state.find(index++);
      const bool has = it != st.state.end() && !it->second.tensors.empty();
      EXPECT_EQ(has, p.requires_grad()) << "parameter " << index - 1 << " (requires_grad " << p.requires_grad() << ")";
      if (has) exp_avg_numel += it->second.tensors.at("exp_avg").numel();
    }
  EXPECT_EQ(exp_avg_numel, want_numel);
}

TEST(DDPFrozen, LoraAdaptersMatchSingleRankAndFrozenWeightsGetNoGradientOrState) {
  const int W = world()->size();
  auto model = lora_gpt2();
  const nn::StateDict init = cloned(model->state_dict());
  const auto [frozen, trainable] = split_names(*model);
  DDPOptions o;
  o.rank_ordered_reduce = true;  // the ranks' gradients added in rank order, as the block-wise reference adds them
  DistributedDataParallel ddp(model, world(), o);
  size_t bucketed = 0;
  for (const auto& b : ddp.buckets())
    for (const auto& name : b.names) {
      EXPECT_TRUE(trainable.count(name)) << name << " is in a bucket but is frozen";
      ++bucketed;
    }
  EXPECT_EQ(bucketed, trainable.size());

  nn::AdamW opt(all_param_groups(*model), nn::AdamWOptions{});
  FrozenRun run;
  for (int step = 0; step < kSteps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), world()->rank(), W);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();  // unused-parameter detection is on (find_unused_parameters false): frozen ones must not trip it
    run.losses.push_back(ptest::group_mean(*world(), loss.item<double>()));
    for (const auto& [name, p] : model->named_parameters())
      EXPECT_EQ(p.grad().defined(), p.requires_grad()) << name << " at step " << step;
    nn::clip_grad_norm_(model->parameters(), kClip);
    opt.step();
  }
  run.params = cloned(model->state_dict());

  int64_t trainable_numel = 0;
  for (const auto& [name, p] : model->named_parameters())
    if (p.requires_grad()) trainable_numel += p.numel();
  expect_state_only_for_trainable(opt, trainable_numel);
  const FrozenRun ref = reference([] { return lora_gpt2(); }, W);
  ptest::expect_values_near(run.losses, ref.losses, 1e-5, "loss");
  ptest::expect_state_near(run.params, ref.params, 1e-5);
  expect_only_trainable_moved(run.params, init, frozen, trainable);
}

TEST(FullyShardFrozen, LoraAdaptersMatchSingleRankWithoutGradientsStateOrTrafficForFrozen) {
  const int W = world()->size();
  auto model = lora_gpt2();
  const nn::StateDict init = cloned(model->state_dict());
  const auto [frozen, trainable] = split_names(*model);
  int64_t trainable_numel = 0, frozen_numel = 0;
  for (const auto& [name, p] : model->named_parameters())
    (p.requires_grad() ? trainable_numel : frozen_numel) += p.numel();

  FullyShardOptions o;
  if (W > 2) o.grad_reduce = GradReduce::kRankOrdered;
  FullyShard fsdp(model, world(), o);
  const FullyShard::ParamCounts counts = fsdp.param_counts();
  EXPECT_EQ(counts.trainable_numel, trainable_numel);
  EXPECT_EQ(counts.frozen_numel, frozen_numel);
  // Every unit holds frozen and trainable parameters: it gathers both, reduce-scatters the trainable ones only.
  int64_t grad_bytes_per_pass = 0;
  for (size_t u = 0; u < fsdp.num_units(); ++u) {
    SCOPED_TRACE(fsdp.unit_name(u));
    EXPECT_GT(fsdp.unit_grad_bytes(u), 0);
    EXPECT_LE(fsdp.unit_grad_bytes(u), 4 * (counts.trainable_numel + 2 * W));
    grad_bytes_per_pass += fsdp.unit_grad_bytes(u);
  }
  EXPECT_LE(grad_bytes_per_pass, 4 * (trainable_numel + 2 * W * static_cast<int64_t>(fsdp.num_units())));
  EXPECT_GE(grad_bytes_per_pass, 4 * trainable_numel);
  for (const auto& p : fsdp.parameters()) EXPECT_TRUE(p.requires_grad());

  nn::AdamW opt(fsdp.param_groups(kLr, kWd), nn::AdamWOptions{});
  FrozenRun run;
  for (int step = 0; step < kSteps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), world()->rank(), W);
    opt.zero_grad();
    const int64_t rs_before = fsdp.reduce_scatter_bytes();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    EXPECT_EQ(fsdp.reduce_scatter_bytes() - rs_before, grad_bytes_per_pass) << "step " << step;
    EXPECT_EQ(fsdp.grad_shard_bytes(), 4 * counts.trainable_shard_numel) << "step " << step;
    for (const auto& [name, p] : model->named_parameters())
      EXPECT_FALSE(p.grad().defined()) << name << ": gradients live on the shards only";
    run.losses.push_back(ptest::group_mean(*world(), loss.item<double>()));
    fsdp.clip_grad_norm_(kClip);
    opt.step();
  }
  expect_state_only_for_trainable(opt, counts.trainable_shard_numel);
  run.params = fsdp.full_state_dict(/*rank0_only=*/false);
  const FrozenRun ref = reference([] { return lora_gpt2(); }, W);
  ptest::expect_values_near(run.losses, ref.losses, 1e-5, "loss");
  ptest::expect_state_near(run.params, ref.params, 1e-5);
  expect_only_trainable_moved(run.params, init, frozen, trainable);

  // The sharded state dict (what checkpoints save) holds frozen parameters too, and loads back.
  std::set<std::string> piece_names;
  for (const auto& s : fsdp.sharded_state_dict()) piece_names.insert(s.name);
  size_t frozen_pieces = 0;
  for (const auto& name : piece_names) frozen_pieces += frozen.count(name);
  EXPECT_GT(frozen_pieces, 0u);
  fsdp.load_full_state_dict(init);
  ptest::expect_state_near(fsdp.full_state_dict(false), init, 0.0);
}

// Backward runs through a block whose parameters are all frozen (the embeddings before it train): FullyShard gathers
// it for backward although it reduces nothing, and the blocks around it still get their gradients.
TEST(FullyShardFrozen, AWhollyFrozenMiddleBlockMatchesSingleRank) {
  const int W = world()->size();
  auto make = [] {
    auto m = ptest::tiny_model(Family::kGPT2);
    nn::freeze_parameters(*m, {"transformer.h.1.*"}, "test.freeze");
    return m;
  };
  auto model = make();
  const nn::StateDict init = cloned(model->state_dict());
  const auto [frozen, trainable] = split_names(*model);
  FullyShardOptions o;
  if (W > 2) o.grad_reduce = GradReduce::kRankOrdered;
  FullyShard fsdp(model, world(), o);
  ASSERT_EQ(fsdp.unit_name(1), "transformer.h.1");
  EXPECT_EQ(fsdp.unit_grad_bytes(1), 0);
  EXPECT_GT(fsdp.unit_grad_bytes(0), 0);
  nn::AdamW opt(fsdp.param_groups(kLr, kWd), nn::AdamWOptions{});
  FrozenRun run;
  for (int step = 0; step < kSteps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), world()->rank(), W);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    run.losses.push_back(ptest::group_mean(*world(), loss.item<double>()));
    fsdp.clip_grad_norm_(kClip);
    opt.step();
  }
  run.params = fsdp.full_state_dict(/*rank0_only=*/false);
  const FrozenRun ref = reference(make, W);
  ptest::expect_values_near(run.losses, ref.losses, 1e-5, "loss");
  // GPT-2's key biases (exact gradient 0) turn summation-order noise into updates: compared with AdamW's bound, the
  // rest within 1e-4 relative L2 (ptest::expect_state_near_reordered).
  ptest::expect_state_near_reordered(run.params, ref.params);
  nn::StateDict got_frozen, init_frozen;
  for (const auto& name : frozen) {
    got_frozen.insert(name, run.params.at(name));
    init_frozen.insert(name, init.at(name));
  }
  ptest::expect_state_near(got_frozen, init_frozen, 0.0);
}

TEST(FullyShardFrozen, MemoryCountersShowNoGradientBytesForFrozenParameters) {
  const int W = world()->size();
  // Builds, wraps and trains two steps; returns the bytes held at the end beyond `base` and the buffers.
  auto train = [&](int64_t base, FullyShard::ParamCounts& c, int64_t& largest_unit, int64_t& grad_shard_bytes) {
    auto model = lora_gpt2();
    int64_t buffer_bytes = 0;
    for (const auto& t : model->buffers()) buffer_bytes += static_cast<int64_t>(t.nbytes());
    FullyShard fsdp(model, world());
    nn::AdamW opt(fsdp.param_groups(kLr, kWd), nn::AdamWOptions{});
    for (int step = 0; step < 2; ++step) {
      ptest::Batch b = ptest::rows(ptest::global_batch(step), world()->rank(), W);
      opt.zero_grad();
      model->loss(b.idx, b.targets).backward();
      fsdp.clip_grad_norm_(kClip);
      opt.step();
    }
    c = fsdp.param_counts();
    largest_unit = 0;
    for (size_t u = 0; u < fsdp.num_units(); ++u) largest_unit = std::max(largest_unit, fsdp.unit_full_bytes(u));
    grad_shard_bytes = fsdp.grad_shard_bytes();
    return memory_stats().allocated_bytes - base - buffer_bytes;
  };
  FullyShard::ParamCounts c;
  int64_t largest_unit = 0, grad_shard_bytes = 0;
  // A first run leaves whatever the backends cache at this test's sizes, so the measured run sees no earlier test's
  // buffers freed under it.
  train(memory_stats().allocated_bytes, c, largest_unit, grad_shard_bytes);
  const int64_t held = train(memory_stats().allocated_bytes, c, largest_unit, grad_shard_bytes);
  ASSERT_GT(c.frozen_shard_numel, 4 * c.trainable_shard_numel) << "the test needs frozen parameters to dominate";
  // Frozen: the f32 shard only. Trainable: shard, its gradient, exp_avg, exp_avg_sq.
  const int64_t want = 4 * c.frozen_shard_numel + 16 * c.trainable_shard_numel;
  const int64_t slack = 4096;
  EXPECT_LE(held, want + largest_unit + slack)
      << "rank " << world()->rank() << " holds " << held << " bytes; "
      << "frozen shards " << 4 * c.frozen_shard_numel << ", trainable x4 " << 16 * c.trainable_shard_numel;
  EXPECT_GE(held, want - slack) << "rank " << world()->rank() << " holds " << held << " bytes";
  EXPECT_EQ(grad_shard_bytes, 4 * c.trainable_shard_numel);
}

TEST(TensorParallelFrozen, FrozenShardsStayFrozenAndTrainingMatchesSingleRank) {
  auto model = frozen_attention_gpt2();
  const nn::StateDict init = cloned(model->state_dict());
  const auto [frozen, trainable] = split_names(*model);
  TensorParallelOptions o;
  o.reduce = TpReduce::kRankOrdered;
  tensor_parallelize(*model, world(), o);
  for (const auto& [name, p] : model->named_parameters())
    EXPECT_EQ(p.requires_grad(), !frozen.count(name)) << name << " after tensor_parallelize";

  nn::AdamW opt(all_param_groups(*model), nn::AdamWOptions{});
  FrozenRun run;
  for (int step = 0; step < kSteps; ++step) {
    ptest::Batch b = ptest::global_batch(step);  // every tp rank computes on the whole batch
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    for (const auto& [name, p] : model->named_parameters())
      EXPECT_EQ(p.grad().defined(), p.requires_grad()) << name << " at step " << step;
    run.losses.push_back(loss.item<double>());
    tp_clip_grad_norm_(model->parameters(), kClip, *world());
    opt.step();
  }
  int64_t local_trainable = 0;
  for (const auto& [name, p] : model->named_parameters())
    if (p.requires_grad()) local_trainable += p.numel();
  expect_state_only_for_trainable(opt, local_trainable);
  run.params = cloned(tp_gather_state_dict(*model, model->state_dict(), *world()));
  const FrozenRun ref = reference(frozen_attention_gpt2, 1);
  ptest::expect_values_near(run.losses, ref.losses, 1e-5, "loss");
  // Row-parallel layers add their partial products in another order than one rank: AdamW's bound, as the TP tests.
  ptest::expect_state_near_reordered(run.params, ref.params);
  expect_only_trainable_moved(run.params, init, frozen, trainable);
}

// FSDP over TP-local shards with frozen ones among them (the FsdpTp entry runs it on 4 ranks: fsdp 2 x tp 2; on fewer
// the mesh shrinks as in fsdp_tp_test.cc).
TEST(FsdpTpFrozen, FrozenTpShardsInFsdpUnitsStayFrozenAndTrainingMatchesSingleRank) {
  const int W = world()->size();
  const int fsdp_size = W >= 2 ? 2 : 1, tp_size = W / fsdp_size;
  ASSERT_EQ(fsdp_size * tp_size, W) << "FsdpTp runs on 1, 2 or 4 ranks";
  DeviceMesh mesh(world(), {{"fsdp", fsdp_size}, {"tp", tp_size}});
  auto tp = mesh.group("tp"), fsdp = mesh.group("fsdp");
  auto model = frozen_attention_gpt2();
  const nn::StateDict init = cloned(model->state_dict());
  const auto [frozen, trainable] = split_names(*model);
  TensorParallelOptions to;
  to.reduce = TpReduce::kRankOrdered;
  tensor_parallelize(*model, tp, to);
  FullyShardOptions fo;
  fo.grad_reduce = GradReduce::kRankOrdered;
  FullyShard sharded(model, fsdp, fo);
  nn::AdamW opt(sharded.param_groups(kLr, kWd), nn::AdamWOptions{});
  FrozenRun run;
  for (int step = 0; step < kSteps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), mesh.coordinate("fsdp"), fsdp_size);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    EXPECT_EQ(sharded.grad_shard_bytes(), 4 * sharded.param_counts().trainable_shard_numel);
    run.losses.push_back(ptest::group_mean(*fsdp, loss.item<double>()));
    sharded.clip_grad_norm_(kClip, 2.0, tp);
    opt.step();
  }
  expect_state_only_for_trainable(opt, sharded.param_counts().trainable_shard_numel);
  run.params = cloned(tp_gather_state_dict(*model, sharded.full_state_dict(/*rank0_only=*/false), *tp));
  const FrozenRun ref = reference(frozen_attention_gpt2, fsdp_size);
  ptest::expect_values_near(run.losses, ref.losses, 1e-5, "loss");
  ptest::expect_state_near_reordered(run.params, ref.params);
  expect_only_trainable_moved(run.params, init, frozen, trainable);
}

}  // namespace
}  // namespace loom::parallel
