// The fused ops linear_gelu, add_layer_norm and add_rms_norm: on CPU they are the
// unfused ops by construction, so forward outputs and every gradient must match
// those of the composed ops bit for bit (also under autocast), and their gradients
// pass gradcheck in f64.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace loom {
namespace {

using In = std::vector<Tensor>;
using autograd::gradcheck;

Tensor rand_leaf(const Shape& s, uint64_t seed, DType dt = DType::f32, double lo = -1.0, double hi = 1.0) {
  Generator g(seed);
  Tensor t = ops::add(ops::mul(ops::rand(s, g, dt), hi - lo), lo);
  return t.set_requires_grad();
}

/// Exact bit equality of two tensors of one dtype and shape (the raw element bytes, so
/// -0 and +0 differ).
void expect_same_bits(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  Tensor ac = ops::contiguous(a), bc = ops::contiguous(b);
  EXPECT_EQ(std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()), 0) << what << " differs in its bits";
}

/// Fresh copies of leaves (same values, requires_grad) so two graphs get separate grads.
std::vector<Tensor> copies(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.defined() ? ops::clone(t).set_requires_grad() : Tensor());
  return out;
}

void check_linear_gelu(bool bias, bool autocast) {
  Tensor x = rand_leaf({2, 3, 8}, 1, DType::f32, -2.0, 2.0), w = rand_leaf({6, 8}, 2);
  Tensor b = bias ? rand_leaf({6}, 3) : Tensor();
  Generator g(4);
  Tensor gy = ops::rand({2, 3, 6}, g, DType::f32);
  std::vector<Tensor> f = copies({x, w, b}), u = copies({x, w, b});
  Tensor yf, yu;
  {
    AutocastGuard ag(DType::bf16, autocast);
    yf = linear_gelu(f[0], f[1], f[2]);
    yu = gelu(linear(u[0], u[1], u[2]), GeluApprox::kTanh);
  }
  expect_same_bits(yf, yu, "linear_gelu output");
  sum(mul(yf, gy)).backward();
  sum(mul(yu, gy)).backward();
  expect_same_bits(f[0].grad(), u[0].grad(), "dx");
  expect_same_bits(f[1].grad(), u[1].grad(), "dw");
  if (bias) expect_same_bits(f[2].grad(), u[2].grad(), "db");
}

TEST(FusedOps, LinearGeluMatchesComposedOpsBitForBit) {
  check_linear_gelu(true, false);
  check_linear_gelu(false, false);
  check_linear_gelu(true, true);
}

/// A pre-norm block's use of both outputs: out = sum + f(norm(sum)).
void check_add_norm(bool rms, bool bias, bool autocast, DType rdt) {
  Tensor x = rand_leaf({2, 3, 16}, 10, DType::f32, -2.0, 2.0), r = rand_leaf({2, 3, 16}, 11, rdt, -2.0, 2.0);
  Tensor w = rand_leaf({16}, 12, DType::f32, 0.5, 1.5), b = bias ? rand_leaf({16}, 13) : Tensor();
  Generator g(14);
  Tensor c = ops::rand({2, 3, 16}, g, DType::f32), gy = ops::rand({2, 3, 16}, g, DType::f32);
  std::vector<Tensor> f = copies({x, r, w, b}), u = copies({x, r, w, b});
  Tensor sf, nf, su, nu;
  {
    AutocastGuard ag(DType::bf16, autocast);
    std::tie(sf, nf) = rms ? add_rms_norm(f[0], f[1], f[2]) : add_layer_norm(f[0], f[1], f[2], f[3]);
    su = add(u[0], u[1]);
    nu = rms ? rms_norm(su, u[2]) : layer_norm(su, u[2], u[3]);
  }
  expect_same_bits(sf, su, "sum");
  expect_same_bits(nf, nu, "norm");
  sum(mul(add(sf, mul(nf, c)), gy)).backward();
  sum(mul(add(su, mul(nu, c)), gy)).backward();
  expect_same_bits(f[0].grad(), u[0].grad(), "dx");
  expect_same_bits(f[1].grad(), u[1].grad(), "dresidual");
  expect_same_bits(f[2].grad(), u[2].grad(), "dw");
  if (bias) expect_same_bits(f[3].grad(), u[3].grad(), "db");
}

TEST(FusedOps, AddLayerNormMatchesComposedOpsBitForBit) {
  check_add_norm(false, true, false, DType::f32);
  check_add_norm(false, false, false, DType::f32);
  check_add_norm(false, true, true, DType::f32);
  check_add_norm(false, true, true, DType::bf16);  // f32 + bf16 promotes to f32
  check_add_norm(false, true, false, DType::bf16);
}

