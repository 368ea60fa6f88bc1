// GPT-2 and Llama on CUDA against the same models on the CPU: the tiny configs
// of tests/reference/test_model_reference.cc (whose CPU runs match PyTorch), so
// CUDA == CPU here closes the loop to PyTorch. Same weights (same seed), same
// batch; logits, loss, every gradient and the losses of AdamW steps; then bf16
// and the data-parallel wrappers (world size 1, NCCL) on CUDA tensors.
//
// Tolerances (elementwise |dev - cpu| <= atol * max|cpu| + rtol * |cpu|, see conformance.h):
//   f32 on CUDA vs f32 on CPU: loss 1e-5 relative; logits atol 1e-5, rtol 1e-5; gradients atol 1e-4,
//       rtol 1e-4; AdamW step losses 1e-5 relative (the reference test's f32 figures).
//   bf16 on CUDA (parameters and activations bf16) vs f32 on CPU: loss 1e-2 relative; logits cosine
//       similarity >= 0.999; every gradient cosine similarity >= 0.99 and norm within 5%; AdamW step
//       losses 2e-2 relative.
//   FullyShard with MixedPrecision{bf16, f32} on CUDA vs f32 on CPU: step losses 1e-2 relative.
//   DDP and FullyShard in f32, world size 1 over NCCL, vs the unwrapped model on the same device:
//       step losses 1e-6 relative (the same arithmetic, so in practice equal).
// Each test skips without a CUDA device. LOOM_CONFORMANCE_DEVICE=cpu runs them on the CPU
// (gloo instead of NCCL) to self-check this file; CTest never sets it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/functions.h"
#include "collectives/init.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "nn/optim.h"
#include "parallel/ddp.h"
#include "parallel/fully_shard.h"
#include "tests/gpu/conformance.h"
#include "tests/reference/tiny_models.h"

using namespace loom;
using namespace loom::conformance;

namespace {

#define REQUIRE_DEVICE() \
  if (!mode().available) GTEST_SKIP() << mode().why

constexpr double kLr = 1e-2, kBeta1 = 0.9, kBeta2 = 0.95, kEps = 1e-8, kWeightDecay = 0.1;
constexpr int64_t kB = 2, kT = 12;

std::shared_ptr<nn::CausalLM> make_model(const std::string& family) {
  Generator gen(1234);
  return loom::testing::make_tiny_model(family, gen);
}

struct Batch {
  Tensor idx, targets;  // (B, T) i64 on the CPU
};
Batch batch(int64_t vocab) {
  Generator g(99);
  Batch b;
  b.idx = ops::randint(0, vocab, {kB, kT}, g);
  b.targets = ops::randint(0, vocab, {kB, kT}, g);
  return b;
}

nn::AdamWOptions adamw_options() {
  nn::AdamWOptions o;
  o.beta1 = kBeta1;
  o.beta2 = kBeta2;
  o.eps = kEps;
  return o;
}

/// The model's forward, loss and backward on (idx, targets) already on its device.
struct Pass {
  Tensor logits, loss;
};
Pass forward_backward(nn::CausalLM& model, const Tensor& idx, const Tensor& targets) {
  Pass p;
  p.logits = model(idx);
  const int64_t V = p.logits.size(-1);
  p.loss = cross_entropy(reshape(p.logits, {kB * kT, V}), reshape(targets, {kB * kT}));
  p.loss.backward();
  return p;
}

/// Losses of `steps` AdamW steps on a fixed batch (each before its update).
std::vector<double> train(nn::CausalLM& model, nn::AdamW& opt, const Tensor& idx, const Tensor& targets, int steps,
                          const std::function<void()>& zero_grad = nullptr) {
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    if (zero_grad) {
      zero_grad();
    } else {
      opt.zero_grad();
    }
    Tensor loss = model.loss(idx, targets);
    losses.push_back(loss.item());
    loss.backward();
    opt.step();
  }
  return losses;
}

void expect_losses_near(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_LE(std::fabs(got[i] - want[i]), rtol * std::fabs(want[i]))
        << what << ": step " << i + 1 << " loss " << got[i] << ", reference " << want[i] << " (rtol " << rtol << ")";
}

