// DistributedDataParallel: three AdamW steps on every rank's slice of the global batch end where single-rank training
// ends (GPT-2 and Llama, with and without overlap, with gradient accumulation under no_sync), parameters are broadcast
// from rank 0 at wrap time, buckets follow reverse registration order, all-reduces start before backward ends, and
// misuse (unused parameters, wrapping twice) is a clear error. Every rank runs the same collectives in the same order.
#include "parallel/ddp.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "nn/linear.h"
#include "tensor/random.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::Run;
using ptest::world;

/// Three AdamW steps with DDP over the world, each rank on rows(rank, W) of the global batch, split into `micro`
/// micro-batches (loss / micro each) of which all but the last run under no_sync().
Run train_ddp(Family f, const DDPOptions& opts, int micro = 1, const ptest::TrainConfig& cfg = {}) {
  auto g = world();
  auto model = ptest::tiny_model(f);
  DistributedDataParallel ddp(model, g, opts);
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  Run out;
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), g->rank(), g->size());
    opt.zero_grad();
    double loss_sum = 0;
    for (int m = 0; m < micro; ++m) {
      ptest::Batch part = ptest::rows(b, m, micro);
      Tensor loss = model->loss(part.idx, part.targets);
      loss_sum += loss.item<double>();
      Tensor scaled = micro == 1 ? loss : loom::mul(loss, 1.0 / micro);
      if (m + 1 < micro) {
        auto guard = ddp.no_sync();
        scaled.backward();
      } else {
        scaled.backward();
      }
    }
    out.losses.push_back(ptest::group_mean(*g, loss_sum / micro));
    // .grad is replicated after DDP: local clipping is global clipping.
    out.grad_norms.push_back(nn::clip_grad_norm_(model->parameters(), cfg.clip_norm));
    opt.step();
  }
  out.params = model->state_dict();
  return out;
}

/// Single-rank training that reproduces data-parallel arithmetic exactly: per step, each of the W replicas' gradient is
/// accumulated over its `micro` micro-batches (loss / micro each), then the W replica gradients are added in rank order
/// and scaled by 1/W — what DDP computes with rank_ordered_reduce (and, on two ranks, with any allreduce: two terms
/// commute). Mathematically the same as ptest::single_rank_reference; in f32 it matters for the parameters, because
/// AdamW divides each element's gradient by its own magnitude, so elements whose gradient is ~0 (GPT-2's key biases,
/// which softmax ignores) turn summation-order noise into updates of up to lr.
const ptest::Reference& replica_reference(Family f, int W, int micro, const ptest::TrainConfig& cfg = {}) {
  static std::map<std::tuple<int, int, int>, ptest::Reference> cache;
  auto key = std::make_tuple(static_cast<int>(f), W, micro);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  ptest::Reference ref;
  auto model = ptest::tiny_model(f);
  auto params = model->parameters();
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  for (int step = 0; step < cfg.steps; ++step) {
    ptest::Batch b = ptest::global_batch(step);
    std::vector<Tensor> total(params.size());
    double loss_sum = 0;
    for (int r = 0; r < W; ++r) {
      opt.zero_grad();
      ptest::Batch mine = ptest::rows(b, r, W);
      double rank_loss = 0;
      for (int m = 0; m < micro; ++m) {
        ptest::Batch part = ptest::rows(mine, m, micro);
        Tensor loss = model->loss(part.idx, part.targets);
        rank_loss += loss.item<double>();
        (micro == 1 ? loss : loom::mul(loss, 1.0 / micro)).backward();
      }
      loss_sum += rank_loss / micro;
      for (size_t i = 0; i < params.size(); ++i) {
        if (r == 0) {
          total[i] = ops::clone(params[i].grad());
        } else {
          ops::add_(total[i], params[i].grad());
        }
      }
    }
    for (size_t i = 0; i < params.size(); ++i) {
      if (W > 1) ops::mul_(total[i], 1.0 / W);
      params[i].set_grad(total[i]);
    }
    ref.losses.push_back(loss_sum / W);
    ref.grad_norms.push_back(nn::clip_grad_norm_(params, cfg.clip_norm));
    opt.step();
  }
  for (const auto& [name, t] : model->state_dict()) ref.params.insert(name, ops::clone(t));
  return cache.emplace(key, std::move(ref)).first->second;
}

