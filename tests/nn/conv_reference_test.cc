// conv2d, max/avg/adaptive pooling and batch_norm against PyTorch (tests/reference/conv_ref.py run by the
// repository's .venv python): forward values and every gradient of sum(y * r), in f32 (1e-5 relative forward,
// 1e-4 gradients) and f64 (1e-10), through the differentiable functions (so ops and autograd both), and through
// the nn modules for BatchNorm2d's running statistics.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/conv.h"
#include "autograd/functions.h"
#include "nn/conv.h"

namespace loom {
namespace {

/// scale * sin(0.37*i + seed) in f64 cast to dt: conv_ref.py's gen().
Tensor gen(const Shape& shape, double seed, double scale, DType dt) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<double>(i) * 0.37 + seed) * scale;
  return ops::to(from_vector(v, shape), dt);
}

/// conv_ref.py's figures, computed once per test binary run.
const std::map<std::string, std::vector<double>>& ref() {
  static const std::map<std::string, std::vector<double>> values = [] {
    namespace fs = std::filesystem;
    const fs::path python = fs::path(LOOM_SOURCE_DIR) / ".venv/bin/python";
    const fs::path script = fs::path(LOOM_SOURCE_DIR) / "tests/reference/conv_ref.py";
    const fs::path out = fs::path(LOOM_BINARY_DIR) / ("conv_ref." + std::to_string(::getpid()) + ".txt");
    std::map<std::string, std::vector<double>> v;
    if (!fs::exists(python)) {
      ADD_FAILURE() << python << " is missing: run scripts/setup.sh (it makes .venv with torch)";
      return v;
    }
    const std::string cmd = "'" + python.string() + "' '" + script.string() + "' > '" + out.string() + "'";
    if (std::system(cmd.c_str()) != 0) {
      ADD_FAILURE() << "could not run " << cmd;
      return v;
    }
    std::ifstream in(out);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string name, tok;
      ls >> name;
      std::vector<double> vals;
      while (ls >> tok) vals.push_back(std::strtod(tok.c_str(), nullptr));
      v[name] = std::move(vals);
    }
    std::error_code ec;
    fs::remove(out, ec);
    return v;
  }();
  return values;
}

/// Expects t to equal figure name within rtol relative to each value, with an absolute floor of rtol times the
/// figure's largest magnitude / 10 (values that cancel to near zero carry the rounding of their terms).
void expect_ref(const Tensor& t, const std::string& name, double rtol) {
  ASSERT_TRUE(t.defined()) << name << ": undefined tensor";
  auto it = ref().find(name);
  ASSERT_NE(it, ref().end()) << "no figure " << name << " in conv_ref.py's output";
  const std::vector<double>& r = it->second;
  const std::vector<double> got = t.to_vector<double>();
  ASSERT_EQ(got.size(), r.size()) << name << ": element count differs (shape " << shape_str(t.sizes()) << ")";
  double maxabs = 0;
  for (double x : r) maxabs = std::max(maxabs, std::abs(x));
  int bad = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (std::abs(got[i] - r[i]) > rtol * std::abs(r[i]) + rtol * maxabs * 0.1 && bad++ < 5)
      ADD_FAILURE() << name << "[" << i << "]: loom " << got[i] << ", PyTorch " << r[i];
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << r.size() << " differ";
}

struct Tol {
  const char* tag;
  DType dt;
  double fwd, grad;
};
const Tol kTols[] = {{"f32", DType::f32, 1e-5, 1e-4}, {"f64", DType::f64, 1e-10, 1e-10}};

/// Backward of sum(y * gen(y.shape, 9, 1)), as conv_ref.py's backward_of.
void backward_of(const Tensor& y) { sum(mul(y, gen(y.sizes(), 9, 1.0, y.dtype()))).backward(); }

struct ConvCase {
  std::string name;
  Shape xs, ws;
  bool bias;
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
};

