// Activation checkpointing (autograd::checkpoint, Module::set_activation_checkpointing, nn::checkpoint_module,
// nn::apply_activation_checkpointing): with none / full / selective / selective:2, GPT-2 and Llama with dropout in
// training mode give the same loss and the same gradients bit for bit over two steps (the RNG is replayed for the
// recompute and put back after it), also under bf16 autocast; full keeps less memory; misuse is a clear error.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "autograd/autocast.h"
#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "nn/activation_checkpointing.h"
#include "nn/dropout.h"
#include "nn/gpt2.h"
#include "nn/linear.h"
#include "nn/llama.h"
#include "tensor/storage.h"

namespace loom {
namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  if (a.dtype() != b.dtype() || a.sizes() != b.sizes()) return false;
  Tensor ac = ops::contiguous(a), bc = ops::contiguous(b);
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

struct Result {
  std::vector<double> losses;
  nn::NamedTensors grads;
  uint64_t rng_offset_after = 0;
};

std::shared_ptr<nn::CausalLM> make_model(bool llama, Generator& gen, int64_t layers = 3) {
  if (llama) {
    nn::LlamaConfig c;
    c.vocab_size = 32;
    c.max_seq_len = 16;
    c.n_embd = 32;
    c.n_layer = layers;
    c.n_head = 4;
    c.n_kv_head = 2;
    c.intermediate_size = 48;
    c.dropout = 0.2;
    return std::make_shared<nn::Llama>(c, gen);
  }
  nn::GPT2Config c;
  c.vocab_size = 32;
  c.n_positions = 16;
  c.n_embd = 32;
  c.n_layer = layers;
  c.n_head = 4;
  c.dropout = 0.2;
  return std::make_shared<nn::GPT2>(c, gen);
}

/// Two forward/backward passes (gradients accumulate) of a fresh model built from seed 3, dropout on, with `spec`.
Result run(bool llama, const std::string& spec, bool autocast = false) {
  Generator gen(3);
  auto model = make_model(llama, gen);
  model->train();
  nn::apply_activation_checkpointing(*model, nn::ActivationCheckpointing::parse(spec));
  Generator data(11);
  gen.manual_seed(99);  // the dropout streams: the model's generator (embedding, residual and MLP dropout) and the
  manual_seed(98);      // default one (attention dropout)
  Result r;
  for (int step = 0; step < 2; ++step) {
    Tensor idx = ops::randint(0, 32, {2, 12}, data);
    Tensor tgt = ops::randint(0, 32, {2, 12}, data);
    Tensor loss;
    {
      AutocastGuard ag(DType::bf16, autocast);
      loss = model->loss(idx, tgt);
    }
    loss.backward();
    r.losses.push_back(loss.item());
  }
  for (const auto& [name, p] : model->named_parameters()) r.grads.emplace_back(name, p.grad());
  r.rng_offset_after = gen.offset() + 1000000 * default_generator().offset();
  return r;
}

void expect_same(const Result& ref, const Result& got, const std::string& what) {
  ASSERT_EQ(ref.losses.size(), got.losses.size());
  for (size_t i = 0; i < ref.losses.size(); ++i) EXPECT_EQ(ref.losses[i], got.losses[i]) << what << " loss " << i;
  ASSERT_EQ(ref.grads.size(), got.grads.size());
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    ASSERT_TRUE(got.grads[i].second.defined()) << what << ": no gradient for " << got.grads[i].first;
    EXPECT_TRUE(same_bits(ref.grads[i].second, got.grads[i].second)) << what << ": gradient of " << ref.grads[i].first;
  }
  EXPECT_EQ(ref.rng_offset_after, got.rng_offset_after) << what << ": the generator's state after backward";
}

TEST(ActivationCheckpointing, Gpt2GradientsBitIdenticalWithDropout) {
  const Result none = run(false, "none");
  for (const char* spec : {"full", "selective", "selective:2"}) expect_same(none, run(false, spec), spec);
}

TEST(ActivationCheckpointing, LlamaGradientsBitIdenticalWithDropout) {
  const Result none = run(true, "none");
  for (const char* spec : {"full", "selective", "selective:2"}) expect_same(none, run(true, spec), spec);
}

