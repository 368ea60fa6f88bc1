// Optimizers against hand-computed single steps and against torch.optim for 3 steps.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/functions.h"
#include "nn/optim.h"
#include "test_util.h"

namespace loom::nn {
namespace {

Tensor param(const std::vector<float>& v) {
  return from_vector<float>(v, {static_cast<int64_t>(v.size())}).set_requires_grad();
}

void set_grad(const Tensor& p, const std::vector<float>& g) { p.set_grad(from_vector<float>(g, p.sizes())); }

TEST(AdamW, SingleStepMatchesHandComputation) {
  Tensor p = param({1.0f, -2.0f});
  set_grad(p, {0.5f, -0.25f});
  const double lr = 0.1, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  AdamW opt({p}, AdamWOptions{lr, b1, b2, eps, wd});
  opt.step();
  auto got = p.to_vector<float>();
  // After one step m_hat = g and v_hat = g^2, so p = p (1 - lr wd) - lr g / (|g| + eps).
  const double p0[2] = {1.0, -2.0}, g[2] = {0.5, -0.25};
  for (int i = 0; i < 2; ++i) {
    double want = p0[i] * (1 - lr * wd) - lr * g[i] / (std::fabs(g[i]) + eps);
    EXPECT_NEAR(got[i], want, 1e-6);
  }
  EXPECT_EQ(opt.state(0).step, 1);
}

TEST(Optimizer, StepParamsInPartsEqualsOneStepAndRejectsForeignTensors) {
  // Two copies of three parameters with the same gradients over three steps: one optimizer steps all at once, the
  // other in two parts per step (in the order DDP's buckets come back). Every element must agree bit for bit.
  auto make = [] { return std::vector<Tensor>{param({1.0f, -2.0f, 0.5f}), param({0.25f, 3.0f}), param({-1.5f})}; };
  std::vector<Tensor> a = make(), b = make();
  AdamW whole(a, AdamWOptions{0.1, 0.9, 0.999, 1e-8, 0.1});
  AdamW parts(b, AdamWOptions{0.1, 0.9, 0.999, 1e-8, 0.1});
  const std::vector<std::vector<float>> grads = {{0.5f, -0.25f, 1.0f}, {2.0f, -0.125f}, {0.75f}};
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      std::vector<float> g = grads[i];
      for (float& x : g) x *= static_cast<float>(step + 1);
      set_grad(a[i], g);
      set_grad(b[i], g);
    }
    whole.step();
    parts.step_params({b[2], b[1]});
    parts.step_params({b[0]});
  }
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(a[i].to_vector<float>(), b[i].to_vector<float>()) << "parameter " << i;
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(parts.state(i).step, 3) << "parameter " << i;
  Tensor stranger = param({1.0f});
  set_grad(stranger, {1.0f});
  try {
    parts.step_params({stranger});
    FAIL() << "a tensor outside the optimizer must be rejected";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("not one of this optimizer's parameters"), std::string::npos) << e.what();
  }
  EXPECT_EQ(stranger.to_vector<float>(), std::vector<float>{1.0f});
}

TEST(SGD, SingleStepMatchesHandComputation) {
  Tensor p = param({1.0f, -2.0f});
  set_grad(p, {0.5f, -0.25f});
  SGD opt({p}, SGDOptions{0.1, 0.9, 0.0, false, 0.01});
  opt.step();
  auto got = p.to_vector<float>();
  // First step: buf = g + wd p, p -= lr buf.
  EXPECT_NEAR(got[0], 1.0 - 0.1 * (0.5 + 0.01 * 1.0), 1e-7);
  EXPECT_NEAR(got[1], -2.0 - 0.1 * (-0.25 + 0.01 * -2.0), 1e-7);
  // Second step with the same grad: buf = 0.9 buf + d.
  set_grad(p, {0.5f, -0.25f});
  opt.step();
  double p1 = 1.0 - 0.1 * 0.51, buf = 0.51;
  double d = 0.5 + 0.01 * p1;
  buf = 0.9 * buf + d;
  EXPECT_NEAR(p.to_vector<float>()[0], p1 - 0.1 * buf, 1e-6);
}

TEST(Optimizer, SkipsParametersWithoutGradient) {
  Tensor a = param({1.0f}), b = param({2.0f});
  set_grad(a, {1.0f});
  AdamW opt({a, b}, AdamWOptions{0.1, 0.9, 0.999, 1e-8, 0.0});
  opt.step();
  EXPECT_NE(a.to_vector<float>()[0], 1.0f);
  EXPECT_EQ(b.to_vector<float>()[0], 2.0f);
  EXPECT_EQ(opt.state_dict().state.count(1), 0u);
}

// Runs 3 steps in torch.optim with gradients g_t = grads[t] and returns the final parameters.
std::vector<double> torch_three_steps(const std::string& ctor, const std::vector<float>& p0,
                                      const std::vector<std::vector<float>>& grads) {
  std::string script =
      "import torch\n"
      "p = torch.nn.Parameter(torch.tensor(" +
      testing::py_list(p0) +
      ", dtype=torch.float32))\n"
      "opt = " +
      ctor +
      "\n"
      "for g in [" +
      testing::py_list(grads[0]) + ", " + testing::py_list(grads[1]) + ", " + testing::py_list(grads[2]) +
      "]:\n"
      "    p.grad = torch.tensor(g, dtype=torch.float32)\n"
      "    opt.step()\n"
      "print(' '.join(repr(float(x)) for x in p.detach()))\n";
  return testing::run_python(script);
}

