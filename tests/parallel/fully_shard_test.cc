// FullyShard (FSDP / ZeRO-3): three AdamW steps on every rank's slice of the global batch end where single-rank
// training ends (GPT-2 and Llama, every option), memory per rank is a 1/W share plus one unit, the next unit's
// all-gather overlaps the current forward, state dicts round-trip, and misuse is a clear error. Every rank runs the
// same collectives in the same order.
#include "parallel/fully_shard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>

#include "autograd/functions.h"
#include "nn/activation_checkpointing.h"
#include "nn/clip_grad.h"
#include "parallel/device_mesh.h"
#include "tensor/storage.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::Run;
using ptest::world;

/// Three AdamW steps with FSDP over `group`, each rank on rows(part, parts) of the global batch.
Run train_fsdp(Family f, const FullyShardOptions& opts, std::shared_ptr<collectives::ProcessGroup> group = nullptr,
               const ptest::TrainConfig& cfg = {}) {
  if (!group) group = world();
  auto model = ptest::tiny_model(f);
  FullyShard fsdp(model, group, opts);
  nn::AdamW opt(fsdp.param_groups(cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  Run out;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), group->rank(), group->size());
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    out.losses.push_back(ptest::group_mean(*group, loss.item<double>()));
    out.grad_norms.push_back(fsdp.clip_grad_norm_(cfg.clip_norm));
    opt.step();
  }
  out.params = fsdp.full_state_dict(/*rank0_only=*/false);
  return out;
}

/// Losses and gradient norms agree with whole-batch single-rank training and the parameters with block-wise single-rank
/// training, all within 1e-5 (ptest::expect_matches_single_rank; on more than two ranks again with
/// GradReduce::kRankOrdered — two terms commute, so two ranks are exact).
void expect_matches_single_rank(Family f, const FullyShardOptions& opts) {
  SCOPED_TRACE(ptest::family_name(f));
  auto train = [&](bool rank_ordered) {
    FullyShardOptions o = opts;
    if (rank_ordered) o.grad_reduce = GradReduce::kRankOrdered;
    return train_fsdp(f, o);
  };
  ptest::expect_matches_single_rank(train, opts.grad_reduce == GradReduce::kRankOrdered,
                                    ptest::single_rank_reference(f),
                                    ptest::single_rank_reference(f, {}, world()->size()));
}

TEST(FullyShard, GPT2MatchesSingleRankAfterThreeSteps) { expect_matches_single_rank(Family::kGPT2, {}); }

TEST(FullyShard, LlamaMatchesSingleRankAfterThreeSteps) { expect_matches_single_rank(Family::kLlama, {}); }

TEST(FullyShard, UnitsAreTheBlocksPlusTheRoot) {
  auto model = ptest::tiny_model(Family::kGPT2);
  FullyShard fsdp(model, world());
  ASSERT_EQ(fsdp.num_units(), static_cast<size_t>(ptest::kLayers + 1));
  EXPECT_EQ(fsdp.unit_name(0), "transformer.h.0");
  EXPECT_EQ(fsdp.unit_name(ptest::kLayers), "root");
  // Shards: 1-D f32 leaves needing grad, one W-th of each padded flat group.
  int64_t shard_total = 0;
  for (const auto& p : fsdp.parameters()) {
    EXPECT_EQ(p.dim(), 1);
    EXPECT_EQ(p.dtype(), DType::f32);
    EXPECT_TRUE(p.requires_grad());
    shard_total += p.numel();
  }
  const int W = world()->size();
  EXPECT_GE(shard_total * W, model->num_parameters());
  EXPECT_LT(shard_total * W, model->num_parameters() + static_cast<int64_t>(fsdp.parameters().size()) * W);
  // Two groups (decay, no-decay) as nn::weight_decay_groups makes them.
  auto groups = fsdp.param_groups(1e-3, 0.1);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].weight_decay, 0.1);
  EXPECT_EQ(groups[1].weight_decay, 0.0);
}

