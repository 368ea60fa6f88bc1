// Tensor parallelism with the whole world as the tp group: the mappings, the vocabulary-parallel cross-entropy against
// loom::cross_entropy, a converted GPT-2 / Llama computing the single-rank logits, three AdamW steps ending where
// single-rank training ends, replicated gradients equal on every rank, and clear errors for sizes tp does not divide.
// Every rank runs the same collectives in the same order.
#include "parallel/tensor_parallel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "autograd/functions.h"
#include "parallel/fully_shard.h"
#include "tests/parallel/harness.h"
#include "tests/parallel/tp_reference.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::world;

/// max |got - want| / max |want|: one number for a whole tensor.
double max_rel_diff(const Tensor& got, const Tensor& want) {
  Tensor g = ops::to(ops::contiguous(got), DType::f64), w = ops::to(ops::contiguous(want), DType::f64);
  EXPECT_EQ(g.sizes(), w.sizes());
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    diff = std::max(diff, std::abs(g.data<double>()[i] - w.data<double>()[i]));
    scale = std::max(scale, std::abs(w.data<double>()[i]));
  }
  return diff / scale;
}

// ---------------------------------------------------------------- mappings

TEST(TensorParallelMappings, ForwardAndBackwardFollowMegatron) {
  auto tp = world();
  const int W = tp->size(), r = tp->rank();
  // reduce_from_tp: forward sums, backward passes the gradient through.
  Tensor x = ops::full({2, 3}, r + 1.0).set_requires_grad();
  Tensor y = reduce_from_tp(x, *tp);
  EXPECT_DOUBLE_EQ(y.to_vector<float>()[0], W * (W + 1) / 2.0);
  loom::sum(loom::mul(y, 2.0)).backward();
  EXPECT_EQ(x.grad().to_vector<float>(), std::vector<float>(6, 2.0f));
  // copy_to_tp: forward identity, backward sums every rank's gradient.
  Tensor a = ops::full({4}, 1.0).set_requires_grad();
  Tensor b = copy_to_tp(a, *tp);
  EXPECT_EQ(b.to_vector<float>(), std::vector<float>(4, 1.0f));
  loom::sum(loom::mul(b, r + 1.0)).backward();
  EXPECT_EQ(a.grad().to_vector<float>(), std::vector<float>(4, W * (W + 1) / 2.0f));
  // gather_from_tp: ranks' columns in rank order; backward keeps this rank's columns.
  Tensor c = ops::full({2, 2}, static_cast<double>(r)).set_requires_grad();
  Tensor d = gather_from_tp(c, *tp);
  ASSERT_EQ(d.sizes(), (Shape{2, 2 * W}));
  for (int q = 0; q < W; ++q) EXPECT_EQ(d.to_vector<float>()[2 * q + 1], static_cast<float>(q));
  Tensor weights = ops::reshape(ops::arange(0, 4 * W, 1, DType::f32), {2, 2 * W});
  loom::sum(loom::mul(d, weights)).backward();
  EXPECT_EQ(c.grad().to_vector<float>(), ops::contiguous(ops::narrow(weights, 1, 2 * r, 2)).to_vector<float>());
  // The rank-ordered sum gives the same sum (exact here: small integers).
  Tensor e = ops::full({3}, r + 1.0).set_requires_grad();
  Tensor f = reduce_from_tp(copy_to_tp(e, *tp, TpReduce::kRankOrdered), *tp, TpReduce::kRankOrdered);
  EXPECT_EQ(f.to_vector<float>(), std::vector<float>(3, W * (W + 1) / 2.0f));
  loom::sum(f).backward();
  EXPECT_EQ(e.grad().to_vector<float>(), std::vector<float>(3, static_cast<float>(W)));
}

// ---------------------------------------------------------------- layers built from scratch