TEST(ActivationCheckpointing, BitIdenticalUnderAutocast) {
  for (bool llama : {false, true}) {
    const Result none = run(llama, "none", true);
    for (const char* spec : {"full", "selective"})
      expect_same(none, run(llama, spec, true), std::string(llama ? "llama " : "gpt2 ") + spec + " bf16");
  }
}

/// Peak bytes above the parameters of one forward + backward of an 8-layer GPT-2.
int64_t activation_peak(const std::string& spec) {
  Generator gen(3);
  nn::GPT2Config c;
  c.vocab_size = 64;
  c.n_positions = 64;
  c.n_embd = 64;
  c.n_layer = 8;
  c.n_head = 4;
  nn::GPT2 model(c, gen);
  nn::apply_activation_checkpointing(model, nn::ActivationCheckpointing::parse(spec));
  Generator data(11);
  Tensor idx = ops::randint(0, 64, {4, 64}, data), tgt = ops::randint(0, 64, {4, 64}, data);
  const int64_t base = memory_stats().allocated_bytes;
  reset_peak_memory_stats();
  model.loss(idx, tgt).backward();
  return memory_stats().peak_bytes - base;
}

TEST(ActivationCheckpointing, FullAndSelectiveKeepLessThanNone) {
  const int64_t none = activation_peak("none"), full = activation_peak("full"),
                selective = activation_peak("selective"), every2 = activation_peak("selective:2");
  EXPECT_LT(full, none / 2) << "none " << none << " full " << full;
  EXPECT_LT(selective, none) << "none " << none << " selective " << selective;
  EXPECT_LT(full, selective);
  EXPECT_LT(every2, none);
  EXPECT_GT(every2, full);
}

TEST(ActivationCheckpointing, CheckpointFunctionReplaysDropoutAndRestoresTheStream) {
  Generator gen(1);
  nn::Linear lin(8, 8, {}, gen);
  nn::Dropout drop(0.5, gen);
  auto f = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{drop(lin(in[0]))}; };
  Generator data(2);
  Tensor x0 = ops::rand({4, 8}, data);
  auto grads = [&](bool ckpt, bool replay) {
    lin.zero_grad();
    gen.manual_seed(5);
    Tensor x = ops::clone(x0).set_requires_grad(true);
    autograd::CheckpointOptions o;
    o.preserve_rng_state = replay;
    Tensor y = ckpt ? autograd::checkpoint(f, {x}, o)[0] : f({x})[0];
    Tensor after_forward = ops::rand({4}, gen);  // a later draw: must not depend on the recompute
    sum(mul(y, y)).backward();
    return std::vector<Tensor>{x.grad(), lin.weight.grad(), lin.bias.grad(), after_forward, ops::rand({4}, gen)};
  };
  auto ref = grads(false, true), ck = grads(true, true);
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(same_bits(ref[i], ck[i])) << "tensor " << i;
  // Without the replay the recompute draws another mask: the gradients differ (what the replay is for).
  auto no_replay = grads(true, false);
  EXPECT_FALSE(same_bits(ref[1], no_replay[1]));
}

TEST(ActivationCheckpointing, WeightUsedInsideAndOutsideARegionUnderAutocastGetsBothGradients) {
  // Autocast caches a parameter's bf16 cast for the rest of the forward; a cast made inside a checkpointed region has
  // no history (no grad mode there) and must not be reused by a later use with grad mode on.
  Generator gen(1);
  nn::Linear lin(8, 8, {}, gen);
  Generator data(2);
  Tensor x0 = ops::rand({4, 8}, data);
  auto weight_grad = [&](bool ckpt) {
    lin.zero_grad();
    Tensor x = ops::clone(x0).set_requires_grad(true);
    auto f = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{lin(in[0])}; };
    Tensor z;
    {
      AutocastGuard ag(DType::bf16);
      Tensor y = ckpt ? autograd::checkpoint(f, {x})[0] : f({x})[0];
      z = lin(y);  // the same weight again, outside the region
    }
    sum(z).backward();
    return ops::clone(lin.weight.grad());
  };
  // Not bit for bit: without checkpointing both uses share one cast, whose bf16 gradients add before the cast back to
  // f32; with it each use has its own cast. A lost use would be off by its whole share.
  Tensor want = weight_grad(false), got = weight_grad(true);
  const double scale = ops::max(ops::abs(want)).item();
  EXPECT_LE(ops::max(ops::abs(ops::sub(got, want))).item(), 1e-2 * scale);
}