TEST(FullyShardVariants, Zero2MatchesSingleRank) {
  FullyShardOptions o;
  o.reshard_after_forward = false;
  for (Family f : ptest::families()) expect_matches_single_rank(f, o);
}

TEST(FullyShardVariants, WithoutPrefetchMatchesSingleRank) {
  FullyShardOptions o;
  o.prefetch = false;
  for (Family f : ptest::families()) expect_matches_single_rank(f, o);
}

TEST(FullyShardVariants, WithoutOverlapMatchesSingleRank) {
  FullyShardOptions o;
  o.overlap = false;
  for (Family f : ptest::families()) expect_matches_single_rank(f, o);
}

// cpu_offload only chooses where the shards, their gradients and the optimizer state live (FsdpState::shard_device:
// the CPU instead of the compute device). On a CPU model both are the CPU, so this runs exactly the default path: it
// is a correctness check of the option, not a test of offloading, which only changes anything on a GPU (no GPU test
// of it exists yet).
TEST(FullyShardVariants, CpuOffloadMatchesSingleRank) {
  FullyShardOptions o;
  o.cpu_offload = true;
  for (Family f : ptest::families()) expect_matches_single_rank(f, o);
}

TEST(FullyShard, GradientsAccumulateOverBackwardPasses) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kLlama);
  FullyShard fsdp(model, g);
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  model->loss(b.idx, b.targets).backward();
  std::vector<Tensor> once;
  for (const auto& p : fsdp.parameters()) once.push_back(ops::clone(p.grad()));
  for (const auto& p : model->parameters()) EXPECT_FALSE(p.grad().defined()) << "full gradients are freed";
  fsdp.zero_grad();
  for (int half = 0; half < 2; ++half) {
    ptest::Batch part = ptest::rows(b, half, 2);
    loom::mul(model->loss(part.idx, part.targets), 0.5).backward();
  }
  std::vector<Tensor> shards = fsdp.parameters();
  for (size_t i = 0; i < shards.size(); ++i) {
    nn::StateDict got, want;
    got.insert("shard " + std::to_string(i), shards[i].grad());
    want.insert("shard " + std::to_string(i), once[i]);
    ptest::expect_state_near(got, want, 1e-5);
  }
}

TEST(FullyShardReshard, BlocksAreFreedAfterForwardUnlessZero2) {
  for (bool zero2 : {false, true}) {
    SCOPED_TRACE(zero2 ? "reshard_after_forward=false" : "reshard_after_forward=true");
    auto model = ptest::tiny_model(Family::kGPT2);
    FullyShardOptions o;
    o.reshard_after_forward = !zero2;
    FullyShard fsdp(model, world(), o);
    auto held = [](const nn::Module& m) {
      size_t bytes = 0;
      for (const auto& p : m.parameters()) bytes += p.storage()->nbytes();
      return bytes;
    };
    // Registered after FullyShard's hooks, so it sees the state they leave.
    // All blocks but the last: backward needs the last one first, so it stays gathered from its forward on.
    size_t blocks_after_forward = 0, last_after_forward = 0, root_after_forward = 0;
    model->register_forward_hook([&](nn::Module&) {
      const auto& blocks = model->blocks();
      for (size_t i = 0; i + 1 < blocks.size(); ++i) blocks_after_forward += held(*blocks[i]);
      last_after_forward = held(*blocks.back());
      root_after_forward = dynamic_cast<nn::GPT2&>(*model).transformer->wte->weight.storage()->nbytes();
    });
    ptest::Batch b = ptest::rows(ptest::global_batch(0), world()->rank(), world()->size());
    Tensor loss = model->loss(b.idx, b.targets);
    EXPECT_GT(root_after_forward, 0u) << "the root stays gathered from forward to the end of backward";
    EXPECT_GT(last_after_forward, 0u) << "the last block stays gathered for the start of backward";
    if (zero2) {
      EXPECT_GT(blocks_after_forward, 0u);
    } else {
      EXPECT_EQ(blocks_after_forward, 0u);
    }
    loss.backward();
    EXPECT_EQ(held(*model), 0u) << "every unit, the root included, is resharded when backward ends";
    {
      autograd::NoGradGuard no_grad;  // no backward follows: nothing stays gathered
      model->loss(b.idx, b.targets);
      EXPECT_EQ(held(*model), 0u);
    }
  }
}

