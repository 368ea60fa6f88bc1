// Engine behaviour: accumulation, fan-out, grad mode, detach, retain_graph,
// errors, saved-tensor versions, and the hooks DDP/FSDP rely on.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"

namespace loom {
namespace {

Tensor vec(const std::vector<double>& v) { return from_vector<double>(v, {static_cast<int64_t>(v.size())}); }
Tensor param(const std::vector<double>& v) { return vec(v).set_requires_grad(); }

void expect_values(const Tensor& t, const std::vector<double>& want) {
  ASSERT_TRUE(t.defined());
  std::vector<double> got = t.to_vector<double>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_DOUBLE_EQ(got[i], want[i]) << "element " << i;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Engine, GradientsAccumulateAcrossTwoBackwardCalls) {
  Tensor x = param({1, 2, 3});
  sum(mul(x, x)).backward();
  expect_values(x.grad(), {2, 4, 6});
  sum(mul(x, 3.0)).backward();
  expect_values(x.grad(), {5, 7, 9});
}

TEST(Engine, FirstGradientDoesNotAliasTheIncomingGradient) {
  Tensor x = param({1, 2});
  Tensor y = param({3, 4});
  // add's backward hands the same gradient tensor to both inputs.
  Tensor g = vec({1, 1});
  add(x, y).backward(g);
  ASSERT_FALSE(x.grad().storage() == y.grad().storage());
  ASSERT_FALSE(x.grad().storage() == g.storage());
  ops::add_(x.grad(), 1.0);
  expect_values(y.grad(), {1, 1});
  expect_values(g, {1, 1});
}

TEST(Engine, TensorUsedTwiceSumsItsGradients) {
  Tensor x = param({1, 2, 3});
  Tensor y = add(mul(x, 2.0), exp(x));  // dy/dx = 2 + e^x
  sum(y).backward();
  std::vector<double> g = x.grad().to_vector<double>();
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(g[i], 2 + std::exp(i + 1.0), 1e-12);
}

TEST(Engine, DiamondGraphRunsEachNodeOnceWithSummedGradient) {
  Tensor x = param({0.5, -1.5});
  Tensor h = tanh(x);
  Tensor y = sum(add(mul(h, h), h));  // dy/dh = 2h + 1, dh/dx = 1 - h^2
  y.backward();
  std::vector<double> g = x.grad().to_vector<double>();
  for (int i = 0; i < 2; ++i) {
    double xv = i == 0 ? 0.5 : -1.5, hv = std::tanh(xv);
    EXPECT_NEAR(g[i], (2 * hv + 1) * (1 - hv * hv), 1e-12);
  }
}

TEST(Engine, NoGradGuardRecordsNothing) {
  Tensor x = param({1, 2});
  Tensor y;
  {
    NoGradGuard guard;
    EXPECT_FALSE(autograd::grad_mode_enabled());
    y = mul(x, x);
    {
      autograd::EnableGradGuard enable;
      EXPECT_TRUE(autograd::grad_mode_enabled());
      EXPECT_TRUE(mul(x, x).requires_grad());
    }
    EXPECT_FALSE(autograd::grad_mode_enabled());
  }
  EXPECT_TRUE(autograd::grad_mode_enabled());
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(autograd::grad_fn(y), nullptr);
}

TEST(Engine, DetachStopsGradients) {
  Tensor x = param({1, 2});
  Tensor d = detach(x);
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.storage(), x.storage());
  Tensor y = add(mul(x, 2.0), mul(detach(mul(x, x)), 10.0));
  sum(y).backward();
  expect_values(x.grad(), {2, 2});
}

TEST(Engine, RetainGraphAllowsSecondBackwardAndItsAbsenceErrorsClearly) {
  Tensor x = param({1, 2});
  Tensor y = sum(exp(x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  std::vector<double> g = x.grad().to_vector<double>();
  EXPECT_NEAR(g[0], 2 * std::exp(1.0), 1e-12);
  std::string msg = error_of([&] { y.backward(); });
  EXPECT_NE(msg.find("backward through the graph a second time"), std::string::npos) << msg;
  EXPECT_NE(msg.find("retain_graph=true"), std::string::npos) << msg;
}

TEST(Engine, BackwardOnTensorWithoutGradErrorsNamingShape) {
  Tensor x = ops::ones({2, 3}, DType::f64);
  std::string msg = error_of([&] { sum(x).backward(); });
  EXPECT_NE(msg.find("does not require grad and does not have a grad_fn"), std::string::npos) << msg;
  msg = error_of([&] { x.backward(ops::ones({2, 3}, DType::f64)); });
  EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
}

TEST(Engine, NonScalarRootWithoutGradientErrors) {
  Tensor x = param({1, 2});
  Tensor y = mul(x, 2.0);
  std::string msg = error_of([&] { y.backward(); });
  EXPECT_NE(msg.find("only for scalar outputs"), std::string::npos) << msg;
  y.backward(vec({1, 10}));
  expect_values(x.grad(), {2, 20});
}

TEST(Engine, InPlaceModificationOfSavedTensorBeforeBackwardErrors) {
  Tensor x = param({1, 2});
  Tensor a = vec({3, 4});
  Tensor y = sum(mul(x, a));  // saves a for x's gradient
  ops::mul_(a, 2.0);
  a.bump_version();  // in-place ops bump the version; make the test independent of whether mul_ does
  std::string msg = error_of([&] { y.backward(); });
  EXPECT_NE(msg.find("modified by an in-place operation"), std::string::npos) << msg;
}

TEST(Engine, InPlaceOpBumpsVersionSoSavedTensorCheckFires) {
  Tensor a = vec({3, 4});
  int64_t v0 = a.version();
  ops::add_(a, 1.0);
  EXPECT_GT(a.version(), v0) << "ops::add_ should bump the version counter";
}

TEST(Engine, PostAccumulateHookFiresOncePerBackwardWithFinalSummedGradient) {
  Tensor w = param({1, 2});
  int calls = 0;
  std::vector<double> seen;
  autograd::register_post_accumulate_grad_hook(w, [&](const Tensor& p) {
    ++calls;
    seen = p.grad().to_vector<double>();
  });
  Tensor y = sum(add(mul(w, 3.0), mul(w, w)));  // used twice: d/dw = 3 + 2w
  y.backward();
  EXPECT_EQ(calls, 1);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_DOUBLE_EQ(seen[0], 5);
  EXPECT_DOUBLE_EQ(seen[1], 7);
  sum(w).backward();
  EXPECT_EQ(calls, 2);
  EXPECT_DOUBLE_EQ(seen[0], 6);
}

TEST(Engine, RegisterHookCanScaleGradient) {
  Tensor x = param({1, 2});
  autograd::register_hook(x, [](const Tensor& g) { return ops::mul(g, 10.0); });
  Tensor h = mul(x, 2.0);
  autograd::register_hook(h, [](const Tensor& g) { return ops::add(g, 1.0); });  // non-leaf
  sum(h).backward();
  expect_values(x.grad(), {40, 40});  // ((1 + 1) * 2) * 10
}

TEST(Engine, HooksFireInReverseOrderOfUse) {
  Tensor a = param({1});
  Tensor b = param({2});
  Tensor c = param({3});
  std::vector<char> order;
  autograd::register_post_accumulate_grad_hook(a, [&](const Tensor&) { order.push_back('a'); });
  autograd::register_post_accumulate_grad_hook(b, [&](const Tensor&) { order.push_back('b'); });
  autograd::register_post_accumulate_grad_hook(c, [&](const Tensor&) { order.push_back('c'); });
  Tensor h = tanh(mul(a, 2.0));
  h = tanh(mul(h, b));
  h = tanh(mul(h, c));
  sum(h).backward();
  EXPECT_EQ(order, (std::vector<char>{'c', 'b', 'a'}));
}

TEST(Engine, GradReturnsGradientsWithoutTouchingDotGrad) {
  Tensor x = param({1, 2});
  Tensor y = param({3, 4});
  int hook_calls = 0;
  autograd::register_post_accumulate_grad_hook(x, [&](const Tensor&) { ++hook_calls; });
  Tensor z = sum(mul(mul(x, x), y));
  auto g = autograd::grad({z}, {x});
  expect_values(g[0], {6, 16});
  EXPECT_FALSE(x.grad().defined());
  EXPECT_FALSE(y.grad().defined());
  EXPECT_EQ(hook_calls, 0);
}

TEST(Engine, BackwardFreesSavedTensorsUnlessRetained) {
  Tensor x = param({1, 2});
  Tensor y = exp(x);
  Tensor loss = sum(y);
  loss.backward(Tensor(), /*retain_graph=*/true);
  EXPECT_FALSE(autograd::grad_fn(y)->released());
  loss.backward();
  EXPECT_TRUE(autograd::grad_fn(y)->released());
}

TEST(Engine, GradWithRespectToIntermediateTensor) {
  Tensor x = param({1, 2});
  Tensor h = mul(x, 3.0);
  Tensor z = sum(mul(h, h));  // dz/dh = 2h = 6x
  auto g = autograd::grad({z}, {h, x});
  expect_values(g[0], {6, 12});
  expect_values(g[1], {18, 36});
}

TEST(Engine, GradOfUnusedInputIsZeros) {
  Tensor x = param({1, 2});
  Tensor y = param({3, 4});
  auto g = autograd::grad({sum(x)}, {x, y});
  expect_values(g[0], {1, 1});
  expect_values(g[1], {0, 0});
}

TEST(Engine, MultipleRootsWithDependencies) {
  Tensor x = param({2});
  Tensor y = mul(x, x);
  Tensor z = mul(y, 3.0);
  autograd::backward({sum(y), sum(z)});  // d/dx (x^2 + 3x^2) = 8x
  expect_values(x.grad(), {16});
}

TEST(Engine, SetRequiresGradOnNonLeafOrIntegerErrors) {
  Tensor x = param({1});
  Tensor y = mul(x, 2.0);
  EXPECT_THROW(y.set_requires_grad(false), InvalidArgument);
  Tensor i = from_vector<int64_t>({1, 2}, {2});
  EXPECT_THROW(i.set_requires_grad(), InvalidArgument);
}

TEST(Engine, ToDtypeGradientConvertsBack) {
  Tensor x = from_vector<float>({1, 2}, {2}).set_requires_grad();
  Tensor y = to(x, DType::f64);
  EXPECT_EQ(y.dtype(), DType::f64);
  sum(mul(y, vec({3, 5}))).backward();
  ASSERT_EQ(x.grad().dtype(), DType::f32);
  std::vector<float> g = x.grad().to_vector<float>();
  EXPECT_FLOAT_EQ(g[0], 3);
  EXPECT_FLOAT_EQ(g[1], 5);
}

TEST(Engine, SplitOutputsWithoutGradientGetZeros) {
  Tensor x = param({1, 2, 3, 4});
  auto parts = split(x, 2, 0);
  sum(mul(parts[1], 2.0)).backward();
  expect_values(x.grad(), {0, 0, 2, 2});
}

TEST(Engine, GradcheckReportsMismatchNamingInputAndElement) {
  Tensor x = param({0.3, 0.7});
  // A function whose recorded gradient is wrong: detach drops d/dx of the second term.
  auto f = [](const std::vector<Tensor>& in) { return add(mul(in[0], 2.0), mul(detach(in[0]), in[0])); };
  std::string msg = error_of([&] { autograd::gradcheck(f, {x}); });
  EXPECT_NE(msg.find("input 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("element 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("analytical"), std::string::npos) << msg;
  EXPECT_NE(msg.find("numerical"), std::string::npos) << msg;
}

TEST(Engine, QueuedCallbackRunsAfterEveryAccumulationOfThePass) {
  Tensor a = ops::ones({3});
  a.set_requires_grad(true);
  Tensor b = ops::ones({2});
  b.set_requires_grad(true);
  std::vector<std::string> events;
  autograd::register_post_accumulate_grad_hook(a, [&](const Tensor&) {
    events.push_back("a");
    autograd::queue_callback([&] {
      events.push_back("callback");
      EXPECT_TRUE(b.grad().defined());  // the whole pass has run
      autograd::queue_callback([&] { events.push_back("nested"); });
    });
  });
  autograd::register_post_accumulate_grad_hook(b, [&](const Tensor&) { events.push_back("b"); });
  EXPECT_FALSE(autograd::in_backward_pass());
  (loom::sum(a * 2.0) + loom::sum(b)).backward();
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[2], "callback");
  EXPECT_EQ(events[3], "nested");
  EXPECT_FALSE(autograd::in_backward_pass());
  EXPECT_THROW(autograd::queue_callback([] {}), InvalidArgument);
}

}  // namespace
}  // namespace loom
