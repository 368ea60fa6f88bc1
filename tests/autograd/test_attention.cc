// The fused attention against a plain composition of recorded ops.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "autograd/functions.h"

namespace loom {
namespace {

/// Attention as the textbook composition: kv heads repeated for grouped-query,
/// softmax(q k^T / sqrt(D) masked) v.
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  auto repeat = [&](const Tensor& t) {
    return reshape(expand(unsqueeze(t, 2), {B, Hkv, H / Hkv, S, D}), {B, H, S, D});
  };
  Tensor scores = mul(matmul(q, transpose(repeat(k), -1, -2)), 1.0 / std::sqrt(static_cast<double>(D)));
  if (causal) scores = masked_fill(scores, ops::causal_mask(T), -std::numeric_limits<double>::infinity());
  return matmul(softmax(scores, -1), repeat(v));
}

void expect_close(const Tensor& a, const Tensor& b, double tol) {
  ASSERT_EQ(a.sizes(), b.sizes());
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], tol) << "element " << i;
}

Tensor randn_leaf(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return ops::randn(s, g).set_requires_grad();
}

TEST(Attention, FusedForwardMatchesCompositionInF32) {
  for (int64_t hkv : {2, 4}) {
    Tensor q = randn_leaf({2, 4, 7, 8}, 1), k = randn_leaf({2, hkv, 7, 8}, 2), v = randn_leaf({2, hkv, 7, 8}, 3);
    for (bool causal : {true, false}) {
      Tensor fused = scaled_dot_product_attention(q, k, v, causal);
      EXPECT_EQ(fused.sizes(), (Shape{2, 4, 7, 8}));
      EXPECT_EQ(fused.dtype(), DType::f32);
      expect_close(fused, reference_attention(q, k, v, causal), 1e-5);
    }
  }
}

TEST(Attention, FusedBackwardMatchesCompositionInF32) {
  Tensor q = randn_leaf({1, 4, 6, 4}, 4), k = randn_leaf({1, 2, 6, 4}, 5), v = randn_leaf({1, 2, 6, 4}, 6);
  Generator g(9);
  Tensor w = ops::randn({1, 4, 6, 4}, g);
  auto fused = autograd::grad({sum(mul(scaled_dot_product_attention(q, k, v), w))}, {q, k, v});
  auto ref = autograd::grad({sum(mul(reference_attention(q, k, v, true), w))}, {q, k, v});
  for (int i = 0; i < 3; ++i) expect_close(fused[i], ref[i], 1e-5);
}

TEST(Attention, GroupedQueryBackwardMatchesCompositionWithFewAndManyKvHeads) {
  // The backward accumulates a kv head's query heads in place when there are enough (batch, kv head) pairs for the
  // threads (B * Hkv >= 2 threads), and through per-head slots otherwise: both against the composition.
  for (const Shape& kv_shape : {Shape{1, 1, 70, 8}, Shape{8, 2, 70, 8}}) {
    const int64_t B = kv_shape[0], Hkv = kv_shape[1];
    Tensor q = randn_leaf({B, 3 * Hkv, 70, 8}, 21), k = randn_leaf(kv_shape, 22), v = randn_leaf(kv_shape, 23);
    Generator g(24);
    Tensor w = ops::randn({B, 3 * Hkv, 70, 8}, g);
    auto fused = autograd::grad({sum(mul(scaled_dot_product_attention(q, k, v), w))}, {q, k, v});
    auto ref = autograd::grad({sum(mul(reference_attention(q, k, v, true), w))}, {q, k, v});
    for (int i = 0; i < 3; ++i) expect_close(fused[i], ref[i], 2e-5);
  }
}

TEST(Attention, LongSequenceSpanningSeveralRowBlocksMatchesComposition) {
  // T = 150 crosses the fused kernel's 64-row blocks, where causal blocks skip masked keys.
  Tensor q = randn_leaf({1, 2, 150, 8}, 14), k = randn_leaf({1, 1, 150, 8}, 15), v = randn_leaf({1, 1, 150, 8}, 16);
  Generator g(17);
  Tensor w = ops::randn({1, 2, 150, 8}, g);
  for (bool causal : {true, false}) {
    Tensor fused = scaled_dot_product_attention(q, k, v, causal);
    Tensor ref = reference_attention(q, k, v, causal);
    expect_close(fused, ref, 1e-5);
    auto gf = autograd::grad({sum(mul(fused, w))}, {q, k, v});
    auto gr = autograd::grad({sum(mul(ref, w))}, {q, k, v});
    for (int i = 0; i < 3; ++i) expect_close(gf[i], gr[i], 2e-5);
  }
}

TEST(Attention, Bf16InputsGiveBf16OutputCloseToF32) {
  Tensor q = randn_leaf({1, 2, 5, 4}, 18), k = randn_leaf({1, 2, 5, 4}, 19), v = randn_leaf({1, 2, 5, 4}, 20);
  Tensor out = scaled_dot_product_attention(to(q, DType::bf16), to(k, DType::bf16), to(v, DType::bf16));
  EXPECT_EQ(out.dtype(), DType::bf16);
  expect_close(to(out, DType::f32), scaled_dot_product_attention(q, k, v), 3e-2);
  sum(out).backward();
  ASSERT_TRUE(q.grad().defined());
  EXPECT_EQ(q.grad().dtype(), DType::f32);
}

TEST(Attention, RecordsOneNode) {
  Tensor q = randn_leaf({1, 2, 3, 4}, 7), k = randn_leaf({1, 2, 3, 4}, 8), v = randn_leaf({1, 2, 3, 4}, 9);
  Tensor out = scaled_dot_product_attention(q, k, v);
  auto fn = autograd::grad_fn(out);
  ASSERT_NE(fn, nullptr);
  EXPECT_EQ(fn->name(), "ScaledDotProductAttentionBackward");
  ASSERT_EQ(fn->next_edges.size(), 3u);
  for (const auto& e : fn->next_edges) EXPECT_EQ(e.fn->name(), "AccumulateGrad");
}

TEST(Attention, RejectsHeadsThatDoNotDivide) {
  Tensor q = ops::zeros({1, 3, 2, 4}), k = ops::zeros({1, 2, 2, 4});
  EXPECT_THROW(scaled_dot_product_attention(q, k, k), InvalidArgument);
}

TEST(Attention, DropoutInEvalModeIsDeterministicAndInTrainingChangesOutput) {
  Tensor q = randn_leaf({1, 2, 5, 4}, 10), k = randn_leaf({1, 2, 5, 4}, 11), v = randn_leaf({1, 2, 5, 4}, 12);
  Tensor eval = scaled_dot_product_attention(q, k, v, true, 0.5, false);
  expect_close(eval, scaled_dot_product_attention(q, k, v), 0.0);
  Generator g(3);
  Tensor train = scaled_dot_product_attention(q, k, v, true, 0.5, true, g);
  std::vector<float> a = eval.to_vector<float>(), b = train.to_vector<float>();
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += std::abs(a[i] - b[i]);
  EXPECT_GT(diff, 1e-3);
}

}  // namespace
}  // namespace loom