TEST(FullyShardMixedPrecision, Bf16ComputeWithF32MasterShardsTracksF32Training) {
  for (auto [f, reduce] : {std::pair{Family::kGPT2, DType::f32}, std::pair{Family::kLlama, DType::f32},
                           std::pair{Family::kGPT2, DType::bf16}}) {
    SCOPED_TRACE(std::string(ptest::family_name(f)) + ", reduce in " + dtype_name(reduce));
    const auto& whole = ptest::single_rank_reference(f);
    const ptest::TrainConfig cfg;
    auto model = ptest::tiny_model(f);
    FullyShardOptions o;
    o.mixed_precision = {DType::bf16, reduce};
    FullyShard fsdp(model, world(), o);
    // Registered after FullyShard's pre-hook: sees the gathered parameters.
    int forwards_seen = 0;
    model->blocks()[1]->register_forward_pre_hook([&](nn::Module& m) {
      for (const auto& p : m.parameters()) {
        EXPECT_EQ(p.dtype(), DType::bf16);
        EXPECT_GE(p.storage()->nbytes(), p.storage_offset() * 2 + p.nbytes()) << "gathered before the forward";
      }
      ++forwards_seen;
    });
    nn::AdamW opt(fsdp.param_groups(cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
    std::vector<double> losses;
    for (int step = 0; step < cfg.steps; ++step) {
      ptest::Batch b = ptest::rows(ptest::global_batch(step), world()->rank(), world()->size());
      opt.zero_grad();
      Tensor loss = model->loss(b.idx, b.targets);
      EXPECT_EQ(loss.dtype(), DType::bf16);
      loss.backward();
      losses.push_back(ptest::group_mean(*world(), loss.item<double>()));
      for (const auto& p : fsdp.parameters()) {
        EXPECT_EQ(p.dtype(), DType::f32) << "master shards stay f32";
        ASSERT_TRUE(p.grad().defined());
        EXPECT_EQ(p.grad().dtype(), DType::f32);
      }
      fsdp.clip_grad_norm_(cfg.clip_norm);
      opt.step();
    }
    EXPECT_EQ(forwards_seen, cfg.steps);
    ptest::expect_values_near(losses, whole.losses, 0.03, "bf16 loss against f32 training");
    nn::StateDict full = fsdp.full_state_dict(false);
    EXPECT_EQ(full.at(whole.params.keys().front()).dtype(), DType::f32);
  }
}

TEST(FullyShardMemory, EachRankHoldsItsShareOfParamsGradsAndAdamState) {
  const int W = world()->size();
  for (Family f : ptest::families()) {
    SCOPED_TRACE(ptest::family_name(f));
    // Single-rank training measured the same way: validates the counters and gives the total.
    int64_t numel = 0, buffer_bytes = 0, single = 0;
    {
      const int64_t base = memory_stats().allocated_bytes;
      auto model = ptest::tiny_model(f);
      nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), 1e-3, 0.1), nn::AdamWOptions{});
      {
        ptest::Batch b = ptest::global_batch(0);
        model->loss(b.idx, b.targets).backward();
      }
      opt.step();
      single = memory_stats().allocated_bytes - base;
      numel = model->num_parameters();
      for (const auto& t : model->buffers()) buffer_bytes += static_cast<int64_t>(t.nbytes());
    }
    const int64_t total = 4 * 4 * numel;  // f32 parameters, gradients, exp_avg, exp_avg_sq
    // Slack for scratch tensors that a collective's task on the worker thread frees concurrently.
    const int64_t slack = 4096;
    EXPECT_NEAR(single, total + buffer_bytes, slack)
        << "single-rank bytes: parameters, gradients, AdamW state, buffers";

    const int64_t base = memory_stats().allocated_bytes;
    auto model = ptest::tiny_model(f);
    FullyShard fsdp(model, world());
    nn::AdamW opt(fsdp.param_groups(1e-3, 0.1), nn::AdamWOptions{});
    for (int step = 0; step < 2; ++step) {
      ptest::Batch b = ptest::rows(ptest::global_batch(step), world()->rank(), W);
      opt.zero_grad();
      model->loss(b.idx, b.targets).backward();
      fsdp.clip_grad_norm_(1.0);
      opt.step();
    }
    const int64_t held = memory_stats().allocated_bytes - base - buffer_bytes;
    int64_t largest_unit = 0;
    for (size_t u = 0; u < fsdp.num_units(); ++u) largest_unit = std::max(largest_unit, fsdp.unit_full_bytes(u));
    EXPECT_LE(held, total / W + largest_unit + slack)
        << "rank " << world()->rank() << " of " << W << " holds " << held << " bytes; single-rank total " << total;
    EXPECT_GE(held, total / W - slack) << "the shards, their gradients and both AdamW moments";
  }
}

