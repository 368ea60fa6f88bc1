// LR schedules and gradient clipping against their closed forms.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "nn/lr_scheduler.h"
#include "nn/optim.h"
#include "test_util.h"

namespace loom::nn {
namespace {

TEST(WarmupCosineLR, ValuesAtChosenStepsMatchClosedForm) {
  Tensor p = ops::zeros({2}).set_requires_grad();
  AdamW opt({p});
  const double max_lr = 6e-4, min_lr = 6e-5;
  WarmupCosineLR s(opt, max_lr, min_lr, /*warmup=*/10, /*max_steps=*/110);
  EXPECT_DOUBLE_EQ(opt.param_groups()[0].lr, max_lr * 1 / 10);  // step 0
  EXPECT_DOUBLE_EQ(s.lr_at(4), max_lr * 5 / 10);
  EXPECT_DOUBLE_EQ(s.lr_at(9), max_lr);
  EXPECT_DOUBLE_EQ(s.lr_at(10), max_lr);                              // cos(0)
  EXPECT_NEAR(s.lr_at(60), min_lr + 0.5 * (max_lr - min_lr), 1e-15);  // halfway: cos(pi/2) = 0
  EXPECT_NEAR(s.lr_at(35), min_lr + 0.5 * (1 + std::cos(std::numbers::pi * 0.25)) * (max_lr - min_lr), 1e-15);
  EXPECT_DOUBLE_EQ(s.lr_at(110), min_lr);
  EXPECT_DOUBLE_EQ(s.lr_at(1000), min_lr);
  for (int i = 0; i < 35; ++i) s.step();
  EXPECT_EQ(s.current_step(), 35);
  EXPECT_DOUBLE_EQ(opt.param_groups()[0].lr, s.lr_at(35));
  EXPECT_THROW(WarmupCosineLR(opt, 1e-3, 1e-2, 1, 10), InvalidArgument);
}

TEST(LRScheduler, StateDictRestoresPositionAndLr) {
  Tensor p = ops::zeros({2}).set_requires_grad();
  SGD opt({p});
  WarmupCosineLR a(opt, 1.0, 0.1, 5, 50);
  for (int i = 0; i < 17; ++i) a.step();
  auto st = a.state_dict();
  SGD opt2({ops::zeros({2}).set_requires_grad()});
  WarmupCosineLR b(opt2, 1.0, 0.1, 5, 50);
  b.load_state_dict(st);
  EXPECT_EQ(b.current_step(), 17);
  EXPECT_DOUBLE_EQ(opt2.param_groups()[0].lr, opt.param_groups()[0].lr);
  ConstantLR c(opt2, 0.25);
  c.step();
  EXPECT_DOUBLE_EQ(opt2.param_groups()[0].lr, 0.25);
}

TEST(ClipGradNorm, ScalesToMaxNormAndReturnsTotal) {
  Tensor a = ops::zeros({2}).set_requires_grad(), b = ops::zeros({1}).set_requires_grad();
  Tensor c = ops::zeros({3}).set_requires_grad();  // no gradient: skipped
  a.set_grad(from_vector<float>({3.0f, 4.0f}, {2}));
  b.set_grad(from_vector<float>({12.0f}, {1}));
  double total = clip_grad_norm_({a, b, c}, 1.0);
  EXPECT_NEAR(total, 13.0, 1e-12);  // sqrt(9 + 16 + 144)
  const double coef = 1.0 / (13.0 + 1e-6);
  auto ga = a.grad().to_vector<float>();
  EXPECT_NEAR(ga[0], 3.0 * coef, 1e-7);
  EXPECT_NEAR(ga[1], 4.0 * coef, 1e-7);
  EXPECT_NEAR(b.grad().to_vector<float>()[0], 12.0 * coef, 1e-7);
  EXPECT_NEAR(grad_norm({a, b}), 13.0 * coef, 1e-6);
}

TEST(ClipGradNorm, LeavesSmallGradientsUntouchedAndSupportsInf) {
  Tensor a = ops::zeros({2}).set_requires_grad();
  a.set_grad(from_vector<float>({0.3f, -0.4f}, {2}));
  EXPECT_NEAR(clip_grad_norm_({a}, 1.0), 0.5, 1e-7);
  EXPECT_EQ(a.grad().to_vector<float>(), (std::vector<float>{0.3f, -0.4f}));
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_NEAR(clip_grad_norm_({a}, 0.2, inf), 0.4, 1e-7);
  EXPECT_NEAR(a.grad().to_vector<float>()[1], -0.4 * 0.2 / (0.4 + 1e-6), 1e-7);
  EXPECT_THROW(clip_grad_norm_({a}, 1.0, 1.0), InvalidArgument);
}

TEST(ClipGradNorm, LargeGradientMatchesF64Sum) {
  const int64_t n = 100000;  // crosses the parallel threshold
  std::vector<float> g(n);
  double want = 0;
  for (int64_t i = 0; i < n; ++i) {
    g[i] = static_cast<float>(std::sin(0.001 * i));
    want += static_cast<double>(g[i]) * g[i];
  }
  Tensor p = ops::zeros({n}).set_requires_grad();
  p.set_grad(from_vector<float>(g, {n}));
  EXPECT_NEAR(grad_norm({p}), std::sqrt(want), 1e-9 * std::sqrt(want));
}

}  // namespace
}  // namespace loom::nn