/// Losses and gradient norms agree with whole-batch single-rank training, and the parameters with replica_reference,
/// all within 1e-5 (ptest::expect_matches_single_rank; on more than two ranks again with rank_ordered_reduce).
void expect_matches_single_rank(Family f, const DDPOptions& opts, int micro = 1) {
  SCOPED_TRACE(std::string(ptest::family_name(f)) + (opts.overlap ? "" : ", no overlap") +
               (micro > 1 ? ", " + std::to_string(micro) + " micro-batches" : ""));
  auto train = [&](bool rank_ordered) {
    DDPOptions o = opts;
    o.rank_ordered_reduce = rank_ordered;
    return train_ddp(f, o, micro);
  };
  ptest::expect_matches_single_rank(train, opts.rank_ordered_reduce, ptest::single_rank_reference(f),
                                    replica_reference(f, world()->size(), micro));
}

TEST(DDP, GPT2MatchesSingleRankAfterThreeSteps) { expect_matches_single_rank(Family::kGPT2, {}); }

TEST(DDP, LlamaMatchesSingleRankAfterThreeSteps) { expect_matches_single_rank(Family::kLlama, {}); }

TEST(DDPVariants, WithoutOverlapMatchesSingleRank) {
  DDPOptions o;
  o.overlap = false;
  for (Family f : ptest::families()) expect_matches_single_rank(f, o);
}

TEST(DDPVariants, SmallBucketsMatchSingleRank) {
  DDPOptions o;
  o.first_bucket_cap_bytes = 4 << 10;
  o.bucket_cap_bytes = 16 << 10;
  for (Family f : ptest::families()) expect_matches_single_rank(f, o);
}

TEST(DDPVariants, GradientAsBucketViewMatchesSingleRank) {
  DDPOptions o;
  o.gradient_as_bucket_view = true;
  o.first_bucket_cap_bytes = 16 << 10;
  o.bucket_cap_bytes = 64 << 10;
  for (Family f : ptest::families()) {
    expect_matches_single_rank(f, o);
    expect_matches_single_rank(f, o, /*micro=*/2);
  }
  // The gradients are the buckets: one storage per bucket, shared by its parameters' .grad.
  auto g = world();
  auto model = ptest::tiny_model(Family::kLlama);
  DistributedDataParallel ddp(model, g, o);
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  model->loss(b.idx, b.targets).backward();
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, p] : model->named_parameters()) by_name[name] = p.grad();
  for (const auto& bucket : ddp.buckets())
    for (const auto& name : bucket.names) {
      ASSERT_TRUE(by_name[name].defined()) << name;
      EXPECT_EQ(by_name[name].storage(), by_name[bucket.names.front()].storage()) << name;
      EXPECT_EQ(by_name[name].storage()->nbytes(), static_cast<size_t>(bucket.bytes)) << name;
    }
  // Zeroed in place, the views stay: the next pass accumulates into the buckets and averages there, no copies.
  nn::StateDict first;
  for (const auto& [name, t] : by_name) first.insert(name, ops::clone(t));
  model->zero_grad(/*set_to_none=*/false);
  model->loss(b.idx, b.targets).backward();
  nn::StateDict second;
  for (const auto& [name, p] : model->named_parameters()) {
    EXPECT_EQ(p.grad().storage(), by_name[name].storage()) << name;
    second.insert(name, p.grad());
  }
  ptest::expect_state_near(second, first, 0.0);
}

TEST(DDPNoSync, GradientAccumulationEqualsOneLargeBatch) {
  for (Family f : ptest::families()) expect_matches_single_rank(f, {}, /*micro=*/2);
}