/// Three AdamW steps (no clipping) under FullyShard, stepping with fsdp.step(opt); returns the full parameters.
nn::StateDict train_fsdp_stepping(Family f, bool wait_in_backward) {
  auto g = world();
  auto model = ptest::tiny_model(f);
  FullyShardOptions o;
  o.wait_in_backward = wait_in_backward;
  FullyShard fsdp(model, g, o);
  nn::AdamW opt(fsdp.param_groups(1e-3, 0.1), nn::AdamWOptions{});
  for (int step = 0; step < 3; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), g->rank(), g->size());
    fsdp.zero_grad();
    model->loss(b.idx, b.targets).backward();
    fsdp.step(opt);
  }
  return fsdp.full_state_dict(/*rank0_only=*/false);
}

TEST(FullyShardOptimizerOverlap, SteppingEachShardAsItsReduceScatterEndsEqualsWaitingThenStepping) {
  for (Family f : ptest::families()) {
    SCOPED_TRACE(ptest::family_name(f));
    const nn::StateDict want = train_fsdp_stepping(f, /*wait_in_backward=*/true);
    const nn::StateDict got = train_fsdp_stepping(f, /*wait_in_backward=*/false);
    ptest::expect_state_bit_equal(got, want);  // against waiting in backward
  }
}

TEST(FullyShardOptimizerOverlap, ForwardWithReductionsPendingIsAnError) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kLlama);
  FullyShardOptions o;
  o.wait_in_backward = false;
  FullyShard fsdp(model, g, o);
  nn::AdamW opt(fsdp.param_groups(1e-3, 0.1), nn::AdamWOptions{});
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  model->loss(b.idx, b.targets).backward();
  try {
    model->loss(b.idx, b.targets);
    FAIL() << "a forward with reduce-scatters pending must throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("step(optimizer) or wait_gradients()"), std::string::npos) << e.what();
  }
  // The pass was dropped: the next one trains, and wait_gradients() makes every shard's gradient final.
  fsdp.zero_grad();
  model->loss(b.idx, b.targets).backward();
  fsdp.wait_gradients();
  for (const Tensor& shard : fsdp.parameters()) EXPECT_TRUE(shard.grad().defined());
  fsdp.step(opt);  // nothing pending: a plain step
}

