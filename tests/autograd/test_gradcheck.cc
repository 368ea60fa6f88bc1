// Every differentiable function in autograd/functions.h against central
// finite differences in f64 (autograd::gradcheck).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "autograd/functions.h"

namespace loom {
namespace {

using In = std::vector<Tensor>;
using autograd::gradcheck;

/// An f64 leaf with uniform values in [lo, hi).
Tensor leaf(const Shape& s, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator g(seed);
  Tensor t = ops::add(ops::mul(ops::rand(s, g, DType::f64), hi - lo), lo);
  return t.set_requires_grad();
}

/// An f64 leaf whose values are at least `gap` away from zero (for abs/relu/sign kinks).
Tensor leaf_away_from_zero(const Shape& s, uint64_t seed) {
  Tensor t = leaf(s, seed, 0.2, 1.0);
  std::vector<double> v = t.to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i)
    if (i % 2) v[i] = -v[i];
  return from_vector<double>(v, s).set_requires_grad();
}

#define CHECK_GRAD(f, ...) EXPECT_TRUE(gradcheck(f, {__VA_ARGS__}))

// ---------------------------------------------------------------- views

TEST(Gradcheck, ViewAndReshape) {
  CHECK_GRAD([](const In& x) { return mul(view(x[0], {3, 4}), view(x[0], {3, 4})); }, leaf({2, 6}, 1));
  CHECK_GRAD([](const In& x) { return reshape(transpose(x[0], 0, 1), {-1}); }, leaf({2, 3}, 2));
}

TEST(Gradcheck, PermuteAndTranspose) {
  CHECK_GRAD([](const In& x) { return permute(x[0], {2, 0, 1}); }, leaf({2, 3, 4}, 3));
  CHECK_GRAD([](const In& x) { return transpose(x[0], -1, 0); }, leaf({2, 3, 4}, 4));
}

TEST(Gradcheck, NarrowSliceSelect) {
  CHECK_GRAD([](const In& x) { return narrow(x[0], 1, 1, 2); }, leaf({3, 4}, 5));
  CHECK_GRAD([](const In& x) { return slice(x[0], 0, 1, 6, 2); }, leaf({7, 2}, 6));
  CHECK_GRAD([](const In& x) { return select(x[0], 1, -1); }, leaf({3, 4, 2}, 7));
}

TEST(Gradcheck, ExpandUnsqueezeSqueezeFlatten) {
  CHECK_GRAD([](const In& x) { return expand(x[0], {2, 3, 4}); }, leaf({3, 1}, 8));
  CHECK_GRAD([](const In& x) { return unsqueeze(x[0], 1); }, leaf({3, 2}, 9));
  CHECK_GRAD([](const In& x) { return squeeze(x[0], 1); }, leaf({3, 1, 2}, 10));
  CHECK_GRAD([](const In& x) { return flatten(x[0], 1); }, leaf({2, 3, 2}, 11));
}

TEST(Gradcheck, ContiguousAndTo) {
  CHECK_GRAD([](const In& x) { return contiguous(transpose(x[0], 0, 1)); }, leaf({3, 4}, 12));
  CHECK_GRAD([](const In& x) { return to(x[0], DType::f64); }, leaf({3}, 13));
  CHECK_GRAD([](const In& x) { return to(x[0], kCPU); }, leaf({3}, 14));
}

// ---------------------------------------------------------------- binary, broadcasting

TEST(Gradcheck, BroadcastingBinaryOps) {
  Tensor a = leaf({2, 3, 4}, 20), b = leaf({3, 1}, 21);
  CHECK_GRAD([](const In& x) { return add(x[0], x[1]); }, a, b);
  CHECK_GRAD([](const In& x) { return sub(x[1], x[0]); }, a, b);
  CHECK_GRAD([](const In& x) { return mul(x[0], x[1]); }, a, b);
  CHECK_GRAD([](const In& x) { return div(x[0], x[1]); }, a, leaf({3, 1}, 22, 0.5, 2.0));
  CHECK_GRAD([](const In& x) { return maximum(x[0], x[1]); }, a, b);
  CHECK_GRAD([](const In& x) { return minimum(x[1], x[0]); }, a, b);
  CHECK_GRAD([](const In& x) { return pow(x[0], x[1]); }, leaf({2, 3}, 23, 0.5, 2.0), leaf({3}, 24));
}

TEST(Gradcheck, OperatorsAndScalars) {
  Tensor a = leaf({3, 2}, 30, 0.5, 2.0), b = leaf({2}, 31);
  CHECK_GRAD([](const In& x) { return x[0] + x[1] - x[0] * x[1] / (x[0] + 3.0); }, a, b);
  CHECK_GRAD([](const In& x) { return -x[0] + 2.0 * x[0] - 1.5 + (1.0 - x[0]) * 0.5; }, a);
  CHECK_GRAD([](const In& x) { return 3.0 / x[0] + x[0] / 4.0 + (2.0 + x[0]); }, a);
  CHECK_GRAD([](const In& x) { return add(mul(x[0], -2.0), 7.0); }, a);
  CHECK_GRAD([](const In& x) { return pow(x[0], 2.5); }, a);
  CHECK_GRAD([](const In& x) { return pow(x[0], 0.0); }, a);
}

// ---------------------------------------------------------------- unary

TEST(Gradcheck, UnaryOps) {
  Tensor any = leaf({3, 4}, 40, -2.0, 2.0);
  Tensor pos = leaf({3, 4}, 41, 0.3, 3.0);
  Tensor split_sign = leaf_away_from_zero({3, 4}, 42);
  CHECK_GRAD([](const In& x) { return neg(x[0]); }, any);
  CHECK_GRAD([](const In& x) { return abs(x[0]); }, split_sign);
  CHECK_GRAD([](const In& x) { return exp(x[0]); }, any);
  CHECK_GRAD([](const In& x) { return log(x[0]); }, pos);
  CHECK_GRAD([](const In& x) { return sqrt(x[0]); }, pos);
  CHECK_GRAD([](const In& x) { return rsqrt(x[0]); }, pos);
  CHECK_GRAD([](const In& x) { return tanh(x[0]); }, any);
  CHECK_GRAD([](const In& x) { return sigmoid(x[0]); }, any);
  CHECK_GRAD([](const In& x) { return relu(x[0]); }, split_sign);
  CHECK_GRAD([](const In& x) { return sin(x[0]); }, any);
  CHECK_GRAD([](const In& x) { return cos(x[0]); }, any);
  CHECK_GRAD([](const In& x) { return gelu(x[0]); }, any);
  // Unqualified on purpose: argument-dependent lookup must find only loom::gelu.
  CHECK_GRAD([](const In& x) { return gelu(x[0], GeluApprox::kTanh); }, any);
  CHECK_GRAD([](const In& x) { return silu(x[0]); }, any);
}

TEST(Gradcheck, ClampPassesGradientOnlyInsideRange) {
  // values in +-[0.2, 1.0], clamp at +-0.5 with no value near the bounds
  std::vector<double> v{0.3, -0.3, 0.9, -0.9, 0.1, 0.7};
  Tensor x = from_vector<double>(v, {6}).set_requires_grad();
  CHECK_GRAD([](const In& in) { return clamp(in[0], -0.5, 0.5); }, x);
  sum(clamp(x, -0.5, 0.5)).backward();
  std::vector<double> g = x.grad().to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(g[i], std::abs(v[i]) < 0.5 ? 1.0 : 0.0) << i;
}

// ---------------------------------------------------------------- selection

TEST(Gradcheck, WhereAndMaskedFill) {
  Tensor cond = from_vector<uint8_t>({1, 0, 0, 1, 1, 0}, {2, 3});
  CHECK_GRAD([&](const In& x) { return where(cond, x[0], x[1]); }, leaf({2, 3}, 50), leaf({3}, 51));
  Tensor mask = from_vector<uint8_t>({0, 1, 1}, {1, 3});
  CHECK_GRAD([&](const In& x) { return masked_fill(x[0], mask, -2.0); }, leaf({2, 3}, 52));
}

TEST(Gradcheck, CatStackSplit) {
  CHECK_GRAD([](const In& x) { return cat({x[0], x[1], x[0]}, 1); }, leaf({2, 3}, 60), leaf({2, 1}, 61));
  CHECK_GRAD([](const In& x) { return stack({x[0], x[1]}, 1); }, leaf({2, 3}, 62), leaf({2, 3}, 63));
  CHECK_GRAD(
      [](const In& x) {
        auto p = split(x[0], 2, 1);  // sizes 2, 2, 1
        return add(mul(p[0], p[1]), p[2]);
      },
      leaf({3, 5}, 64));
  CHECK_GRAD(
      [](const In& x) {
        auto p = split_with_sizes(x[0], {1, 3}, 0);
        return mul(p[1], 2.0);  // p[0] unused: its part of the gradient is zero
      },
      leaf({4, 2}, 65));
}

TEST(Gradcheck, IndexSelectWithRepeatedIndices) {
  Tensor idx = from_vector<int64_t>({2, 0, 2, 1}, {4});
  CHECK_GRAD([&](const In& x) { return index_select(x[0], 1, idx); }, leaf({2, 3, 2}, 66));
  CHECK_GRAD([&](const In& x) { return index_select(x[0], 0, idx); }, leaf({3, 2}, 67));
}

// ---------------------------------------------------------------- reductions

TEST(Gradcheck, SumMeanVar) {
  Tensor x = leaf({2, 3, 4}, 70);
  CHECK_GRAD([](const In& in) { return sum(in[0]); }, x);
  CHECK_GRAD([](const In& in) { return sum(in[0], {0, 2}); }, x);
  CHECK_GRAD([](const In& in) { return sum(in[0], {-1}, true); }, x);
  CHECK_GRAD([](const In& in) { return mean(in[0]); }, x);
  CHECK_GRAD([](const In& in) { return mean(in[0], {1}, true); }, x);
  CHECK_GRAD([](const In& in) { return var(in[0]); }, x);
  CHECK_GRAD([](const In& in) { return var(in[0], {2}, 1, false); }, x);
  CHECK_GRAD([](const In& in) { return var(in[0], {0, 1}, 0, true); }, x);
}

TEST(Gradcheck, MaxAllAndAlongDim) {
  Tensor x = leaf({3, 4}, 71);
  CHECK_GRAD([](const In& in) { return max(in[0]); }, x);
  CHECK_GRAD([](const In& in) { return max(in[0], 1).first; }, x);
  CHECK_GRAD([](const In& in) { return max(in[0], 0, true).first; }, x);
}

// ---------------------------------------------------------------- linear algebra

TEST(Gradcheck, MatmulAllRankCombinations) {
  auto mm = [](const In& x) { return matmul(x[0], x[1]); };
  CHECK_GRAD(mm, leaf({4}, 80), leaf({4}, 81));                 // 1-D . 1-D
  CHECK_GRAD(mm, leaf({4}, 82), leaf({4, 3}, 83));              // 1-D . 2-D
  CHECK_GRAD(mm, leaf({3, 4}, 84), leaf({4}, 85));              // 2-D . 1-D
  CHECK_GRAD(mm, leaf({3, 4}, 86), leaf({4, 2}, 87));           // 2-D . 2-D
  CHECK_GRAD(mm, leaf({2, 3, 4}, 88), leaf({4, 2}, 89));        // batched . 2-D
  CHECK_GRAD(mm, leaf({3, 4}, 90), leaf({2, 4, 2}, 91));        // 2-D . batched
  CHECK_GRAD(mm, leaf({2, 3, 4}, 92), leaf({2, 4, 2}, 93));     // batched . batched
  CHECK_GRAD(mm, leaf({2, 1, 3, 4}, 94), leaf({3, 4, 2}, 95));  // broadcast batch dims
  CHECK_GRAD(mm, leaf({4}, 96), leaf({2, 4, 3}, 97));           // 1-D . batched
  CHECK_GRAD(mm, leaf({2, 3, 4}, 98), leaf({4}, 99));           // batched . 1-D
  CHECK_GRAD([](const In& x) { return matmul(transpose(x[0], 0, 1), x[1]); }, leaf({4, 3}, 100), leaf({4, 2}, 101));
}

TEST(Gradcheck, LinearWithAndWithoutBias) {
  CHECK_GRAD([](const In& x) { return linear(x[0], x[1], x[2]); }, leaf({2, 3, 4}, 110), leaf({5, 4}, 111),
             leaf({5}, 112));
  CHECK_GRAD([](const In& x) { return linear(x[0], x[1]); }, leaf({3, 4}, 113), leaf({2, 4}, 114));
  CHECK_GRAD([](const In& x) { return linear(transpose(x[0], 0, 1), x[1]); }, leaf({4, 3}, 115), leaf({2, 4}, 116));
}

// ---------------------------------------------------------------- nn kernels

TEST(Gradcheck, SoftmaxAndLogSoftmaxOnNonLastDim) {
  Tensor x = leaf({3, 4, 2}, 120, -2.0, 2.0);
  CHECK_GRAD([](const In& in) { return softmax(in[0], 1); }, x);
  CHECK_GRAD([](const In& in) { return log_softmax(in[0], 0); }, x);
  CHECK_GRAD([](const In& in) { return softmax(in[0], -1); }, x);
}

TEST(Gradcheck, LayerNormAndRmsNormWithWeights) {
  Tensor x = leaf({2, 3, 5}, 130, -2.0, 2.0);
  Tensor w = leaf({5}, 131, 0.5, 1.5), b = leaf({5}, 132);
  CHECK_GRAD([](const In& in) { return layer_norm(in[0], in[1], in[2]); }, x, w, b);
  CHECK_GRAD([](const In& in) { return layer_norm(in[0], in[1], Tensor()); }, x, w);
  CHECK_GRAD([](const In& in) { return rms_norm(in[0], in[1]); }, x, w);
}

TEST(Gradcheck, EmbeddingWithRespectToWeight) {
  Tensor idx = from_vector<int64_t>({1, 3, 1, 0, 3, 3}, {2, 3});
  CHECK_GRAD([&](const In& in) { return embedding(in[0], idx); }, leaf({5, 3}, 140));
}

TEST(Gradcheck, CrossEntropyWithIgnoredRow) {
  Tensor target = from_vector<int64_t>({2, -100, 0, 3}, {4});
  CHECK_GRAD([&](const In& in) { return cross_entropy(in[0], target); }, leaf({4, 5}, 150, -2.0, 2.0));
  Tensor t2 = from_vector<int64_t>({1, 7, 7}, {3});
  CHECK_GRAD([&](const In& in) { return cross_entropy(in[0], t2, 7); }, leaf({3, 4}, 151));
}

TEST(Gradcheck, DropoutWithFixedMask) {
  Tensor x = leaf({4, 5}, 160);
  // Each call reseeds, so every evaluation uses the same mask.
  CHECK_GRAD(
      [](const In& in) {
        Generator g(7);
        return dropout(in[0], 0.4, true, g);
      },
      x);
  Tensor y = dropout(x, 0.4, false);
  EXPECT_TRUE(y.is_same(x));
}

TEST(Gradcheck, RopeWithRespectToInput) {
  const int64_t T = 3, D = 4;
  std::vector<double> c, s;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      double ang = t * std::pow(10000.0, -2.0 * i / D);
      c.push_back(std::cos(ang));
      s.push_back(std::sin(ang));
    }
  Tensor cs = from_vector<double>(c, {T, D / 2}), sn = from_vector<double>(s, {T, D / 2});
  CHECK_GRAD([&](const In& in) { return rope(in[0], cs, sn); }, leaf({2, 2, T, D}, 170));
}