TEST(ConvReference, Conv2dForwardAndGradients) {
  const std::vector<ConvCase> cases = {
      {"conv_basic", {2, 3, 7, 6}, {4, 3, 3, 3}, true, {1, 1}, {1, 1}, {1, 1}, 1},
      {"conv_groups", {2, 4, 9, 8}, {6, 2, 3, 2}, true, {2, 1}, {1, 0}, {1, 2}, 2},
      {"conv_depthwise", {3, 6, 7, 7}, {6, 1, 3, 3}, false, {2, 2}, {1, 1}, {2, 2}, 6},
      {"conv_1x1", {2, 5, 4, 4}, {3, 5, 1, 1}, true, {1, 1}, {0, 0}, {1, 1}, 1},
      {"conv_stride3_pad2", {1, 2, 6, 6}, {2, 2, 3, 3}, true, {3, 3}, {2, 2}, {1, 1}, 1},
      {"conv_1x1_stride2", {2, 4, 5, 5}, {4, 4, 1, 1}, false, {2, 2}, {0, 0}, {1, 1}, 1},
  };
  for (const Tol& tol : kTols)
    for (const ConvCase& c : cases) {
      SCOPED_TRACE(c.name + " " + tol.tag);
      const std::string p = c.name + "_" + tol.tag + "_";
      Tensor x = gen(c.xs, 1, 2.0, tol.dt).set_requires_grad();
      Tensor w = gen(c.ws, 2, 0.5, tol.dt).set_requires_grad();
      Tensor b = c.bias ? gen({c.ws[0]}, 3, 0.5, tol.dt).set_requires_grad() : Tensor();
      Tensor y = conv2d(x, w, b, {c.stride, c.padding, c.dilation, c.groups});
      backward_of(y);
      expect_ref(y, p + "y", tol.fwd);
      expect_ref(x.grad(), p + "dx", tol.grad);
      expect_ref(w.grad(), p + "dw", tol.grad);
      if (c.bias) expect_ref(b.grad(), p + "db", tol.grad);
    }
}

TEST(ConvReference, Conv2dModuleMatchesFunctional) {
  // The module's options reach the op: conv_groups through nn::Conv2d with the same weights.
  nn::Conv2dOptions o;
  o.stride = {2, 1};
  o.padding = {1, 0};
  o.dilation = {1, 2};
  o.groups = 2;
  nn::Conv2d conv(4, 6, {3, 2}, o);
  {
    NoGradGuard g;
    ops::copy_(conv.weight, gen({6, 2, 3, 2}, 2, 0.5, DType::f32));
    ops::copy_(conv.bias, gen({6}, 3, 0.5, DType::f32));
  }
  Tensor x = gen({2, 4, 9, 8}, 1, 2.0, DType::f32).set_requires_grad();
  Tensor y = conv(x);
  backward_of(y);
  expect_ref(y, "conv_groups_f32_y", 1e-5);
  expect_ref(x.grad(), "conv_groups_f32_dx", 1e-4);
  expect_ref(conv.weight.grad(), "conv_groups_f32_dw", 1e-4);
  expect_ref(conv.bias.grad(), "conv_groups_f32_db", 1e-4);
}

TEST(ConvReference, PoolsForwardAndGradients) {
  struct MaxCase {
    std::string name;
    Shape xs;
    std::array<int64_t, 2> k, s, p, d;
    bool ceil;
  };
  const std::vector<MaxCase> maxes = {
      {"maxpool_k3s2p1", {2, 3, 7, 8}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false},
      {"maxpool_ceil", {2, 2, 5, 5}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, true},
      {"maxpool_dil", {1, 2, 6, 7}, {2, 3}, {1, 2}, {1, 1}, {2, 1}, false},
  };
  struct AvgCase {
    std::string name;
    Shape xs;
    std::array<int64_t, 2> k, s, p;
    bool ceil, count_include_pad;
  };
  const std::vector<AvgCase> avgs = {
      {"avgpool_k3s2p1", {2, 3, 7, 8}, {3, 3}, {2, 2}, {1, 1}, false, true},
      {"avgpool_nopad_count", {2, 3, 7, 8}, {3, 3}, {2, 2}, {1, 1}, false, false},
      {"avgpool_ceil", {2, 2, 5, 5}, {2, 2}, {2, 2}, {0, 0}, true, true},
  };
  for (const Tol& tol : kTols) {
    for (const MaxCase& c : maxes) {
      SCOPED_TRACE(c.name + " " + tol.tag);
      const std::string p = c.name + "_" + tol.tag + "_";
      loom::Pool2dOptions o;
      o.kernel_size = c.k, o.stride = c.s, o.padding = c.p, o.dilation = c.d, o.ceil_mode = c.ceil;
      Tensor x = gen(c.xs, 4, 2.0, tol.dt).set_requires_grad();
      Tensor y = max_pool2d(x, o);
      backward_of(y);
      expect_ref(y, p + "y", tol.fwd);
      expect_ref(ops::max_pool2d(x, o).second, p + "idx", 0);
      expect_ref(x.grad(), p + "dx", tol.grad);
    }
    for (const AvgCase& c : avgs) {
      SCOPED_TRACE(c.name + " " + tol.tag);
      const std::string p = c.name + "_" + tol.tag + "_";
      loom::Pool2dOptions o;
      o.kernel_size = c.k, o.stride = c.s, o.padding = c.p, o.ceil_mode = c.ceil;
      o.count_include_pad = c.count_include_pad;
      Tensor x = gen(c.xs, 5, 2.0, tol.dt).set_requires_grad();
      Tensor y = avg_pool2d(x, o);
      backward_of(y);
      expect_ref(y, p + "y", tol.fwd);
      expect_ref(x.grad(), p + "dx", tol.grad);
    }
    const std::vector<std::tuple<std::string, Shape, std::array<int64_t, 2>>> adaptive = {
        {"adaptive_3x4", {2, 3, 7, 9}, {3, 4}}, {"adaptive_1x1", {2, 3, 5, 4}, {1, 1}}};
    for (const auto& [name, xs, os] : adaptive) {
      SCOPED_TRACE(name + " " + tol.tag);
      Tensor x = gen(xs, 6, 2.0, tol.dt).set_requires_grad();
      Tensor y = adaptive_avg_pool2d(x, os);
      backward_of(y);
      expect_ref(y, name + "_" + tol.tag + "_y", tol.fwd);
      expect_ref(x.grad(), name + "_" + tol.tag + "_dx", tol.grad);
    }
  }
}

