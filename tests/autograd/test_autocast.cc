// AutocastGuard: which ops run in bf16 and which in f32, that gradients reach
// f32 parameters in f32 and equal the gradients of the same graph cast by hand,
// and the per-region cache of parameter casts.
#include <gtest/gtest.h>

#include "autograd/autocast.h"
#include "autograd/functions.h"

namespace loom {
namespace {

Tensor leaf(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return ops::randn(s, g).set_requires_grad();
}

void expect_bitwise_equal(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  std::vector<float> x = ops::to(a, DType::f32).to_vector<float>(), y = ops::to(b, DType::f32).to_vector<float>();
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], y[i]) << what << " element " << i;
}

TEST(Autocast, MatrixProductsRunInBf16AndNormsSoftmaxLossInF32) {
  Tensor x = leaf({4, 8}, 1), w = leaf({6, 8}, 2), b = leaf({6}, 3);
  AutocastGuard guard;
  EXPECT_TRUE(autocast_enabled());
  EXPECT_EQ(autocast_dtype(), DType::bf16);
  Tensor y = linear(x, w, b);
  EXPECT_EQ(y.dtype(), DType::bf16);
  EXPECT_EQ(matmul(x, transpose(w, 0, 1)).dtype(), DType::bf16);
  EXPECT_EQ(softmax(y, -1).dtype(), DType::f32);
  EXPECT_EQ(log_softmax(y, -1).dtype(), DType::f32);
  Tensor g = ones({6}), beta = zeros({6});
  EXPECT_EQ(layer_norm(y, g, beta).dtype(), DType::f32);
  EXPECT_EQ(rms_norm(y, g).dtype(), DType::f32);
  Tensor target = from_vector<int64_t>({0, 1, 2, 3}, {4});
  EXPECT_EQ(cross_entropy(y, target).dtype(), DType::f32);
  // Elementwise ops promote as always: bf16 + f32 is f32.
  EXPECT_EQ(add(y, ops::zeros({4, 6})).dtype(), DType::f32);
  EXPECT_EQ(gelu(y).dtype(), DType::bf16);
  Tensor q = leaf({1, 2, 3, 4}, 6), k = leaf({1, 2, 3, 4}, 7), v = leaf({1, 2, 3, 4}, 8);
  EXPECT_EQ(scaled_dot_product_attention(q, k, v).dtype(), DType::bf16);
}

TEST(Autocast, OffOutsideTheGuardAndWhenDisabledInside) {
  Tensor x = leaf({3, 5}, 4), w = leaf({2, 5}, 5);
  {
    AutocastGuard on;
    {
      AutocastGuard off(DType::bf16, false);
      EXPECT_FALSE(autocast_enabled());
      EXPECT_EQ(linear(x, w).dtype(), DType::f32);
    }
    EXPECT_TRUE(autocast_enabled());
    EXPECT_EQ(linear(x, w).dtype(), DType::bf16);
    AutocastGuard half(DType::f16);
    EXPECT_EQ(linear(x, w).dtype(), DType::f16);
  }
  EXPECT_FALSE(autocast_enabled());
  EXPECT_EQ(linear(x, w).dtype(), DType::f32);
  EXPECT_THROW(AutocastGuard(DType::f64), InvalidArgument);
}

TEST(Autocast, GradientsReachF32ParametersAndEqualTheHandCastGraph) {
  // The same small network twice: under autocast, and with the casts written out.
  auto net = [](const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& ln_w,
                const Tensor& target, bool by_hand) {
    auto lo = [&](const Tensor& t) { return by_hand ? to(t, DType::bf16) : t; };
    auto hi = [&](const Tensor& t) { return by_hand ? to(t, DType::f32) : t; };
    Tensor h = linear(lo(x), lo(w1), lo(b1));                      // bf16
    h = layer_norm(hi(h), hi(ln_w), Tensor(), 1e-5);               // f32
    Tensor logits = matmul(lo(gelu(h)), lo(transpose(w2, 0, 1)));  // bf16
    return cross_entropy(hi(logits), target);                      // f32
  };
  Tensor target = from_vector<int64_t>({1, 0, 4, 2, 3}, {5});
  std::vector<Tensor> auto_grads, hand_grads;
  Tensor auto_loss, hand_loss;
  for (bool by_hand : {false, true}) {
    Tensor x = leaf({5, 8}, 11), w1 = leaf({16, 8}, 12), b1 = leaf({16}, 13), w2 = leaf({6, 16}, 14),
           ln_w = leaf({16}, 15);
    Tensor loss;
    if (by_hand) {
      loss = net(x, w1, b1, w2, ln_w, target, true);
      hand_loss = loss;
    } else {
      AutocastGuard guard;
      loss = net(x, w1, b1, w2, ln_w, target, false);
      auto_loss = loss;
    }
    loss.backward();
    for (const Tensor& p : {x, w1, b1, w2, ln_w}) {
      ASSERT_TRUE(p.grad().defined());
      EXPECT_EQ(p.grad().dtype(), DType::f32) << "a parameter's gradient keeps the parameter's dtype";
      (by_hand ? hand_grads : auto_grads).push_back(p.grad());
    }
  }
  expect_bitwise_equal(auto_loss, hand_loss, "loss");
  for (size_t i = 0; i < auto_grads.size(); ++i)
    expect_bitwise_equal(auto_grads[i], hand_grads[i], "gradient " + std::to_string(i));
  // And bf16 really was used: the f32 graph gives a different loss.
  Tensor x = leaf({5, 8}, 11), w1 = leaf({16, 8}, 12), b1 = leaf({16}, 13), w2 = leaf({6, 16}, 14),
         ln_w = leaf({16}, 15);
  EXPECT_NE(net(x, w1, b1, w2, ln_w, target, false).item(), auto_loss.item());
}

TEST(Autocast, AWeightUsedTwiceGetsBothGradientsAndAnUpdatedWeightIsRecast) {
  Tensor w = leaf({4, 4}, 21), x = leaf({2, 4}, 22);
  Tensor y;
  {
    AutocastGuard guard;
    y = sum(add(linear(x, w), linear(x, w)));  // the cached cast serves both uses
    y.backward();
    Tensor once = leaf({4, 4}, 21), x1 = leaf({2, 4}, 22);
    Tensor z = sum(linear(x1, once));
    z.backward();
    std::vector<float> g2 = w.grad().to_vector<float>(), g1 = once.grad().to_vector<float>();
    for (size_t i = 0; i < g1.size(); ++i) ASSERT_FLOAT_EQ(g2[i], 2 * g1[i]) << "element " << i;

    // An in-place update inside the region (its version changes) is seen by the next use.
    const float before = linear(x, w).to_vector<float>()[0];
    {
      NoGradGuard no_grad;
      ops::mul_(w, 0.0);  // bumps w's version, as an optimizer step does
    }
    EXPECT_NE(before, 0.0f);
    EXPECT_EQ(linear(x, w).to_vector<float>()[0], 0.0f);
  }
}

}  // namespace
}  // namespace loom
