// Reductions against PyTorch: sum/mean/var/max/argmax/sum_to/norm over dims,
// keepdim, negative dims, non-contiguous inputs, integer and 16-bit dtypes,
// and the accuracy of long f32 sums.
#include <gtest/gtest.h>

#include "tensor/ops.h"
#include "tests/tensor/torch_ref.h"

namespace loom {
namespace {

using testing::expect_error_mentions;
using testing::expect_matches_ref;
using testing::gen;

constexpr double kF32 = 1e-5;

TEST(Reduce, SumOverDimsMatchesPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({3, 4, 5}, 1);
  Tensor all = ops::sum(x);
  EXPECT_EQ(all.dim(), 0);
  expect_matches_ref(all, "sum_all", kF32, 1e-5);
  expect_matches_ref(ops::sum(x, {1}), "sum_d1", kF32, 1e-5);
  Tensor keep = ops::sum(x, {0, 2}, true);
  EXPECT_EQ(keep.sizes(), Shape({1, 4, 1}));
  expect_matches_ref(keep, "sum_d02_keep", kF32, 1e-5);
  Tensor neg = ops::sum(x, {-1});
  EXPECT_EQ(neg.sizes(), Shape({3, 4}));
  expect_matches_ref(neg, "sum_neg", kF32, 1e-5);
}

TEST(Reduce, NonContiguousInputsMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor xt = ops::transpose(gen({4, 6}, 2), 0, 1);
  ASSERT_FALSE(xt.is_contiguous());
  expect_matches_ref(ops::sum(xt, {1}), "sum_t_d1", kF32, 1e-5);
  expect_matches_ref(ops::sum(xt, {0}), "sum_t_d0", kF32, 1e-5);
  Tensor sl = ops::slice(ops::slice(gen({5, 8}, 3), 0, 1, 4), 1, 0, 8, 3);  // [1:4, ::3]
  ASSERT_EQ(sl.sizes(), Shape({3, 3}));
  expect_matches_ref(ops::sum(sl, {0}), "sum_sliced", kF32, 1e-5);
}

TEST(Reduce, MeanAndVarMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({3, 4, 5}, 1);
  expect_matches_ref(ops::mean(x, {1}), "mean_d1", kF32, 1e-6);
  expect_matches_ref(ops::mean(x), "mean_all", kF32, 1e-6);
  expect_matches_ref(ops::var(x), "var_all", kF32, 1e-6);
  expect_matches_ref(ops::var(x, {1}, 0), "var_d1_c0", kF32, 1e-6);
  Tensor vk = ops::var(x, {0, -1}, 1, true);
  EXPECT_EQ(vk.sizes(), Shape({1, 4, 1}));
  expect_matches_ref(vk, "var_d02_keep", kF32, 1e-6);
}

TEST(Reduce, MaxAndArgmaxMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({3, 4, 5}, 1);
  expect_matches_ref(ops::max(x), "max_all", 0, 0);
  auto [values, indices] = ops::max(x, 1);
  EXPECT_EQ(indices.dtype(), DType::i64);
  EXPECT_EQ(values.sizes(), Shape({3, 5}));
  expect_matches_ref(values, "max_d1_values", 0, 0);
  expect_matches_ref(indices, "max_d1_indices", 0, 0);
  Tensor am = ops::argmax(x, -1, true);
  EXPECT_EQ(am.sizes(), Shape({3, 4, 1}));
  expect_matches_ref(am, "argmax_neg_keep", 0, 0);
}

TEST(Reduce, MaxPropagatesNaNAndRejectsEmpty) {
  Tensor x = from_vector<float>({1.f, NAN, 3.f, 2.f}, {2, 2});
  EXPECT_TRUE(std::isnan(ops::max(x).item()));
  auto [v, i] = ops::max(x, 1);
  EXPECT_TRUE(std::isnan(v.to_vector<float>()[0]));
  EXPECT_EQ(i.to_vector<int64_t>(), std::vector<int64_t>({1, 0}));
  expect_error_mentions([] { ops::max(ops::zeros({0, 3})); }, {"max", "[0, 3]"});
  expect_error_mentions([] { ops::max(ops::zeros({2, 0}), 1); }, {"max", "[2, 0]"});
}

TEST(Reduce, IntegerSumsAccumulateInInt64) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor xi = ops::to(ops::mul(gen({3, 4}, 4), 50.0), DType::i32);
  Tensor s = ops::sum(xi, {0});
  EXPECT_EQ(s.dtype(), DType::i64);
  expect_matches_ref(s, "sum_i32_d0", 0, 0);
  expect_matches_ref(ops::sum(xi), "sum_i32_all", 0, 0);
  Tensor mv = ops::max(xi, 1).first;
  EXPECT_EQ(mv.dtype(), DType::i32);
  expect_matches_ref(mv, "max_i32_d1_values", 0, 0);
  // Values past 2^31 in total must not wrap.
  Tensor big = ops::full({4}, 2e9, DType::i64);
  EXPECT_EQ(ops::sum(big).item<int64_t>(), 8000000000LL);
  expect_error_mentions([&] { ops::mean(xi); }, {"mean", "int32"});
}

TEST(Reduce, SixteenBitAndDoubleSumsMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor xb = gen({6, 40}, 5, 2.0, DType::bf16);
  Tensor sb = ops::sum(xb, {1});
  EXPECT_EQ(sb.dtype(), DType::bf16);
  expect_matches_ref(sb, "sum_bf16_d1", 1e-2, 2e-2);
  Tensor sd = ops::sum(gen({7, 3}, 6, 2.0, DType::f64), {0});
  EXPECT_EQ(sd.dtype(), DType::f64);
  expect_matches_ref(sd, "sum_f64_d0", 1e-14, 1e-14);
}

TEST(Reduce, MillionElementFloatSumIsAccurate) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor big = ops::add(gen({1000000}, 7, 1.0), 1.1);
  // The f64 sum of the f32 values; a naive f32 accumulation is off by ~1e-4 relative.
  expect_matches_ref(ops::sum(big), "sum_big", 2e-7, 0);
  expect_matches_ref(ops::mean(big), "mean_big", 2e-7, 0);
  Tensor m = ops::add(gen({1000, 1000}, 8, 1.0), 0.5);
  expect_matches_ref(ops::sum(m, {0}), "sum_big_d0", 2e-7, 1e-6);
}