TEST(TensorParallelLayers, BuiltFromScratchTheyComputeWhatTheUnsplitLayersDo) {
  auto tp = world();
  const int W = tp->size(), r = tp->rank();
  Generator data(7);
  Tensor x0 = ops::randn({3, 16}, data);
  // Column-parallel with gathered output vs nn::Linear drawn from the same generator state.
  Generator g1(5), g2(5);
  ColumnParallelOptions co;
  co.gather_output = true;
  ColumnParallelLinear col(16, 24, tp, co, g1);
  nn::Linear ref_col(16, 24, nn::LinearOptions{}, g2);
  ASSERT_EQ(col.weight.sizes(), (Shape{24 / W, 16}));
  Tensor x = ops::clone(x0).set_requires_grad(), xr = ops::clone(x0).set_requires_grad();
  Tensor y = col(x), yr = ref_col(xr);
  EXPECT_LE(max_rel_diff(y, yr), 1e-6);
  Tensor w = ops::randn({3, 24}, data);
  loom::sum(loom::mul(y, w)).backward();
  loom::sum(loom::mul(yr, w)).backward();
  EXPECT_LE(max_rel_diff(x.grad(), xr.grad()), 1e-6);
  EXPECT_LE(max_rel_diff(col.weight.grad(), ops::narrow(ref_col.weight.grad(), 0, r * 24 / W, 24 / W)), 1e-6);
  // Row-parallel taking the full input vs nn::Linear.
  RowParallelOptions ro;
  ro.input_is_parallel = false;
  RowParallelLinear row(16, 8, tp, ro, g1);
  nn::Linear ref_row(16, 8, nn::LinearOptions{}, g2);
  ASSERT_EQ(row.weight.sizes(), (Shape{8, 16 / W}));
  Tensor a = ops::clone(x0).set_requires_grad(), ar = ops::clone(x0).set_requires_grad();
  Tensor z = row(a), zr = ref_row(ar);
  EXPECT_LE(max_rel_diff(z, zr), 1e-6);
  loom::sum(loom::mul(z, z)).backward();
  loom::sum(loom::mul(zr, zr)).backward();
  EXPECT_LE(max_rel_diff(a.grad(), ar.grad()), 1e-6);
  EXPECT_LE(max_rel_diff(row.bias.grad(), ref_row.bias.grad()), 1e-6);
  // Vocabulary-parallel embedding vs nn::Embedding.
  VocabParallelEmbedding emb(64, 8, tp, 0.02, DType::f32, g1);
  nn::Embedding ref_emb(64, 8, 0.02, DType::f32, g2);
  EXPECT_EQ(emb.vocab_start(), r * 64 / W);
  Tensor ids = ops::randint(0, 64, {4, 5}, data);
  EXPECT_EQ(max_rel_diff(emb(ids), ref_emb(ids)), 0.0) << "a masked lookup summed over ranks is exact";
  // Out-of-range ids are checked on the host before the all-reduce, identically on every rank.
  Tensor bad = ops::full({2}, 64.0, DType::i64);
  EXPECT_THROW(emb(bad), InvalidArgument);
  // A gathered fused projection would come out in rank order: refused.
  ColumnParallelOptions fused;
  fused.parts = {8, 8, 8};
  fused.gather_output = true;
  EXPECT_THROW(ColumnParallelLinear(16, 24, tp, fused), InvalidArgument);
}

// ---------------------------------------------------------------- loss

TEST(TensorParallelLoss, VocabParallelCrossEntropyMatchesCrossEntropy) {
  auto tp = world();
  const int W = tp->size(), r = tp->rank();
  const int64_t N = 24, V = 64, Vl = V / W;
  for (DType dtype : {DType::f32, DType::f64}) {
    SCOPED_TRACE(dtype_name(dtype));
    const double tol = dtype == DType::f64 ? 1e-12 : 1e-6;
    Generator gen(99);
    Tensor logits = ops::to(ops::mul(ops::randn({N, V}, gen), 3.0), dtype);  // the same on every rank
    Tensor targets = ops::randint(0, V, {N}, gen);
    for (int64_t i : {3, 10, 11}) targets.data<int64_t>()[i] = -100;  // ignored rows
    Tensor full = ops::clone(logits).set_requires_grad();
    Tensor want = loom::cross_entropy(full, targets);
    want.backward();
    Tensor local = ops::contiguous(ops::narrow(logits, 1, r * Vl, Vl)).set_requires_grad();
    const uint64_t seq0 = tp->seq();
    Tensor got = vocab_parallel_cross_entropy(local, targets, *tp, r * Vl);
    got.backward();
    EXPECT_EQ(got.dtype(), dtype);
    EXPECT_NEAR(got.item<double>(), want.item<double>(), tol * std::abs(want.item<double>()));
    EXPECT_LE(max_rel_diff(local.grad(), ops::narrow(full.grad(), 1, r * Vl, Vl)), 10 * tol);
    // Ignored rows get no gradient at all.
    Tensor lg = ops::to(local.grad(), DType::f64);
    for (int64_t i = 0; i < Vl; ++i) EXPECT_EQ(lg.data<double>()[10 * Vl + i], 0.0);
    // Only row statistics cross the wire (maxima, then sums of exponentials and target logits), never the logits.
    int collectives = 0;
    for (const auto& e : tp->trace())
      if (e.seq >= seq0) {
        ++collectives;
        EXPECT_LE(e.numel, 2 * N) << e.op;
      }
    EXPECT_EQ(collectives, W == 1 ? 0 : 2);
  }
}