const std::vector<float> kP0{0.5f, -1.25f, 2.0f, 0.0f, 3.5f};
const std::vector<std::vector<float>> kGrads{
    {0.1f, -0.2f, 0.3f, 1.5f, -0.05f}, {-0.4f, 0.25f, 0.3f, -1.0f, 0.01f}, {0.2f, 0.2f, -0.7f, 0.5f, 0.0f}};

std::vector<float> loom_three_steps(Optimizer& opt, const Tensor& p) {
  for (const auto& g : kGrads) {
    set_grad(p, g);
    opt.step();
  }
  return p.to_vector<float>();
}

TEST(AdamW, ThreeStepsMatchTorch) {
  auto want =
      torch_three_steps("torch.optim.AdamW([p], lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.2)", kP0, kGrads);
  if (want.empty()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  Tensor p = param(kP0);
  AdamW opt({p}, AdamWOptions{0.05, 0.8, 0.95, 1e-6, 0.2});
  auto got = loom_three_steps(opt, p);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6) << i;
}

TEST(SGD, ThreeStepsWithNesterovMatchTorch) {
  auto want =
      torch_three_steps("torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)", kP0, kGrads);
  if (want.empty()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  Tensor p = param(kP0);
  SGD opt({p}, SGDOptions{0.1, 0.9, 0.0, true, 0.05});
  auto got = loom_three_steps(opt, p);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6) << i;
}

TEST(SGD, ThreeStepsWithDampeningMatchTorch) {
  auto want = torch_three_steps("torch.optim.SGD([p], lr=0.2, momentum=0.5, dampening=0.3)", kP0, kGrads);
  if (want.empty()) GTEST_SKIP() << "/usr/bin/python3 with torch not available";
  Tensor p = param(kP0);
  SGD opt({p}, SGDOptions{0.2, 0.5, 0.3, false, 0.0});
  auto got = loom_three_steps(opt, p);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6) << i;
}

TEST(AdamW, F64StepMatchesF32Kernel) {
  Tensor p32 = param(kP0);
  Tensor p64 = from_vector<double>(std::vector<double>(kP0.begin(), kP0.end()), {5}).set_requires_grad();
  AdamW a({p32}, AdamWOptions{0.05, 0.8, 0.95, 1e-6, 0.2});
  AdamW b({p64}, AdamWOptions{0.05, 0.8, 0.95, 1e-6, 0.2});
  for (const auto& g : kGrads) {
    set_grad(p32, g);
    p64.set_grad(from_vector<double>(std::vector<double>(g.begin(), g.end()), {5}));
    a.step();
    b.step();
  }
  auto x = p32.to_vector<float>();
  auto y = p64.to_vector<double>();
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(x[i], y[i], 1e-6);
}

TEST(Optimizer, StateDictRoundTripContinuesIdentically) {
  Tensor p = param(kP0), q = param(kP0);
  AdamW a({p}, AdamWOptions{0.05, 0.8, 0.95, 1e-6, 0.2});
  set_grad(p, kGrads[0]);
  a.step();
  auto sd = a.state_dict();
  EXPECT_EQ(sd.state.at(0).step, 1);
  ASSERT_EQ(sd.state.at(0).tensors.count("exp_avg"), 1u);
  AdamW b({q}, AdamWOptions{});  // hyper-parameters come from the state
  {
    NoGradGuard ng;
    ops::copy_(q, p);
  }
  b.load_state_dict(sd);
  EXPECT_DOUBLE_EQ(b.options().beta1, 0.8);
  EXPECT_DOUBLE_EQ(b.param_groups()[0].lr, 0.05);
  set_grad(p, kGrads[1]);
  set_grad(q, kGrads[1]);
  a.step();
  b.step();
  EXPECT_EQ(p.to_vector<float>(), q.to_vector<float>());
}

TEST(Optimizer, LoadingStateOfWrongShapeNamesTheParameter) {
  Tensor a = param({1, 2, 3}), b = param({1, 2});
  AdamW opt({a, b});
  set_grad(a, {1, 1, 1});
  set_grad(b, {1, 1});
  opt.step();
  auto sd = opt.state_dict();
  Tensor a2 = param({1, 2, 3}), c = param({1, 2, 3, 4});
  autograd::ensure_meta(c).name = "layer.weird.weight";
  AdamW opt2({a2, c});
  try {
    opt2.load_state_dict(sd);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("layer.weird.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4]"), std::string::npos) << msg;
  }
}

TEST(Optimizer, WeightDecayGroupsDecayMatricesNotVectors) {
  GPT2 m(testing::tiny_gpt2());
  auto groups = weight_decay_groups(m.named_parameters(), 1e-3, 0.1);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_DOUBLE_EQ(groups[0].weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(groups[1].weight_decay, 0.0);
  int64_t n = 0;
  for (auto& p : groups[0].params) {
    EXPECT_GE(p.dim(), 2);
    n += p.numel();
  }
  for (auto& p : groups[1].params) {
    EXPECT_EQ(p.dim(), 1);
    n += p.numel();
  }
  EXPECT_EQ(n, m.num_parameters());
  Tensor d = param({1.0f});
  EXPECT_THROW(AdamW(std::vector<Tensor>{d, d}), InvalidArgument);
}

}  // namespace
}  // namespace loom::nn