TEST(Reduce, LeadingDimSumOfATallMatrixMatchesDouble) {
  // (B*T, C) -> (C), the bias-gradient shape, split over rows across threads.
  Tensor x = gen({4096, 24}, 9);
  const auto v = x.to_vector<float>();
  std::vector<double> want(24, 0.0);
  for (size_t i = 0; i < v.size(); ++i) want[i % 24] += v[i];
  const auto got = ops::sum(x, {0}).to_vector<float>();
  for (size_t j = 0; j < 24; ++j) EXPECT_NEAR(got[j], want[j], 1e-4 + 1e-6 * std::abs(want[j])) << j;
  const auto got3 = ops::sum_to(ops::view(x, {2, 2048, 24}), {24}).to_vector<float>();
  for (size_t j = 0; j < 24; ++j) EXPECT_NEAR(got3[j], want[j], 1e-4 + 1e-6 * std::abs(want[j])) << j;
}

TEST(Reduce, SumToInvertsBroadcasting) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({3, 4, 5}, 1);
  Tensor a = ops::sum_to(x, {4, 1});
  EXPECT_EQ(a.sizes(), Shape({4, 1}));
  expect_matches_ref(a, "sum_to_3_1", kF32, 1e-5);
  Tensor b = ops::sum_to(x, {1, 4, 5});
  EXPECT_EQ(b.sizes(), Shape({1, 4, 5}));
  expect_matches_ref(b, "sum_to_1_4_5", kF32, 1e-5);
  // Summing an expanded tensor back gives value * count.
  Tensor e = ops::expand(ops::full({1, 3}, 2.0), {4, 3});
  EXPECT_EQ(ops::sum_to(e, {3}).to_vector<float>(), std::vector<float>({8.f, 8.f, 8.f}));
  EXPECT_EQ(ops::sum_to(x, {3, 4, 5}).sizes(), Shape({3, 4, 5}));
  expect_error_mentions([&] { ops::sum_to(x, {3, 5}); }, {"sum_to", "[3, 4, 5]", "[3, 5]"});
}

TEST(Reduce, NormMatchesPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor n = ops::norm(gen({3, 4, 5}, 1));
  EXPECT_EQ(n.dim(), 0);
  EXPECT_EQ(n.dtype(), DType::f32);
  expect_matches_ref(n, "norm_all", 1e-6, 0);
  EXPECT_FLOAT_EQ(ops::norm(from_vector<double>({3, 4}, {2})).item<float>(), 5.f);
}

TEST(Reduce, BadDimsAreRejected) {
  Tensor x = ops::zeros({2, 3});
  expect_error_mentions([&] { ops::sum(x, {2}); }, {"sum", "dim 2"});
  expect_error_mentions([&] { ops::sum(x, {1, -1}); }, {"sum", "more than once"});
  expect_error_mentions([&] { ops::var(ops::zeros({2}, DType::i64)); }, {"var", "int64"});
}

TEST(Reduce, EmptyReductionsFollowPyTorch) {
  Tensor e = ops::zeros({0, 3});
  Tensor s = ops::sum(e, {0});
  EXPECT_EQ(s.to_vector<float>(), std::vector<float>({0.f, 0.f, 0.f}));
  EXPECT_TRUE(std::isnan(ops::mean(e).item()));
  EXPECT_TRUE(std::isnan(ops::var(ops::ones({1})).item()));  // 0 / 0 with correction 1
}

TEST(Reduce, CudaTensorsAreUnsupportedInACpuBuild) {
  if (cuda_is_available()) GTEST_SKIP() << "a CUDA backend is built";
  Tensor c = testing::fake_cuda_tensor({4, 4});
  testing::expect_unsupported([&] { ops::sum(c); }, "sum");
  testing::expect_unsupported([&] { ops::max(c, 0); }, "max");
  testing::expect_unsupported([&] { ops::var(c); }, "var");
  testing::expect_unsupported([&] { ops::norm(c); }, "norm");
}

}  // namespace
}  // namespace loom