TEST(TensorParallelLoss, RejectsTargetsOutsideTheVocabulary) {
  auto tp = world();
  const int64_t Vl = 8;
  Tensor local = ops::zeros({2, Vl});
  Tensor targets = ops::full({2}, static_cast<double>(Vl * tp->size()), DType::i64);
  // Checked before any collective, identically on every rank.
  try {
    vocab_parallel_cross_entropy(local, targets, *tp, tp->rank() * Vl);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("out of range"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- models

void expect_logits_match_single_rank(Family f) {
  auto tp = world();
  auto ref = ptest::tiny_model(f);
  auto model = ptest::tiny_model(f);
  tensor_parallelize(*model, tp);
  ptest::Batch b = ptest::global_batch(0);
  Tensor want = (*ref)(b.idx);     // (B, T, V)
  Tensor local = (*model)(b.idx);  // (B, T, V/tp)
  ASSERT_EQ(local.size(2), ptest::kVocab / tp->size());
  EXPECT_LE(max_rel_diff(gather_from_tp(local, *tp), want), 1e-5);
  EXPECT_NEAR(model->loss(b.idx, b.targets).item<double>(), ref->loss(b.idx, b.targets).item<double>(),
              1e-5 * ref->loss(b.idx, b.targets).item<double>());
}

void expect_placements_and_gather(Family f) {
  auto tp = world();
  const int W = tp->size();
  auto ref = ptest::tiny_model(f);
  auto model = ptest::tiny_model(f);
  tensor_parallelize(*model, tp);
  int sharded = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    auto pl = tp_placement(p);
    const bool replicated = name.find("norm") != std::string::npos || name.find("ln_") != std::string::npos ||
                            name.find("wpe") != std::string::npos || (name.find("c_proj.bias") != std::string::npos);
    EXPECT_EQ(pl.has_value(), !replicated) << name;
    if (pl) {
      ++sharded;
      EXPECT_EQ(p.size(pl->dim) * W, pl->global_shape[pl->dim]) << name;
    }
  }
  EXPECT_GT(sharded, 0);
  ptest::expect_state_near(tp_gather_state_dict(*model, model->state_dict(), *tp), ref->state_dict(), 0.0);
  if (f == Family::kGPT2) {
    auto& g = dynamic_cast<nn::GPT2&>(*model);
    EXPECT_TRUE(g.lm_head->weight.is_same(g.transformer->wte->weight)) << "lm_head must stay tied to wte";
    EXPECT_EQ(g.transformer->h->children().size(), static_cast<size_t>(ptest::kLayers));
    EXPECT_EQ(g.transformer->blocks[0]->attn->c_attn->weight.size(0), 3 * 64 / W);
  }
}

/// The reduction the exact comparisons use: on two ranks the plain all-reduce already adds in a fixed order (a + b =
/// b + a), on four the rank-ordered sum makes every backend add as the one-rank replay does.
TpReduce exact_reduce(int tp_size) { return tp_size <= 2 ? TpReduce::kAllreduce : TpReduce::kRankOrdered; }

/// Three AdamW steps of the converted model on the full global batch (every tp rank sees the same rows).
ptest::Run train_tp(Family f, const std::shared_ptr<collectives::ProcessGroup>& tp,
                    const ptest::TrainConfig& cfg = {}) {
  auto model = ptest::tiny_model(f);
  tensor_parallelize(*model, tp, {exact_reduce(tp->size())});
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  ptest::Run out;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::global_batch(step);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    out.losses.push_back(loss.item<double>());
    out.grad_norms.push_back(tp_clip_grad_norm_(model->parameters(), cfg.clip_norm, *tp));
    opt.step();
  }
  out.params = tp_gather_state_dict(*model, model->state_dict(), *tp);
  return out;
}

void expect_training_matches_single_rank(Family f) {
  const int W = world()->size();
  const auto& ref = ptest::single_rank_reference(f);
  ptest::Run run = train_tp(f, world());
  ptest::expect_values_near(run.losses, ref.losses, 1e-5, "loss");
  ptest::expect_values_near(run.grad_norms, ref.grad_norms, 1e-5, "grad norm");
  // The parameters against single-rank training that adds in the order W tp ranks do (see tp_order_reference).
  {
    SCOPED_TRACE("against the tp-order replay");
    ptest::expect_state_near(run.params, ptest::tp_order_reference(f, W, 1).params, 1e-5);
  }
  // Against plain single-rank training the parameters agree only up to summation order: even on one rank the replay
  // (and TP) adds some terms in another order than the plain model (the step-0 gradients are bit-identical; later
  // steps differ in the last bits), and AdamW turns that into updates of up to lr on GPT-2's key biases, whose exact
  // gradient is 0 (measured: 1.6e-3 relative on one AVX-512 Xeon, none on another CPU). So that
  // comparison uses the reordered-sum bound (harness.h) rather than bit-for-bit agreement.
  if (W == 1) {
    SCOPED_TRACE("against plain single-rank training (reordered sums)");
    ptest::expect_state_near_reordered(run.params, ref.params);
  }
  // The replay itself is single-rank training: same losses and gradient norms as the plain reference.
  ptest::expect_values_near(ptest::tp_order_reference(f, W, 1).losses, ref.losses, 1e-5, "replay loss");
  ptest::expect_values_near(ptest::tp_order_reference(f, W, 1).grad_norms, ref.grad_norms, 1e-5, "replay grad norm");
}

void expect_replicated_grads_equal(Family f) {
  auto tp = world();
  auto model = ptest::tiny_model(f);
  tensor_parallelize(*model, tp);
  ptest::Batch b = ptest::global_batch(1);
  model->loss(b.idx, b.targets).backward();
  int replicated = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    if (tp_placement(p)) continue;
    ++replicated;
    ASSERT_TRUE(p.grad().defined()) << name;
    Tensor g = ops::contiguous(p.grad());
    Tensor first = ops::clone(g);
    tp->broadcast(first, {0})->wait();  // rank 0's gradient
    EXPECT_EQ(ops::max(ops::abs(ops::sub(g, first))).item(), 0.0)
        << name << " differs from rank 0's on rank " << tp->rank();
  }
  EXPECT_GT(replicated, 0);
}