TEST(DDPNoSync, NoCollectivesInsideNoSyncAndSyncRestoredAfter) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kGPT2);
  DistributedDataParallel ddp(model, g);
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  const uint64_t before = g->seq();
  {
    auto guard = ddp.no_sync();
    model->loss(b.idx, b.targets).backward();
  }
  EXPECT_EQ(g->seq(), before) << "no collective under no_sync";
  model->loss(b.idx, b.targets).backward();
  EXPECT_EQ(g->seq(), before + ddp.buckets().size()) << "one all-reduce per bucket once sync is back";
}

TEST(DDPBroadcast, ParametersEqualRankZerosAfterWrap) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kLlama);
  if (g->rank() != 0) {
    Generator gen(99 + g->rank());
    autograd::NoGradGuard no_grad;
    for (auto& p : model->parameters()) ops::copy_(p, ops::randn(p.sizes(), gen, p.dtype()));
  }
  DistributedDataParallel ddp(model, g);
  auto named = model->named_parameters();
  Tensor worst = ops::zeros({static_cast<int64_t>(named.size())}, DType::f32);
  for (size_t i = 0; i < named.size(); ++i) {
    Tensor mine = ops::clone(named[i].second);
    Tensor root = ops::clone(mine);
    g->broadcast(root, {0})->wait();
    worst.data<float>()[i] = ops::max(ops::abs(ops::sub(mine, root))).item<float>();
  }
  g->allreduce(worst, {collectives::ReduceOp::kMax})->wait();
  for (size_t i = 0; i < named.size(); ++i) EXPECT_EQ(worst.data<float>()[i], 0.0f) << named[i].first;
  // And they are rank 0's own initial weights.
  ptest::expect_state_near(model->state_dict(), ptest::tiny_model(Family::kLlama)->state_dict(), 0.0);
}

TEST(DDPMisuse, WrappingTwiceThrowsNamingTheWrapper) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kGPT2);
  {
    DistributedDataParallel ddp(model, g);
    try {
      DistributedDataParallel again(model, g);  // fails on every rank before any collective
      ADD_FAILURE() << "wrapping twice did not throw";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("already wrapped by DistributedDataParallel"), std::string::npos)
          << e.what();
    }
  }
  DistributedDataParallel rewrap(model,
                                 g);  // the first wrapper released its claim
  EXPECT_FALSE(rewrap.buckets().empty());
}

TEST(DDPMisuse, ABackwardThatThrowsLeavesNoHalfDonePass) {
  auto g = world();
  DDPOptions o;
  o.first_bucket_cap_bytes = 16 << 10;
  o.bucket_cap_bytes = 32 << 10;
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  // What a clean pass gives.
  nn::StateDict want;
  {
    auto model = ptest::tiny_model(Family::kGPT2);
    DistributedDataParallel ddp(model, g, o);
    model->loss(b.idx, b.targets).backward();
    for (const auto& [name, p] : model->named_parameters()) want.insert(name, ops::clone(p.grad()));
  }
  auto model = ptest::tiny_model(Family::kGPT2);
  DistributedDataParallel ddp(model, g, o);
  // The embedding's gradient is final last: by then the other buckets were launched (the same ones on every rank).
  bool fail = true;
  autograd::register_hook(model->named_parameters().front().second, [&fail](const Tensor&) -> Tensor {
    if (fail) {
      fail = false;
      LOOM_THROW(InvalidArgument, "injected failure");
    }
    return Tensor();
  });
  EXPECT_THROW(model->loss(b.idx, b.targets).backward(), InvalidArgument);
  model->zero_grad();
  model->loss(b.idx, b.targets).backward();  // its forward starts from a clean pass
  nn::StateDict got;
  for (const auto& [name, p] : model->named_parameters()) got.insert(name, p.grad());
  ptest::expect_state_near(got, want, 0.0);
}

TEST(DDPMisuse, DestroyedWrapperLeavesItsHooksInert) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kGPT2);
  { DistributedDataParallel ddp(model, g); }
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  const uint64_t before = g->seq();
  model->loss(b.idx, b.targets).backward();
  EXPECT_EQ(g->seq(), before) << "the hooks of a destroyed wrapper issued collectives";
  for (const auto& p : model->parameters()) EXPECT_TRUE(p.grad().defined());
}