TEST(Gradcheck, ScaledDotProductAttentionGroupedQuery) {
  // H = 4 query heads over Hkv = 2 kv heads, T = 5, D = 3.
  Tensor q = leaf({2, 4, 5, 3}, 180), k = leaf({2, 2, 5, 3}, 181), v = leaf({2, 2, 5, 3}, 182);
  CHECK_GRAD([](const In& in) { return scaled_dot_product_attention(in[0], in[1], in[2]); }, q, k, v);
}

TEST(Gradcheck, ScaledDotProductAttentionEqualHeads) {
  Tensor q = leaf({1, 3, 5, 3}, 183), k = leaf({1, 3, 5, 3}, 184), v = leaf({1, 3, 5, 3}, 185);
  CHECK_GRAD([](const In& in) { return scaled_dot_product_attention(in[0], in[1], in[2]); }, q, k, v);
  CHECK_GRAD([](const In& in) { return scaled_dot_product_attention(in[0], in[1], in[2], false); }, q, k, v);
}

TEST(Gradcheck, ScaledDotProductAttentionNonContiguousInputs) {
  // q as the usual (B, T, H, D) -> (B, H, T, D) transpose view.
  Tensor q = leaf({1, 4, 2, 3}, 186), k = leaf({1, 1, 4, 3}, 187), v = leaf({1, 1, 4, 3}, 188);
  CHECK_GRAD([](const In& in) { return scaled_dot_product_attention(transpose(in[0], 1, 2), in[1], in[2]); }, q, k, v);
}

TEST(Gradcheck, ScaledDotProductAttentionWithDropout) {
  Tensor q = leaf({1, 2, 4, 3}, 189), k = leaf({1, 1, 4, 3}, 190), v = leaf({1, 1, 4, 3}, 191);
  CHECK_GRAD(
      [](const In& in) {
        Generator g(11);
        return scaled_dot_product_attention(in[0], in[1], in[2], true, 0.3, true, g);
      },
      q, k, v);
}

}  // namespace
}  // namespace loom