// One suite per family (no parameterised instantiation prefix: the CTest entries filter on TensorParallel*).
TEST(TensorParallelGPT2, LogitsMatchSingleRank) { expect_logits_match_single_rank(Family::kGPT2); }
TEST(TensorParallelGPT2, ShardsCarryPlacementsAndGatherToTheOriginalWeights) {
  expect_placements_and_gather(Family::kGPT2);
}
TEST(TensorParallelGPT2, ThreeAdamWStepsMatchSingleRank) { expect_training_matches_single_rank(Family::kGPT2); }
TEST(TensorParallelGPT2, ReplicatedGradientsAreEqualOnEveryRank) { expect_replicated_grads_equal(Family::kGPT2); }
TEST(TensorParallelLlama, LogitsMatchSingleRank) { expect_logits_match_single_rank(Family::kLlama); }
TEST(TensorParallelLlama, ShardsCarryPlacementsAndGatherToTheOriginalWeights) {
  expect_placements_and_gather(Family::kLlama);
}
TEST(TensorParallelLlama, ThreeAdamWStepsMatchSingleRank) { expect_training_matches_single_rank(Family::kLlama); }
TEST(TensorParallelLlama, ReplicatedGradientsAreEqualOnEveryRank) { expect_replicated_grads_equal(Family::kLlama); }