/// Two Linear children; forward uses `a`, and `b` only when use_b.
class TwoHeads : public nn::Module {
 public:
  explicit TwoHeads(Generator& gen) : Module("TwoHeads") {
    a = register_module("a", std::make_shared<nn::Linear>(8, 4, nn::LinearOptions{}, gen));
    b = register_module("b", std::make_shared<nn::Linear>(8, 4, nn::LinearOptions{}, gen));
  }
  Tensor operator()(const Tensor& x, bool use_b) {
    return call([&] {
      Tensor y = (*a)(x);
      return use_b ? loom::add(y, (*b)(x)) : y;
    });
  }
  std::shared_ptr<nn::Linear> a, b;
};

Tensor two_heads_loss(TwoHeads& m, int rank, bool use_b) {
  Generator gen(55 + rank);
  Tensor x = ops::randn({3, 8}, gen);
  Tensor y = m(x, use_b);
  return loom::sum(loom::mul(y, y));
}

TEST(DDPMisuse, UnusedParameterIsAnErrorNamingIt) {
  auto g = world();
  Generator gen(7);
  auto m = std::make_shared<TwoHeads>(gen);
  DistributedDataParallel ddp(m, g);
  try {
    two_heads_loss(*m, g->rank(), /*use_b=*/false).backward();
    ADD_FAILURE() << "an unused parameter did not raise";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'b.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'b.bias'"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("'a.weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("find_unused_parameters"), std::string::npos) << msg;
  }
  // The failed pass left nothing behind: a pass that uses everything synchronises.
  m->zero_grad();
  two_heads_loss(*m, g->rank(), /*use_b=*/true).backward();
  Tensor w = ops::clone(m->b->weight.grad());
  Tensor root = ops::clone(w);
  g->broadcast(root, {0})->wait();
  EXPECT_EQ(ops::max(ops::abs(ops::sub(w, root))).item<float>(), 0.0f) << "gradients replicated";
}

TEST(DDPMisuse, FindUnusedParametersAveragesWhatWasUsed) {
  auto g = world();
  Generator gen(7);
  auto m = std::make_shared<TwoHeads>(gen);
  DDPOptions o;
  o.find_unused_parameters = true;
  DistributedDataParallel ddp(m, g, o);
  // Unused on every rank: .grad stays undefined (the optimizer skips it).
  two_heads_loss(*m, g->rank(), false).backward();
  EXPECT_TRUE(m->a->weight.grad().defined());
  EXPECT_FALSE(m->b->weight.grad().defined());
  EXPECT_FALSE(m->b->bias.grad().defined());

  // Used on rank 0 only: every rank gets rank 0's gradient / W.
  m->zero_grad();
  Tensor local_b;
  {
    // Rank 0's local gradient of b, computed on an unwrapped copy with the same weights.
    Generator gen2(7);
    TwoHeads plain(gen2);
    two_heads_loss(plain, 0, true).backward();
    local_b = ops::clone(plain.b->weight.grad());
  }
  two_heads_loss(*m, g->rank(), g->rank() == 0).backward();
  ASSERT_TRUE(m->b->weight.grad().defined()) << "rank " << g->rank();
  Tensor want = ops::clone(local_b);
  ops::mul_(want, 1.0 / g->size());
  nn::StateDict got_d, want_d;
  got_d.insert("b.weight.grad", m->b->weight.grad());
  want_d.insert("b.weight.grad", want);
  ptest::expect_state_near(got_d, want_d, 1e-6);
}