TEST(ActivationCheckpointing, RecomputeThatDiffersIsAnError) {
  int calls = 0;
  auto f = [&](const std::vector<Tensor>& in) {
    ++calls;
    return std::vector<Tensor>{calls == 1 ? mul(in[0], 2.0) : sum(in[0])};
  };
  Tensor x = ops::ones({3}).set_requires_grad(true);
  autograd::CheckpointOptions o;
  o.name = "my_region";
  Tensor y = autograd::checkpoint(f, {x}, o)[0];
  try {
    sum(y).backward();
    FAIL() << "expected an error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("my_region"), std::string::npos) << e.what();
  }
}

/// A root whose forward runs `used` but never `unused`.
struct TwoLinears : nn::Module {
  TwoLinears() : nn::Module("TwoLinears") {
    Generator g(1);
    used = register_module("used", std::make_shared<nn::Linear>(4, 4, nn::LinearOptions{}, g));
    unused = register_module("unused", std::make_shared<nn::Linear>(4, 4, nn::LinearOptions{}, g));
  }
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return (*used)(in); });
  }
  std::shared_ptr<nn::Linear> used, unused;
};

TEST(ActivationCheckpointing, ModuleNotRunInForwardIsNamed) {
  TwoLinears m;
  nn::checkpoint_module(m, "used", nn::CheckpointMode::kFull);
  Tensor x = ops::ones({2, 4}).set_requires_grad(true);
  sum(m(x)).backward();  // fine
  nn::checkpoint_module(m, "unused", nn::CheckpointMode::kFull);
  try {
    m(x);
    FAIL() << "expected an error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'unused'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("did not run"), std::string::npos) << e.what();
  }
  try {
    nn::checkpoint_module(m, "nosuch", nn::CheckpointMode::kFull);
    FAIL() << "expected an error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("nosuch"), std::string::npos) << e.what();
  }
}

/// A module whose operator() uses call(fn) (no input given): cannot be checkpointed.
struct Opaque : nn::Module {
  Opaque() : nn::Module("Opaque") {}
  Tensor operator()(const Tensor& x) {
    return call([&] { return mul(x, 2.0); });
  }
};

TEST(ActivationCheckpointing, ModuleWithoutInputIsAnError) {
  Opaque m;
  m.set_activation_checkpointing(nn::CheckpointMode::kFull);
  try {
    m(ops::ones({2}));
    FAIL() << "expected an error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("Opaque"), std::string::npos) << e.what();
  }
}

TEST(ActivationCheckpointing, ParseSpec) {
  EXPECT_EQ(nn::ActivationCheckpointing::parse("none").mode, nn::CheckpointMode::kNone);
  EXPECT_EQ(nn::ActivationCheckpointing::parse("full").mode, nn::CheckpointMode::kFull);
  auto s = nn::ActivationCheckpointing::parse("selective:3");
  EXPECT_EQ(s.mode, nn::CheckpointMode::kSelective);
  EXPECT_EQ(s.every, 3);
  EXPECT_EQ(s.block_mode(0), nn::CheckpointMode::kFull);
  EXPECT_EQ(s.block_mode(1), nn::CheckpointMode::kNone);
  EXPECT_EQ(s.block_mode(3), nn::CheckpointMode::kFull);
  EXPECT_EQ(s.str(), "selective:3");
  EXPECT_EQ(nn::ActivationCheckpointing::parse("selective").block_mode(1), nn::CheckpointMode::kSelective);
  for (const char* bad : {"", "Full", "selective:0", "selective:", "selective:x", "selective:-1", "partial"})
    EXPECT_THROW(nn::ActivationCheckpointing::parse(bad), InvalidArgument) << bad;
}

}  // namespace
}  // namespace loom