TEST(ConvReference, BatchNormTrainAndEval) {
  for (const Tol& tol : kTols)
    for (bool training : {true, false}) {
      const std::string p = std::string(training ? "bn_train_" : "bn_eval_") + tol.tag + "_";
      SCOPED_TRACE(p);
      Tensor x = ops::add(gen({4, 3, 5, 5}, 7, 2.0, tol.dt), 0.5).set_requires_grad();
      Tensor w = ops::add(gen({3}, 8, 0.5, tol.dt), 1.0).set_requires_grad();
      Tensor b = gen({3}, 10, 0.5, tol.dt).set_requires_grad();
      Tensor rm = gen({3}, 11, 0.3, tol.dt), rv = ops::add(gen({3}, 12, 0.3, tol.dt), 1.0);
      Tensor y = batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5);
      backward_of(y);
      expect_ref(y, p + "y", tol.fwd);
      expect_ref(x.grad(), p + "dx", tol.grad);
      expect_ref(w.grad(), p + "dw", tol.grad);
      expect_ref(b.grad(), p + "db", tol.grad);
      expect_ref(rm, p + "running_mean", tol.fwd);
      expect_ref(rv, p + "running_var", tol.fwd);
    }
}

TEST(ConvReference, BatchNorm2dModuleTrainThenEval) {
  nn::BatchNorm2d bn(3);
  {
    NoGradGuard g;
    ops::copy_(bn.weight, ops::add(gen({3}, 8, 0.5, DType::f32), 1.0));
    ops::copy_(bn.bias, gen({3}, 10, 0.5, DType::f32));
    ops::copy_(bn.running_mean, gen({3}, 11, 0.3, DType::f32));
    ops::copy_(bn.running_var, ops::add(gen({3}, 12, 0.3, DType::f32), 1.0));
  }
  Tensor x = ops::add(gen({4, 3, 5, 5}, 7, 2.0, DType::f32), 0.5).set_requires_grad();
  Tensor y = bn(x);
  backward_of(y);
  expect_ref(y, "bn_train_f32_y", 1e-5);
  expect_ref(x.grad(), "bn_train_f32_dx", 1e-4);
  expect_ref(bn.weight.grad(), "bn_train_f32_dw", 1e-4);
  expect_ref(bn.running_mean, "bn_train_f32_running_mean", 1e-5);
  expect_ref(bn.running_var, "bn_train_f32_running_var", 1e-5);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 1);
  // Names as PyTorch's state_dict.
  std::vector<std::string> keys;
  for (const auto& [k, v] : bn.state_dict()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}));
  // Eval normalises with the running statistics and leaves them (and the counter) alone.
  bn.eval();
  const std::vector<double> rm_before = bn.running_mean.to_vector<double>();
  Tensor ye = bn(x);
  EXPECT_EQ(bn.running_mean.to_vector<double>(), rm_before);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 1);
  const std::vector<double> m = bn.running_mean.to_vector<double>(), v = bn.running_var.to_vector<double>();
  const std::vector<double> xv = x.to_vector<double>(), yv = ye.to_vector<double>();
  const std::vector<double> wv = bn.weight.to_vector<double>(), bv = bn.bias.to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) {
    const size_t c = (i / 25) % 3;
    EXPECT_NEAR(yv[i], (xv[i] - m[c]) / std::sqrt(v[c] + 1e-5) * wv[c] + bv[c], 1e-5) << i;
  }
}

}  // namespace
}  // namespace loom