TEST(DDPBuckets, ReverseRegistrationOrderWithASmallFirstBucket) {
  auto model = ptest::tiny_model(Family::kGPT2);
  DDPOptions o;
  o.first_bucket_cap_bytes = 16 << 10;
  o.bucket_cap_bytes = 32 << 10;
  DistributedDataParallel ddp(model, world(), o);
  auto buckets = ddp.buckets();
  ASSERT_GT(buckets.size(), 3u);
  std::vector<std::string> order;
  std::map<std::string, int64_t> bytes_of;
  for (const auto& [name, p] : model->named_parameters()) {
    order.push_back(name);
    bytes_of[name] = p.numel() * 4;
  }
  std::reverse(order.begin(), order.end());
  std::vector<std::string> flat;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const auto& b = buckets[i];
    const int64_t cap = i == 0 ? o.first_bucket_cap_bytes : o.bucket_cap_bytes;
    int64_t sum = 0;
    for (const auto& n : b.names) sum += bytes_of.at(n);
    EXPECT_EQ(sum, b.bytes) << "bucket " << i;
    EXPECT_EQ(b.dtype, DType::f32);
    EXPECT_TRUE(b.bytes <= cap || b.names.size() == 1) << "bucket " << i << " holds " << b.bytes << " bytes";
    if (i + 1 < buckets.size()) {  // greedy: the next parameter did not fit
      EXPECT_GT(b.bytes + bytes_of.at(buckets[i + 1].names.front()), cap) << "bucket " << i;
    }
    flat.insert(flat.end(), b.names.begin(), b.names.end());
  }
  EXPECT_EQ(flat, order) << "every parameter once, in reverse registration order";
  EXPECT_LT(buckets[0].bytes, buckets[1].bytes) << "the first bucket is the small one";
}

TEST(DDPBuckets, SplitByDtype) {
  // A float32 and a float64 Linear: no bucket mixes dtypes, and each dtype's parameters keep reverse order.
  auto m = std::make_shared<nn::Module>("Mixed");
  Generator gen(3);
  auto a = m->register_module("a", std::make_shared<nn::Linear>(8, 4, nn::LinearOptions{}, gen));
  nn::LinearOptions o64;
  o64.dtype = DType::f64;
  auto b = m->register_module("b", std::make_shared<nn::Linear>(8, 4, o64, gen));
  DistributedDataParallel ddp(m, world());
  auto buckets = ddp.buckets();
  ASSERT_EQ(buckets.size(), 2u);
  std::map<DType, std::vector<std::string>> names;
  for (const auto& bk : buckets) names[bk.dtype] = bk.names;
  EXPECT_EQ(names[DType::f64], (std::vector<std::string>{"b.bias", "b.weight"}));
  EXPECT_EQ(names[DType::f32], (std::vector<std::string>{"a.bias", "a.weight"}));
  EXPECT_EQ(buckets[0].dtype, DType::f64) << "launch order follows reverse registration";

  Generator xg(4);
  Tensor x = ops::randn({3, 8}, xg);
  Tensor loss = loom::add(loom::sum((*a)(x)), loom::to(loom::sum((*b)(ops::to(x, DType::f64))), DType::f32));
  loss.backward();
  EXPECT_EQ(b->weight.grad().dtype(), DType::f64);
  EXPECT_TRUE(a->weight.grad().defined());
}

/// Three AdamW steps (no clipping: it needs every gradient before any step) with DDP over small buckets, stepping with
/// ddp.step(opt); returns the parameters.
nn::StateDict train_ddp_stepping(Family f, bool wait_in_backward) {
  auto g = world();
  auto model = ptest::tiny_model(f);
  DDPOptions o;
  o.first_bucket_cap_bytes = 4 << 10;  // several buckets, so step() steps the model in several parts
  o.bucket_cap_bytes = 16 << 10;
  o.wait_in_backward = wait_in_backward;
  DistributedDataParallel ddp(model, g, o);
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), 1e-3, 0.1), nn::AdamWOptions{});
  for (int step = 0; step < 3; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), g->rank(), g->size());
    opt.zero_grad();
    model->loss(b.idx, b.targets).backward();
    ddp.step(opt);
  }
  return model->state_dict();
}

TEST(DDPOptimizerOverlap, SteppingEachBucketAsItsAllReduceEndsEqualsWaitingThenStepping) {
  for (Family f : ptest::families()) {
    SCOPED_TRACE(ptest::family_name(f));
    const nn::StateDict want = train_ddp_stepping(f, /*wait_in_backward=*/true);
    const nn::StateDict got = train_ddp_stepping(f, /*wait_in_backward=*/false);
    ptest::expect_state_bit_equal(got, want);  // against waiting in backward
  }
}