/// Peak bytes above what is allocated before the forward, over one forward + backward of an 8-layer GPT-2 under
/// FullyShard with `spec` activation checkpointing. Activations dominate: the batch is large against the weights.
int64_t fsdp_activation_peak(const std::string& spec) {
  Generator gen(5);
  nn::GPT2Config c = ptest::tiny_gpt2_config();
  c.n_layer = 8;
  c.n_positions = 64;
  auto model = std::make_shared<nn::GPT2>(c, gen);
  nn::apply_activation_checkpointing(*model, nn::ActivationCheckpointing::parse(spec));
  FullyShard fsdp(model, world());
  Generator data(9);
  Tensor idx = ops::randint(0, ptest::kVocab, {8, 64}, data), tgt = ops::randint(0, ptest::kVocab, {8, 64}, data);
  model->loss(idx, tgt).backward();  // warm-up: gradients exist afterwards, as in training
  const int64_t base = memory_stats().allocated_bytes;
  reset_peak_memory_stats();
  model->loss(idx, tgt).backward();
  return memory_stats().peak_bytes - base;
}

TEST(FullyShardMemory, FullActivationCheckpointingCutsTheActivationPeakBy70Percent) {
  const int64_t none = fsdp_activation_peak("none"), full = fsdp_activation_peak("full");
  const int64_t selective = fsdp_activation_peak("selective");
  EXPECT_LE(full, none * 3 / 10) << "rank " << world()->rank() << ": peak above the resting state " << full
                                 << " bytes with full checkpointing, " << none << " without";
  EXPECT_LT(full, selective);
  EXPECT_LT(selective, none);
  if (world()->rank() == 0)
    std::printf(
        "activation peak of an 8-layer GPT-2 under FullyShard(%d): none %lld, selective %lld, full %lld bytes\n",
        world()->size(), static_cast<long long>(none), static_cast<long long>(selective), static_cast<long long>(full));
}

TEST(FullyShardOverlap, NextUnitGatherStartsBeforeCurrentForwardEnds) {
  auto g = world();
  // A batch large enough that a block's forward takes milliseconds: on a loaded machine the worker thread may wait that
  // long for a core.
  ptest::Batch b = ptest::rows(ptest::global_batch(0, 256), g->rank(), g->size());
  for (bool prefetch : {true, false}) {
    SCOPED_TRACE(prefetch ? "prefetch" : "no prefetch");
    auto model = ptest::tiny_model(Family::kGPT2);
    FullyShardOptions o;
    o.prefetch = prefetch;
    FullyShard fsdp(model, g, o);
    int overlapped = 0, transitions = 0;
    for (int iter = 0; iter < 3; ++iter) {  // same collectives on every rank: no early exit
      model->loss(b.idx, b.targets).backward();
      std::map<uint64_t, collectives::TraceEntry> by_seq;
      for (const auto& e : g->trace())
        if (e.op == "all_gather") by_seq[e.seq] = e;
      const auto& tl = fsdp.forward_timeline();
      for (size_t u = 1; u + 1 < fsdp.num_units(); ++u) {  // block u after block u-1
        ASSERT_FALSE(tl[u].gather_seqs.empty()) << tl[u].name;
        ASSERT_LE(tl[u - 1].forward_end_ns, tl[u].forward_start_ns);
        bool early = false;
        for (uint64_t seq : tl[u].gather_seqs) {
          ASSERT_TRUE(by_seq.count(seq)) << "all_gather #" << seq << " of " << tl[u].name << " not in the trace";
          early = early || by_seq[seq].start_ns < tl[u - 1].forward_end_ns;
        }
        ++transitions;
        overlapped += early ? 1 : 0;
      }
    }
    if (prefetch) {
      EXPECT_GT(overlapped, 0) << "no block's all-gather started before the "
                                  "previous block's forward ended";
    } else {
      EXPECT_EQ(overlapped, 0) << "without prefetch a block is gathered only when it runs";
    }
    EXPECT_EQ(transitions, 3 * (ptest::kLayers - 1));
  }
}