void expect_close(const Tensor& dev, const Tensor& ref, Tol tol, const std::string& what) {
  Compared c = compare(dev, ref, tol, nullptr);
  std::printf("[models] %-48s %s worst %.3g of tol %s\n", what.c_str(), c.ok ? "ok  " : "FAIL", c.worst,
              c.ok ? "" : c.message.c_str());
  EXPECT_TRUE(c.ok) << what << ": " << c.message;
}

/// Cosine similarity and norm ratio |a| / |b| of two tensors (any devices), in f64.
std::pair<double, double> cosine_and_ratio(const Tensor& a, const Tensor& b) {
  auto x = ops::to(a, kCPU).to_vector<double>();
  auto y = ops::to(b, kCPU).to_vector<double>();
  double xy = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    xy += x[i] * y[i];
    xx += x[i] * x[i];
    yy += y[i] * y[i];
  }
  if (xx == 0 && yy == 0) return {1.0, 1.0};
  return {xy / std::sqrt(xx * yy), std::sqrt(xx / std::max(yy, 1e-300))};
}

// ---------------------------------------------------------------- f32

void f32_matches_cpu(const std::string& family) {
  auto ref = make_model(family), dev = make_model(family);
  dev->to(mode().device);
  const Batch b = batch(ref->vocab_size());
  const Tensor idx = to_dut(b.idx), targets = to_dut(b.targets);

  Pass pr = forward_backward(*ref, b.idx, b.targets);
  Pass pd = forward_backward(*dev, idx, targets);
  ASSERT_EQ(pd.logits.device(), mode().device);
  expect_close(pd.logits, pr.logits, {1e-5, 1e-5}, family + " f32 logits");
  expect_close(pd.loss, pr.loss, {0, 1e-5}, family + " f32 loss");
  auto named_r = ref->named_parameters(), named_d = dev->named_parameters();
  ASSERT_EQ(named_r.size(), named_d.size());
  for (size_t i = 0; i < named_r.size(); ++i) {
    ASSERT_EQ(named_r[i].first, named_d[i].first);
    ASSERT_TRUE(named_d[i].second.grad().defined()) << named_d[i].first << " received no gradient on the device";
    EXPECT_EQ(named_d[i].second.grad().device(), mode().device) << named_d[i].first;
    expect_close(named_d[i].second.grad(), named_r[i].second.grad(), {1e-4, 1e-4},
                 family + " f32 grad " + named_r[i].first);
  }

  nn::AdamW opt_r(nn::weight_decay_groups(named_r, kLr, kWeightDecay), adamw_options());
  nn::AdamW opt_d(nn::weight_decay_groups(named_d, kLr, kWeightDecay), adamw_options());
  auto lr = train(*ref, opt_r, b.idx, b.targets, 5);
  auto ld = train(*dev, opt_d, idx, targets, 5);
  expect_losses_near(ld, lr, 1e-5, family + " f32 AdamW step losses");
  EXPECT_LT(ld.back(), ld.front()) << "AdamW did not reduce the loss on the device";
}

TEST(CudaModels, Gpt2F32MatchesCpu) {
  REQUIRE_DEVICE();
  f32_matches_cpu("gpt2");
}
TEST(CudaModels, LlamaF32MatchesCpu) {
  REQUIRE_DEVICE();
  f32_matches_cpu("llama");
}

// ---------------------------------------------------------------- bf16 parameters and activations