TEST(DDPOptimizerOverlap, ForwardOrBackwardWithGradientsPendingIsAnErrorAndWaitGradientsFinishes) {
  auto g = world();
  auto model = ptest::tiny_model(Family::kGPT2);
  DDPOptions o;
  o.wait_in_backward = false;
  DistributedDataParallel ddp(model, g, o);
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  model->loss(b.idx, b.targets).backward();
  try {
    model->loss(b.idx, b.targets);
    FAIL() << "a forward with all-reduces pending must throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("wait_gradients()"), std::string::npos) << e.what();
  }
  // The pass was dropped: a new one works, and wait_gradients() leaves the group average in .grad.
  model->zero_grad();
  model->loss(b.idx, b.targets).backward();
  ddp.wait_gradients();
  ddp.wait_gradients();  // nothing pending: no-op
  const Tensor grad = model->parameters().front().grad();
  ASSERT_TRUE(grad.defined());
  Tensor mine = ops::clone(grad), avg = ops::clone(grad);
  g->allreduce(avg, {collectives::ReduceOp::kAvg})->wait();
  const float* x = mine.data<float>();
  const float* y = avg.data<float>();
  for (int64_t i = 0; i < mine.numel(); ++i) ASSERT_EQ(x[i], y[i]) << "element " << i << " is not replicated";
}

TEST(DDPOverlap, AllReduceStartsBeforeBackwardEnds) {
  auto g = world();
  // A batch large enough that backward takes milliseconds: on a loaded machine the worker thread may wait that long for
  // a core.
  ptest::Batch b = ptest::rows(ptest::global_batch(0, 256), g->rank(), g->size());
  auto model = ptest::tiny_model(Family::kGPT2);
  DDPOptions o;
  o.first_bucket_cap_bytes = 16 << 10;
  o.bucket_cap_bytes = 32 << 10;
  DistributedDataParallel ddp(model, g, o);
  const size_t nb = ddp.buckets().size();
  int overlapped = 0;
  for (int iter = 0; iter < 3; ++iter) {  // the same collectives on every rank: no early exit
    const uint64_t first = g->seq();
    model->zero_grad();
    model->loss(b.idx, b.targets).backward();
    ASSERT_EQ(g->seq(), first + nb);
    const int64_t end = ddp.last_backward_end_ns();
    int seen = 0;
    for (const auto& e : g->trace()) {
      if (e.seq < first || e.seq >= first + nb) continue;
      EXPECT_EQ(e.op, "allreduce");
      EXPECT_GT(e.end_ns, 0) << "waited for before backward() returned";
      ++seen;
      if (e.start_ns < end) ++overlapped;
    }
    EXPECT_EQ(seen, static_cast<int>(nb));
  }
  EXPECT_GT(overlapped, 0) << "no bucket's all-reduce started before the last gradient was final";
}

TEST(DDPOverlap, WithoutOverlapEachAllReduceEndsBeforeTheNextIsIssued) {
  auto g = world();
  ptest::Batch b = ptest::rows(ptest::global_batch(0), g->rank(), g->size());
  auto model = ptest::tiny_model(Family::kGPT2);
  DDPOptions o;
  o.first_bucket_cap_bytes = 16 << 10;
  o.bucket_cap_bytes = 32 << 10;
  o.overlap = false;
  DistributedDataParallel ddp(model, g, o);
  const size_t nb = ddp.buckets().size();
  const uint64_t first = g->seq();
  model->loss(b.idx, b.targets).backward();
  std::vector<collectives::TraceEntry> pass;
  for (const auto& e : g->trace())
    if (e.seq >= first && e.seq < first + nb) pass.push_back(e);
  ASSERT_EQ(pass.size(), nb);
  for (size_t i = 0; i + 1 < pass.size(); ++i)
    EXPECT_LE(pass[i].end_ns, pass[i + 1].enqueue_ns) << "all-reduce #" << pass[i].seq << " was still running";
  EXPECT_GT(ddp.last_comm_wait_ns(), 0);
  EXPECT_GT(ddp.last_backward_end_ns(), pass.front().end_ns);
}

}  // namespace
}  // namespace loom::parallel