TEST(FullyShardStateDict, FullStateDictRoundTripsAndShardedPiecesCoverEachParameterOnce) {
  auto g = world();
  const ptest::TrainConfig cfg;
  for (Family f : ptest::families()) {
    SCOPED_TRACE(ptest::family_name(f));
    auto model = ptest::tiny_model(f);
    FullyShard fsdp(model, g);
    nn::AdamW opt(fsdp.param_groups(cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
    ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
    model->loss(b.idx, b.targets).backward();
    opt.step();  // values no longer the initial ones

    nn::StateDict full = fsdp.full_state_dict(false);
    nn::StateDict r0 = fsdp.full_state_dict(true);
    EXPECT_EQ(full.keys(), ptest::tiny_model(f)->state_dict().keys()) << "the module's names, tied ones included";
    if (g->rank() == 0) {
      ptest::expect_state_near(r0, full, 0.0);
    } else {
      EXPECT_EQ(r0.size(), 0u);
    }

    // Full round trip into a fresh wrapped model: the same values, the same loss.
    auto other = ptest::tiny_model(f);
    FullyShard fsdp2(other, g);
    fsdp2.load_full_state_dict(full);
    ptest::expect_state_near(fsdp2.full_state_dict(false), full, 0.0);
    {
      autograd::NoGradGuard no_grad;
      EXPECT_EQ(model->loss(b.idx, b.targets).item<double>(), other->loss(b.idx, b.targets).item<double>());
    }

    // Sharded pieces: views of this rank's shard holding the right values.
    std::vector<ShardedTensor> pieces = fsdp.sharded_state_dict();
    std::map<std::string, int64_t> local_numel;
    for (const auto& p : pieces) {
      ASSERT_TRUE(full.contains(p.name)) << p.name;
      const Tensor& want = full.at(p.name);
      EXPECT_EQ(p.shape, want.sizes()) << p.name;
      ASSERT_EQ(p.local.numel(), p.flat_end - p.flat_begin) << p.name;
      Tensor want_part = ops::narrow(ops::reshape(want, {want.numel()}), 0, p.flat_begin, p.flat_end - p.flat_begin);
      EXPECT_EQ(p.local.to_vector<float>(), want_part.to_vector<float>()) << p.name;
      EXPECT_FALSE(p.tp.has_value());
      local_numel[p.name] += p.local.numel();
    }
    // Across ranks every parameter is covered exactly once.
    nn::NamedTensors named = model->named_parameters();
    Tensor counts = ops::zeros({static_cast<int64_t>(named.size())}, DType::i64);
    for (size_t i = 0; i < named.size(); ++i) counts.data<int64_t>()[i] = local_numel[named[i].first];
    g->allreduce(counts)->wait();
    for (size_t i = 0; i < named.size(); ++i)
      EXPECT_EQ(counts.data<int64_t>()[i], named[i].second.numel()) << named[i].first;

    // Pieces of an optimizer moment use the same names and ranges.
    std::vector<Tensor> shards = fsdp.parameters();
    size_t pieces_seen = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      Tensor moment = ops::full({shards[i].numel()}, 1.0 + static_cast<double>(i));
      for (const auto& p : fsdp.shard_pieces(i, moment)) {
        ASSERT_LT(pieces_seen, pieces.size());
        EXPECT_EQ(p.name, pieces[pieces_seen].name);
        EXPECT_EQ(p.flat_begin, pieces[pieces_seen].flat_begin);
        EXPECT_EQ(p.flat_end, pieces[pieces_seen].flat_end);
        EXPECT_EQ(p.local.to_vector<float>(), std::vector<float>(p.local.numel(), 1.0f + i));
        ++pieces_seen;
      }
    }
    EXPECT_EQ(pieces_seen, pieces.size());
    EXPECT_THROW(fsdp.shard_pieces(0, ops::zeros({shards[0].numel() + 1})), InvalidArgument);

    // Sharded round trip into a third model.
    auto third = ptest::tiny_model(f);
    FullyShard fsdp3(third, g);
    fsdp3.load_sharded_state_dict(pieces);
    ptest::expect_state_near(fsdp3.full_state_dict(false), full, 0.0);
    // Leaving out a piece is an error that names its parameter.
    if (!pieces.empty()) {
      std::vector<ShardedTensor> fewer(pieces.begin() + 1, pieces.end());
      try {
        fsdp3.load_sharded_state_dict(fewer);
        ADD_FAILURE() << "expected an error for a missing piece";
      } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find(pieces[0].name), std::string::npos) << e.what();
      }
    }
  }
}