void bf16_matches_cpu_f32(const std::string& family) {
  auto ref = make_model(family), dev = make_model(family);
  dev->to(DType::bf16);
  dev->to(mode().device);
  const Batch b = batch(ref->vocab_size());
  const Tensor idx = to_dut(b.idx), targets = to_dut(b.targets);

  Pass pr = forward_backward(*ref, b.idx, b.targets);
  Pass pd = forward_backward(*dev, idx, targets);
  EXPECT_EQ(pd.logits.dtype(), DType::bf16);
  const double loss_r = pr.loss.item(), loss_d = pd.loss.item();
  std::printf("[models] %s bf16 loss %.6f vs f32 cpu %.6f (rel %.3g)\n", family.c_str(), loss_d, loss_r,
              std::fabs(loss_d - loss_r) / std::fabs(loss_r));
  EXPECT_LE(std::fabs(loss_d - loss_r), 1e-2 * std::fabs(loss_r)) << family << " bf16 loss";
  auto [lcos, lratio] = cosine_and_ratio(pd.logits, pr.logits);
  std::printf("[models] %s bf16 logits cosine %.6f norm ratio %.4f\n", family.c_str(), lcos, lratio);
  EXPECT_GE(lcos, 0.999) << family << " bf16 logits";
  auto named_r = ref->named_parameters(), named_d = dev->named_parameters();
  ASSERT_EQ(named_r.size(), named_d.size());
  double worst_cos = 1;
  for (size_t i = 0; i < named_r.size(); ++i) {
    const std::string& name = named_r[i].first;
    ASSERT_TRUE(named_d[i].second.grad().defined()) << name << " received no gradient on the device";
    auto [cos, ratio] = cosine_and_ratio(named_d[i].second.grad(), named_r[i].second.grad());
    worst_cos = std::min(worst_cos, cos);
    std::printf("[models] %s bf16 grad %-40s cosine %.5f norm ratio %.4f\n", family.c_str(), name.c_str(), cos, ratio);
    EXPECT_GE(cos, 0.99) << family << " bf16 gradient of " << name;
    EXPECT_NEAR(ratio, 1.0, 0.05) << family << " bf16 gradient norm of " << name;
  }
  std::printf("[models] %s bf16 worst gradient cosine %.5f\n", family.c_str(), worst_cos);

  nn::AdamW opt_r(nn::weight_decay_groups(named_r, kLr, kWeightDecay), adamw_options());
  nn::AdamW opt_d(nn::weight_decay_groups(named_d, kLr, kWeightDecay), adamw_options());
  auto lr = train(*ref, opt_r, b.idx, b.targets, 5);
  auto ld = train(*dev, opt_d, idx, targets, 5);
  expect_losses_near(ld, lr, 2e-2, family + " bf16 AdamW step losses");
}

TEST(CudaModels, Gpt2Bf16MatchesCpuF32) {
  REQUIRE_DEVICE();
  bf16_matches_cpu_f32("gpt2");
}
TEST(CudaModels, LlamaBf16MatchesCpuF32) {
  REQUIRE_DEVICE();
  bf16_matches_cpu_f32("llama");
}

// ---------------------------------------------------------------- DDP and FullyShard, world size 1

/// The world group of one rank from the torchrun variables: nccl on CUDA, gloo in the CPU self-check.
/// The variables are set only while the group is made, then restored, so later tests in the process see the old ones.
std::shared_ptr<collectives::ProcessGroup> world_of_one(int port) {
  const std::vector<std::pair<std::string, std::string>> vars = {{"RANK", "0"},
                                                                 {"WORLD_SIZE", "1"},
                                                                 {"LOCAL_RANK", "0"},
                                                                 {"LOCAL_WORLD_SIZE", "1"},
                                                                 {"MASTER_ADDR", "127.0.0.1"},
                                                                 {"MASTER_PORT", std::to_string(port)}};
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  for (const auto& [k, v] : vars) {
    const char* old = std::getenv(k.c_str());
    saved.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
    ::setenv(k.c_str(), v.c_str(), 1);
  }
  struct Restore {
    std::vector<std::pair<std::string, std::optional<std::string>>>& saved;
    ~Restore() {
      for (const auto& [k, v] : saved) {
        if (v) {
          ::setenv(k.c_str(), v->c_str(), 1);
        } else {
          ::unsetenv(k.c_str());
        }
      }
    }
  } restore{saved};
  collectives::InitOptions o;
  o.secret = "loom-cuda-models-test";
  return collectives::init_process_group(mode().self_check ? "gloo" : "nccl", o);
}

bool have_backend() { return mode().self_check || collectives::has_backend("nccl"); }

/// Five AdamW steps of the unwrapped f32 model on the device under test.
std::vector<double> unwrapped_losses(const std::string& family, const Batch& b) {
  auto model = make_model(family);
  model->to(mode().device);
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), kLr, kWeightDecay), adamw_options());
  return train(*model, opt, to_dut(b.idx), to_dut(b.targets), 5);
}