TEST(FusedOps, AddRmsNormMatchesComposedOpsBitForBit) {
  check_add_norm(true, false, false, DType::f32);
  check_add_norm(true, false, true, DType::f32);
  check_add_norm(true, false, true, DType::bf16);
}

TEST(FusedOps, AddNormUnderAutocastWithLowPrecisionSumMatchesComposedOps) {
  Tensor x = rand_leaf({3, 8}, 20, DType::bf16), r = rand_leaf({3, 8}, 21, DType::bf16);
  Tensor w = rand_leaf({8}, 22, DType::f32, 0.5, 1.5), b = rand_leaf({8}, 23);
  std::vector<Tensor> f = copies({x, r, w, b}), u = copies({x, r, w, b});
  Tensor sf, nf, su, nu;
  {
    AutocastGuard ag;
    std::tie(sf, nf) = add_layer_norm(f[0], f[1], f[2], f[3]);
    su = add(u[0], u[1]);
    nu = layer_norm(su, u[2], u[3]);
  }
  EXPECT_EQ(sf.dtype(), DType::bf16);
  EXPECT_EQ(nf.dtype(), DType::f32);
  expect_same_bits(sf, su, "sum");
  expect_same_bits(nf, nu, "norm");
  sum(add(to(sf, DType::f32), nf)).backward();
  sum(add(to(su, DType::f32), nu)).backward();
  for (int i = 0; i < 4; ++i) expect_same_bits(f[i].grad(), u[i].grad(), "grad");
}

TEST(FusedOps, AddNormBroadcastsTheResidual) {
  Tensor x = rand_leaf({2, 3, 4}, 30), r = rand_leaf({3, 4}, 31), w = rand_leaf({4}, 32, DType::f32, 0.5, 1.5);
  std::vector<Tensor> f = copies({x, r, w}), u = copies({x, r, w});
  auto [sf, nf] = add_rms_norm(f[0], f[1], f[2]);
  Tensor su = add(u[0], u[1]), nu = rms_norm(su, u[2]);
  expect_same_bits(nf, nu, "norm");
  sum(add(sf, nf)).backward();
  sum(add(su, nu)).backward();
  for (int i = 0; i < 3; ++i) expect_same_bits(f[i].grad(), u[i].grad(), "grad");
}

TEST(FusedOps, ErrorsNameTheFusedOp) {
  Tensor x = ops::zeros({2, 4}), w = ops::zeros({3, 5});
  try {
    ops::linear_gelu(x, w, Tensor());
    FAIL() << "expected a throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("linear_gelu"), std::string::npos) << e.what();
  }
  try {
    ops::add_layer_norm(ops::zeros({2, 4}), ops::zeros({2, 4}), ops::zeros({5}), Tensor(), 1e-5);
    FAIL() << "expected a throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("add_layer_norm"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- gradcheck (f64)

Tensor leaf64(const Shape& s, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  return rand_leaf(s, seed, DType::f64, lo, hi);
}

TEST(FusedOps, GradcheckLinearGelu) {
  EXPECT_TRUE(gradcheck([](const In& in) { return linear_gelu(in[0], in[1], in[2]); },
                        {leaf64({2, 3, 4}, 40, -2.0, 2.0), leaf64({5, 4}, 41), leaf64({5}, 42)}));
  EXPECT_TRUE(
      gradcheck([](const In& in) { return linear_gelu(in[0], in[1]); }, {leaf64({3, 4}, 43), leaf64({2, 4}, 44)}));
}

TEST(FusedOps, GradcheckAddLayerNormAndAddRmsNorm) {
  Tensor x = leaf64({2, 3, 5}, 50, -2.0, 2.0), r = leaf64({2, 3, 5}, 51, -2.0, 2.0);
  Tensor w = leaf64({5}, 52, 0.5, 1.5), b = leaf64({5}, 53);
  EXPECT_TRUE(gradcheck(
      [](const In& in) {
        auto [s, y] = add_layer_norm(in[0], in[1], in[2], in[3]);
        return stack({s, y}, 0);
      },
      {x, r, w, b}));
  EXPECT_TRUE(gradcheck(
      [](const In& in) {
        auto [s, y] = add_rms_norm(in[0], in[1], in[2]);
        return stack({s, y}, 0);
      },
      {x, r, w}));
  // Only the normalised output used: the sum's gradient is zero-filled.
  EXPECT_TRUE(gradcheck([](const In& in) { return add_layer_norm(in[0], in[1], in[2], Tensor()).second; }, {x, r, w}));
}

}  // namespace
}  // namespace loom