TEST(FullyShardErrors, WrappingTwiceForeignUnitsAndBadStateDictsAreErrors) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kGPT2);
  FullyShard fsdp(model, g);
  try {
    FullyShard again(model, g);
    ADD_FAILURE() << "wrapping twice must fail";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("already wrapped by FullyShard"), std::string::npos) << e.what();
  }

  auto stranger = ptest::tiny_model(Family::kGPT2);
  auto root = ptest::tiny_model(Family::kLlama);
  try {
    FullyShard bad(root, {stranger->blocks()[0]}, g);
    ADD_FAILURE() << "a unit outside the root must fail";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("is not a submodule of the root"), std::string::npos) << e.what();
  }
  EXPECT_THROW(FullyShard(root, {root->blocks()[0], root->blocks()[0]}, g), InvalidArgument);
  {
    // The failed attempts claimed nothing: the root can still be wrapped.
    FullyShard ok(root, {root->blocks()[0]}, g);
    EXPECT_EQ(ok.num_units(), 2u);
  }

  nn::StateDict full = fsdp.full_state_dict(false);
  nn::StateDict wrong_shape, missing;
  for (const auto& [k, v] : full) {
    wrong_shape.insert(k, k == "transformer.wpe.weight" ? ops::zeros({3, 3}) : v);
    if (k != "transformer.ln_f.bias") missing.insert(k, v);
  }
  try {
    fsdp.load_full_state_dict(wrong_shape);
    ADD_FAILURE() << "a wrong shape must fail";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("transformer.wpe.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3, 3]"), std::string::npos) << msg;
  }
  try {
    fsdp.load_full_state_dict(missing);
    ADD_FAILURE() << "a missing key must fail";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("missing keys: [transformer.ln_f.bias]"), std::string::npos) << e.what();
  }
  // Nothing was changed by the failed loads.
  ptest::expect_state_near(fsdp.full_state_dict(false), full, 0.0);
}

TEST(FullyShardClip, ReplicatedParametersCountOnceAcrossTensorParallelRanks) {
  auto g = world();
  const int W = g->size();
  const int tp = W % 2 == 0 ? 2 : 1;
  DeviceMesh mesh(g, {{"fsdp", W / tp}, {"tp", tp}});
  auto fsdp_group = mesh.group("fsdp");
  const auto& whole = ptest::single_rank_reference(Family::kLlama);
  auto model = ptest::tiny_model(Family::kLlama);
  FullyShard fsdp(model, fsdp_group);
  // Every tp rank holds the same replicated model and batch rows.
  ptest::Batch b = ptest::rows(ptest::global_batch(0), fsdp_group->rank(), fsdp_group->size());
  model->loss(b.idx, b.targets).backward();
  const double plain = fsdp.clip_grad_norm_(1e9);
  const double with_tp = fsdp.clip_grad_norm_(1e9, 2.0, mesh.group("tp"));
  EXPECT_NEAR(plain, whole.grad_norms[0], 1e-5 * whole.grad_norms[0]);
  EXPECT_NEAR(with_tp, plain, 1e-9 * plain) << "replicated parameters must not count tp times";
  const double inf_norm = fsdp.clip_grad_norm_(1e9, std::numeric_limits<double>::infinity(), mesh.group("tp"));
  EXPECT_GT(inf_norm, 0.0);
  EXPECT_LE(inf_norm, plain);
  // Clipping scales the shards so the norm becomes max_norm.
  const double before = fsdp.clip_grad_norm_(0.5 * plain);
  EXPECT_NEAR(before, plain, 1e-12 * plain);
  EXPECT_NEAR(fsdp.clip_grad_norm_(1e9), 0.5 * plain, 1e-5 * plain);
  EXPECT_THROW(fsdp.clip_grad_norm_(1.0, 3.0), InvalidArgument);
}

}  // namespace
}  // namespace loom::parallel