// ---------------------------------------------------------------- errors

/// The message of the InvalidArgument f throws, or "" when it throws nothing.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(TensorParallelErrors, SizesTheGroupDoesNotDivideAreRejected) {
  auto tp = world();
  const int W = tp->size();
  const std::string w = std::to_string(W);
  auto gpt2 = [&](auto edit) {
    nn::GPT2Config c = ptest::tiny_gpt2_config();
    edit(c);
    auto m = std::make_shared<nn::GPT2>(c);
    return error_of([&] { tensor_parallelize(*m, tp); });
  };
  auto llama = [&](auto edit) {
    nn::LlamaConfig c = ptest::tiny_llama_config();
    edit(c);
    auto m = std::make_shared<nn::Llama>(c);
    return error_of([&] { tensor_parallelize(*m, tp); });
  };
  // Sizes odd enough that no tp size above 1 divides them (every rank gets the same config, so no rank diverges).
  std::vector<std::pair<std::string, std::string>> cases = {
      {gpt2([](nn::GPT2Config& c) { c.n_embd = 48, c.n_head = 3; }), "GPT2Config.n_head = 3"},
      {gpt2([](nn::GPT2Config& c) { c.vocab_size = 63; }), "GPT2Config.vocab_size = 63"},
      {llama([](nn::LlamaConfig& c) { c.n_kv_head = 1; }), "LlamaConfig.n_kv_head = 1"},
      {llama([](nn::LlamaConfig& c) { c.n_head = 1, c.n_kv_head = 1, c.n_embd = 16; }), "LlamaConfig.n_head = 1"},
      {llama([](nn::LlamaConfig& c) { c.intermediate_size = 129; }), "LlamaConfig.intermediate_size = 129"},
      {llama([](nn::LlamaConfig& c) { c.vocab_size = 63; }), "LlamaConfig.vocab_size = 63"},
  };
  for (const auto& [msg, field] : cases) {
    if (W == 1) {
      EXPECT_EQ(msg, "") << "a one-rank tp group divides everything";
    } else {
      EXPECT_NE(msg.find(field), std::string::npos) << "message '" << msg << "' should name " << field;
      EXPECT_NE(msg.find("tp group size " + w), std::string::npos) << msg;
    }
  }
  // A failed conversion leaves the model as it was.
  nn::GPT2Config c = ptest::tiny_gpt2_config();
  c.vocab_size = 63;
  auto m = std::make_shared<nn::GPT2>(c);
  if (W > 1) {
    EXPECT_THROW(tensor_parallelize(*m, tp), InvalidArgument);
    EXPECT_EQ(m->transformer->wte->weight.size(0), 63);
    EXPECT_FALSE(tp_placement(m->transformer->blocks[0]->attn->c_attn->weight).has_value());
  }
  // Converting twice is refused.
  auto twice = ptest::tiny_model(Family::kLlama);
  tensor_parallelize(*twice, tp);
  EXPECT_NE(error_of([&] { tensor_parallelize(*twice, tp); }).find("already tensor-parallel"), std::string::npos);
  // A wrapped model is not converted under its wrapper's feet.
  {
    auto wrapped = ptest::tiny_model(Family::kGPT2);
    FullyShard fsdp(wrapped, tp);
    const std::string msg = error_of([&] { tensor_parallelize(*wrapped, tp); });
    EXPECT_NE(msg.find("FullyShard"), std::string::npos) << msg;
  }
  // Gathering dicts of different lengths (rank 0's full dict, empty elsewhere) is an error on every rank, not a hang.
  if (W > 1) {
    nn::StateDict some = tp->rank() == 0 ? twice->state_dict() : nn::StateDict();
    EXPECT_NE(error_of([&] { tp_gather_state_dict(*twice, some, *tp); }).find("same names"), std::string::npos);
  }
  // A fused projection whose parts do not add up.
  ColumnParallelOptions o;
  o.parts = {8 * W, 8 * W};
  EXPECT_NE(error_of([&] { ColumnParallelLinear(4, 24 * W, tp, o); }).find("parts sum to"), std::string::npos);
}

}  // namespace
}  // namespace loom::parallel