void ddp_matches_unwrapped(const std::string& family, int port) {
  if (!have_backend()) GTEST_SKIP() << "this build has no nccl backend";
  auto model = make_model(family);
  const Batch b = batch(model->vocab_size());
  const auto want = unwrapped_losses(family, b);
  model->to(mode().device);
  auto group = world_of_one(port);
  std::vector<double> got;
  {
    parallel::DistributedDataParallel ddp(model, group);
    nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), kLr, kWeightDecay), adamw_options());
    got = train(*model, opt, to_dut(b.idx), to_dut(b.targets), 5);
    for (const auto& p : model->parameters()) EXPECT_EQ(p.device(), mode().device);
  }
  expect_losses_near(got, want, 1e-6, family + " DDP (world size 1) step losses");
}

std::vector<double> fsdp_losses(const std::string& family, const Batch& b, parallel::MixedPrecision mp, int port) {
  auto model = make_model(family);
  model->to(mode().device);
  auto group = world_of_one(port);
  parallel::FullyShardOptions o;
  o.mixed_precision = mp;
  parallel::FullyShard fsdp(model, group, o);
  for (const auto& p : fsdp.parameters()) EXPECT_EQ(p.device(), mode().device) << "an FSDP shard is not on the device";
  nn::AdamW opt(fsdp.param_groups(kLr, kWeightDecay), adamw_options());
  return train(*model, opt, to_dut(b.idx), to_dut(b.targets), 5, [&] { fsdp.zero_grad(); });
}

void fsdp_matches_unwrapped(const std::string& family, int port) {
  if (!have_backend()) GTEST_SKIP() << "this build has no nccl backend";
  const Batch b = batch(61);
  const auto want = unwrapped_losses(family, b);
  const auto got = fsdp_losses(family, b, {}, port);
  expect_losses_near(got, want, 1e-6, family + " FullyShard (world size 1) step losses");
}

void fsdp_bf16_matches_cpu_f32(const std::string& family, int port) {
  if (!have_backend()) GTEST_SKIP() << "this build has no nccl backend";
  const Batch b = batch(61);
  auto ref = make_model(family);
  nn::AdamW opt(nn::weight_decay_groups(ref->named_parameters(), kLr, kWeightDecay), adamw_options());
  const auto want = train(*ref, opt, b.idx, b.targets, 5);
  const auto got = fsdp_losses(family, b, {DType::bf16, DType::f32}, port);
  for (size_t i = 0; i < got.size(); ++i)
    std::printf("[models] %s FullyShard bf16 step %zu loss %.6f vs f32 cpu %.6f\n", family.c_str(), i + 1, got[i],
                want[i]);
  expect_losses_near(got, want, 1e-2, family + " FullyShard MixedPrecision(bf16) step losses");
}

// Port 0: the store of a world of one has no client to tell, so it binds whatever port the OS gives it (fixed ports
// here were inside the ephemeral range, where any outgoing connection may hold them).
TEST(CudaModels, Gpt2DdpWorldOneNcclMatchesUnwrapped) {
  REQUIRE_DEVICE();
  ddp_matches_unwrapped("gpt2", 0);
}
TEST(CudaModels, LlamaDdpWorldOneNcclMatchesUnwrapped) {
  REQUIRE_DEVICE();
  ddp_matches_unwrapped("llama", 0);
}
TEST(CudaModels, Gpt2FullyShardWorldOneNcclMatchesUnwrapped) {
  REQUIRE_DEVICE();
  fsdp_matches_unwrapped("gpt2", 0);
}
TEST(CudaModels, LlamaFullyShardWorldOneNcclMatchesUnwrapped) {
  REQUIRE_DEVICE();
  fsdp_matches_unwrapped("llama", 0);
}
TEST(CudaModels, Gpt2FullyShardBf16MatchesCpuF32) {
  REQUIRE_DEVICE();
  fsdp_bf16_matches_cpu_f32("gpt2", 0);
}
TEST(CudaModels, LlamaFullyShardBf16MatchesCpuF32) {
  REQUIRE_DEVICE();
  fsdp_bf16_matches_cpu_f32("llama", 0);
}

}  // namespace
