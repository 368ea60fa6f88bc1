// conv2d, the pools and batch_norm (autograd/conv.h) against central finite differences in f64, and their errors.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "autograd/conv.h"
#include "autograd/functions.h"

namespace loom {
namespace {

using In = std::vector<Tensor>;
using autograd::gradcheck;

Tensor leaf(const Shape& s, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator g(seed);
  Tensor t = ops::add(ops::mul(ops::rand(s, g, DType::f64), hi - lo), lo);
  return t.set_requires_grad();
}

TEST(ConvGradcheck, Conv2dConfigs) {
  struct Case {
    Shape xs, ws;
    bool bias;
    Conv2dOptions o;
  };
  const std::vector<Case> cases = {
      {{2, 3, 5, 4}, {4, 3, 3, 3}, true, {{1, 1}, {1, 1}, {1, 1}, 1}},
      {{2, 4, 6, 7}, {4, 2, 3, 2}, true, {{2, 1}, {1, 0}, {1, 2}, 2}},
      {{1, 3, 7, 7}, {3, 1, 3, 3}, false, {{2, 2}, {2, 1}, {2, 2}, 3}},
      {{2, 3, 3, 3}, {2, 3, 1, 1}, true, {{1, 1}, {0, 0}, {1, 1}, 1}},
      {{2, 2, 5, 5}, {2, 2, 1, 1}, false, {{2, 2}, {0, 0}, {1, 1}, 1}},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.xs) + " * " + shape_str(c.ws));
    In in = {leaf(c.xs, seed++), leaf(c.ws, seed++)};
    if (c.bias) in.push_back(leaf({c.ws[0]}, seed++));
    const Conv2dOptions o = c.o;
    EXPECT_TRUE(gradcheck([o](const In& x) { return conv2d(x[0], x[1], x.size() > 2 ? x[2] : Tensor(), o); }, in));
  }
}

TEST(ConvGradcheck, Pools) {
  Pool2dOptions mp;
  mp.kernel_size = {3, 2}, mp.stride = {2, 1}, mp.padding = {1, 1}, mp.dilation = {1, 2};
  EXPECT_TRUE(gradcheck([mp](const In& x) { return max_pool2d(x[0], mp); }, {leaf({2, 2, 6, 7}, 11)}));
  Pool2dOptions mc;
  mc.kernel_size = {2, 2}, mc.ceil_mode = true;
  EXPECT_TRUE(gradcheck([mc](const In& x) { return max_pool2d(x[0], mc); }, {leaf({1, 2, 5, 5}, 12)}));
  for (bool cip : {true, false}) {
    Pool2dOptions ap;
    ap.kernel_size = {3, 3}, ap.stride = {2, 2}, ap.padding = {1, 1}, ap.ceil_mode = true, ap.count_include_pad = cip;
    EXPECT_TRUE(gradcheck([ap](const In& x) { return avg_pool2d(x[0], ap); }, {leaf({2, 2, 6, 5}, 13)}));
  }
  EXPECT_TRUE(gradcheck([](const In& x) { return adaptive_avg_pool2d(x[0], {3, 2}); }, {leaf({2, 2, 7, 5}, 14)}));
}

TEST(ConvGradcheck, BatchNormTrainingAndEval) {
  for (bool training : {true, false}) {
    SCOPED_TRACE(training ? "training" : "eval");
    Tensor rm = ops::zeros({3}, DType::f64), rv = ops::ones({3}, DType::f64);
    // gradcheck calls f many times: fresh running buffers per call keep it a pure function.
    auto f = [training, rm, rv](const In& x) {
      Tensor m = ops::clone(rm), v = ops::clone(rv);
      return batch_norm(x[0], m, v, x[1], x[2], training, 0.1, 1e-5);
    };
    EXPECT_TRUE(gradcheck(f, {leaf({3, 3, 2, 3}, 21), leaf({3}, 22, 0.5, 1.5), leaf({3}, 23)}));
    // Without affine parameters and on (N, C) input.
    auto g = [training, rm, rv](const In& x) {
      Tensor m = ops::clone(rm), v = ops::clone(rv);
      return batch_norm(x[0], m, v, Tensor(), Tensor(), training, 0.1, 1e-5);
    };
    EXPECT_TRUE(gradcheck(g, {leaf({5, 3}, 24)}));
  }
}

/// Expects fn to throw loom::Error whose message contains every one of parts.
template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
  }
}

TEST(ConvErrors, NameTheOpAndShapes) {
  const Tensor x = ops::zeros({2, 3, 8, 8}), w = ops::zeros({4, 2, 3, 3});
  expect_error([&] { ops::conv2d(x, w, Tensor()); }, {"conv2d", "[4, 2, 3, 3]", "[2, 3, 8, 8]"});
  expect_error(
      [&] {
        ops::conv2d(ops::zeros({3, 8, 8}), ops::zeros({4, 3, 3, 3}), Tensor());
      },
      {"conv2d", "4-D", "[3, 8, 8]"});
  expect_error([&] { ops::conv2d(x, ops::zeros({4, 3, 3, 3}), ops::zeros({5})); }, {"conv2d", "bias", "[5]"});
  expect_error(
      [&] {
        ops::conv2d(ops::zeros({1, 3, 2, 2}), ops::zeros({4, 3, 3, 3}), Tensor());
      },
      {"conv2d", "larger than the padded input", "[1, 3, 2, 2]"});
  expect_error(
      [&] {
        ops::conv2d(x, ops::zeros({4, 3, 3, 3}, DType::f64), Tensor());
      },
      {"conv2d", "float64", "[4, 3, 3, 3]"});
  Pool2dOptions o;
  o.kernel_size = {2, 2}, o.padding = {2, 2};
  expect_error([&] { ops::max_pool2d(x, o); }, {"max_pool2d", "padding", "[2, 3, 8, 8]"});
  expect_error(
      [&] {
        ops::batch_norm(ops::zeros({1, 3}), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
      },
      {"batch_norm", "more than 1 value per channel", "[1, 3]"});
  expect_error([&] { ops::batch_norm(x, ops::ones({4}), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5); },
               {"batch_norm", "weight", "[4]", "3 channels"});
}

}  // namespace
}  // namespace loom
