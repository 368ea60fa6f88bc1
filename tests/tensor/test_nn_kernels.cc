// Neural-network kernels against PyTorch: softmax / log_softmax and backward,
// layer and RMS norm with gradients, embedding, fused cross-entropy with
// ignore_index, dropout reproducibility and keep rate, rotary embedding.
#include <gtest/gtest.h>

#include "tensor/ops.h"
#include "tests/tensor/torch_ref.h"

namespace loom {
namespace {

using testing::expect_error_mentions;
using testing::expect_matches_ref;
using testing::gen;

constexpr double kTol = 1e-5;

TEST(Softmax, AnyDimMatchesPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor s = gen({4, 10}, 1, 3.0);
  expect_matches_ref(ops::softmax(s, -1), "softmax_last", kTol, 1e-7);
  expect_matches_ref(ops::softmax(s, 0), "softmax_d0", kTol, 1e-7);
  expect_matches_ref(ops::log_softmax(s, 1), "log_softmax_last", kTol, 1e-6);
  Tensor s3 = gen({3, 5, 4}, 2, 3.0);
  expect_matches_ref(ops::softmax(s3, -2), "softmax_dm2", kTol, 1e-7);
  expect_matches_ref(ops::log_softmax(s3, 1), "log_softmax_d1", kTol, 1e-6);
  // A transposed input gives the same as its contiguous copy.
  Tensor st = ops::transpose(gen({10, 4}, 1, 3.0), 0, 1);
  EXPECT_EQ(ops::softmax(st, -1).to_vector<float>(), ops::softmax(ops::contiguous(st), -1).to_vector<float>());
}

TEST(Softmax, MaskedAndLargeInputsAreStable) {
  LOOM_REQUIRE_TORCH_REF();
  std::vector<uint8_t> above(18);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 6; ++j) above[i * 6 + j] = j > i;  // torch.triu(ones(3, 6), 1)
  Tensor sm = ops::masked_fill(gen({3, 6}, 3, 3.0), from_vector(above, {3, 6}), -INFINITY);
  Tensor y = ops::softmax(sm, -1);
  expect_matches_ref(y, "softmax_masked", kTol, 0);  // masked entries exactly 0
  expect_matches_ref(ops::softmax(gen({2, 300}, 6, 40.0), -1), "softmax_large", 1e-4, 1e-7);
}

TEST(Softmax, SixteenBitAndDoubleMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor b = ops::softmax(gen({4, 32}, 4, 3.0, DType::bf16), -1);
  EXPECT_EQ(b.dtype(), DType::bf16);
  expect_matches_ref(b, "softmax_bf16", 1e-2, 1e-3);
  Tensor d = ops::softmax(gen({3, 9}, 5, 2.0, DType::f64), -1);
  EXPECT_EQ(d.dtype(), DType::f64);
  expect_matches_ref(d, "softmax_f64", 1e-14, 1e-15);
}

TEST(Softmax, BackwardMatchesAutograd) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({4, 10}, 7, 3.0), g = gen({4, 10}, 8);
  expect_matches_ref(ops::softmax_backward(g, ops::softmax(x, -1), -1), "softmax_bwd", 1e-4, 1e-6);
  expect_matches_ref(ops::log_softmax_backward(g, ops::log_softmax(x, -1), -1), "log_softmax_bwd", 1e-4, 1e-6);
  expect_matches_ref(ops::softmax_backward(g, ops::softmax(x, 0), 0), "softmax_bwd_d0", 1e-4, 1e-6);
  Tensor x3 = gen({3, 5, 4}, 7, 3.0), g3 = gen({3, 5, 4}, 8);
  expect_matches_ref(ops::log_softmax_backward(g3, ops::log_softmax(x3, 1), 1), "log_softmax_bwd_d1", 1e-4, 1e-6);
  expect_error_mentions([&] { ops::softmax_backward(g, ops::softmax(x3, 0), 0); }, {"softmax_backward", "[4, 10]"});
}

TEST(LayerNorm, ForwardAndBackwardMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({6, 16}, 9), w = ops::add(gen({16}, 10, 1.0), 1.0), b = gen({16}, 11, 0.5);
  auto r = ops::layer_norm(x, w, b, 1e-5);
  EXPECT_EQ(r.mean.dtype(), DType::f32);
  EXPECT_EQ(r.rstd.sizes(), Shape({6}));
  expect_matches_ref(r.y, "ln_y", 1e-5, 1e-5);
  expect_matches_ref(r.mean, "ln_mean", 1e-5, 1e-6);
  expect_matches_ref(r.rstd, "ln_rstd", 1e-5, 1e-6);
  auto g = ops::layer_norm_backward(gen({6, 16}, 12), x, w, r.mean, r.rstd, true);
  expect_matches_ref(g.dx, "ln_dx", 1e-4, 1e-5);
  expect_matches_ref(g.dw, "ln_dw", 1e-4, 1e-5);
  expect_matches_ref(g.db, "ln_db", 1e-4, 1e-5);
}

TEST(LayerNorm, WithoutAffineAndInBf16MatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({2, 3, 16}, 13);
  auto r = ops::layer_norm(x, Tensor(), Tensor(), 1e-5);
  expect_matches_ref(r.y, "ln_noaffine_y", 1e-5, 1e-5);
  auto g = ops::layer_norm_backward(gen({2, 3, 16}, 14), x, Tensor(), r.mean, r.rstd, false);
  EXPECT_FALSE(g.dw.defined());
  EXPECT_FALSE(g.db.defined());
  expect_matches_ref(g.dx, "ln_noaffine_dx", 1e-4, 1e-5);
  Tensor w = ops::add(gen({16}, 10, 1.0), 1.0), b = gen({16}, 11, 0.5);
  auto rb = ops::layer_norm(gen({4, 16}, 15, 2.0, DType::bf16), ops::to(w, DType::bf16), ops::to(b, DType::bf16), 1e-5);
  EXPECT_EQ(rb.y.dtype(), DType::bf16);
  EXPECT_EQ(rb.rstd.dtype(), DType::f32);
  expect_matches_ref(rb.y, "ln_bf16_y", 2e-2, 3e-2);
}

TEST(LayerNorm, DoubleInputsKeepDoubleStatistics) {
  Tensor x = gen({3, 8}, 1, 2.0, DType::f64);
  auto r = ops::layer_norm(x, Tensor(), Tensor(), 0.0);
  EXPECT_EQ(r.rstd.dtype(), DType::f64);
  // Each normalised row has mean 0 and (biased) variance 1 to f64 precision.
  Tensor m = ops::mean(r.y, {-1});
  Tensor v = ops::var(r.y, {-1}, 0);
  for (double e : m.to_vector<double>()) EXPECT_NEAR(e, 0.0, 1e-14);
  for (double e : v.to_vector<double>()) EXPECT_NEAR(e, 1.0, 1e-12);
}

TEST(RmsNorm, ForwardAndBackwardMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor x = gen({5, 12}, 16), w = ops::add(gen({12}, 17, 1.0), 1.0);
  auto r = ops::rms_norm(x, w, 1e-6);
  EXPECT_FALSE(r.mean.defined());
  expect_matches_ref(r.y, "rms_y", 1e-5, 1e-5);
  expect_matches_ref(r.rstd, "rms_rstd", 1e-5, 1e-6);
  auto g = ops::rms_norm_backward(gen({5, 12}, 18), x, w, r.rstd);
  expect_matches_ref(g.dx, "rms_dx", 1e-4, 1e-5);
  expect_matches_ref(g.dw, "rms_dw", 1e-4, 1e-5);
}

TEST(Embedding, LookupAndAccumulatedGradientMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor w = gen({10, 6}, 19);
  Tensor idx = from_vector<int64_t>({1, 3, 3, 9, 0, 1}, {2, 3});
  Tensor y = ops::embedding(w, idx);
  EXPECT_EQ(y.sizes(), Shape({2, 3, 6}));
  expect_matches_ref(y, "emb_y", 0, 0);
  expect_matches_ref(ops::embedding(w, ops::to(idx, DType::i32)), "emb_y", 0, 0);
  Tensor dw = ops::embedding_backward(gen({2, 3, 6}, 20), idx, 10);
  EXPECT_EQ(dw.sizes(), Shape({10, 6}));
  expect_matches_ref(dw, "emb_dw", 1e-6, 1e-6);
}

TEST(Embedding, OutOfRangeIndexNamesIndexPositionAndBound) {
  Tensor w = ops::zeros({10, 4});
  Tensor idx = from_vector<int64_t>({1, 2, 3, 12}, {2, 2});
  expect_error_mentions([&] { ops::embedding(w, idx); }, {"embedding", "index 12", "[1, 1]", "10"});
  Tensor neg = from_vector<int32_t>({-1}, {1});
  expect_error_mentions([&] { ops::embedding(w, neg); }, {"embedding", "index -1", "10"});
  expect_error_mentions(
      [&] {
        ops::embedding_backward(ops::zeros({2, 2, 4}), idx, 10);
      },
      {"embedding_backward", "index 12"});
}

TEST(CrossEntropy, LossLseAndGradientMatchPyTorchWithIgnoreIndex) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor lg = gen({8, 11}, 21, 4.0);
  Tensor tg = from_vector<int64_t>({3, -100, 0, 10, 5, -100, 7, 7}, {8});
  auto r = ops::cross_entropy(lg, tg);
  EXPECT_EQ(r.count, 6);
  EXPECT_EQ(r.loss.dim(), 0);
  expect_matches_ref(r.loss, "ce_loss", 1e-6, 1e-6);
  // lse is only needed (and only checked) for counted rows.
  const auto lse = r.lse.to_vector<double>();
  const auto& ref = testing::TorchRef::get()["ce_lse"];
  for (int i : {0, 2, 3, 4, 6, 7}) EXPECT_NEAR(lse[i], ref[i], 1e-5) << "row " << i;
  Tensor d = ops::cross_entropy_backward(ops::scalar_tensor(1.5), lg, tg, r.lse, r.count);
  expect_matches_ref(d, "ce_dlogits", 1e-5, 1e-7);
}

TEST(CrossEntropy, LargeLogitsAndDoubleMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor lg = gen({4, 1000}, 23, 30.0);
  Tensor tg = from_vector<int64_t>({0, 999, 500, 17}, {4});
  auto r = ops::cross_entropy(lg, tg);
  expect_matches_ref(r.loss, "ce_big_loss", 1e-6, 1e-5);
  expect_matches_ref(ops::cross_entropy_backward(ops::scalar_tensor(1.0), lg, tg, r.lse, r.count), "ce_big_dlogits",
                     1e-4, 1e-8);
  Tensor ld = gen({5, 7}, 24, 3.0, DType::f64);
  Tensor td = from_vector<int64_t>({1, 2, 3, -1, 6}, {5});
  auto rd = ops::cross_entropy(ld, td, -1);
  EXPECT_EQ(rd.loss.dtype(), DType::f64);
  expect_matches_ref(rd.loss, "ce_f64_loss", 1e-13, 1e-14);
  expect_matches_ref(ops::cross_entropy_backward(ops::scalar_tensor(1.0, DType::f64), ld, td, rd.lse, rd.count, -1),
                     "ce_f64_dlogits", 1e-12, 1e-14);
}

TEST(CrossEntropy, AllRowsIgnoredGivesNaNLikePyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor tg = from_vector<int64_t>({-100, -100, -100}, {3});
  auto r = ops::cross_entropy(gen({3, 4}, 22), tg);
  EXPECT_EQ(r.count, 0);
  expect_matches_ref(r.loss, "ce_all_ignored", 0, 0);  // nan
  Tensor d = ops::cross_entropy_backward(ops::scalar_tensor(1.0), gen({3, 4}, 22), tg, r.lse, r.count);
  EXPECT_EQ(d.to_vector<float>(), std::vector<float>(12, 0.f));
}

TEST(CrossEntropy, OutOfRangeTargetIsNamed) {
  Tensor lg = ops::zeros({3, 5});
  expect_error_mentions(
      [&] {
        ops::cross_entropy(lg, from_vector<int64_t>({0, 5, 1}, {3}));
      },
      {"cross_entropy", "target 5", "row 1", "5 classes"});
  expect_error_mentions(
      [&] {
        ops::cross_entropy(lg, from_vector<int64_t>({0, 1}, {2}));
      },
      {"cross_entropy", "[2]", "[3, 5]"});
}

TEST(Dropout, IsReproducibleFromTheSeed) {
  Tensor x = ops::ones({1000});
  Generator g1(123), g2(123), g3(124);
  auto a = ops::dropout(x, 0.3, g1);
  auto b = ops::dropout(x, 0.3, g2);
  auto c = ops::dropout(x, 0.3, g3);
  EXPECT_EQ(a.second.to_vector<uint8_t>(), b.second.to_vector<uint8_t>());
  EXPECT_NE(a.second.to_vector<uint8_t>(), c.second.to_vector<uint8_t>());
  // The generator advanced: the next draw differs from the first.
  auto a2 = ops::dropout(x, 0.3, g1);
  EXPECT_NE(a.second.to_vector<uint8_t>(), a2.second.to_vector<uint8_t>());
}

TEST(Dropout, KeepRateAndScaleAreRight) {
  const int64_t n = 200000;
  const double p = 0.25;
  Tensor x = gen({n}, 1);
  Generator g(7);
  auto [y, mask] = ops::dropout(x, p, g);
  EXPECT_EQ(mask.dtype(), DType::u8);
  const auto m = mask.to_vector<uint8_t>();
  const auto xv = x.to_vector<float>();
  const auto yv = y.to_vector<float>();
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    kept += m[i];
    EXPECT_FLOAT_EQ(yv[i], m[i] ? xv[i] / static_cast<float>(1 - p) : 0.f) << i;
    if (::testing::Test::HasFailure()) break;
  }
  const double rate = static_cast<double>(kept) / n;
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(rate, 1 - p, 5 * sigma);
}

TEST(Dropout, ZeroKeepsEverythingAndOneIsRejected) {
  Tensor x = gen({100}, 2);
  auto [y, m] = ops::dropout(x, 0.0);
  EXPECT_EQ(y.to_vector<float>(), x.to_vector<float>());
  expect_error_mentions([&] { ops::dropout(x, 1.0); }, {"dropout", "[0, 1)"});
  expect_error_mentions([&] { ops::dropout(x, -0.1); }, {"dropout", "[0, 1)"});
}

TEST(Rope, MatchesHuggingFaceRotateHalf) {
  LOOM_REQUIRE_TORCH_REF();
  const auto& ref = testing::TorchRef::get();
  Tensor cos = from_vector(std::vector<float>(ref["rope_cos"].begin(), ref["rope_cos"].end()), {5, 4});
  Tensor sin = from_vector(std::vector<float>(ref["rope_sin"].begin(), ref["rope_sin"].end()), {5, 4});
  Tensor x = gen({2, 3, 5, 8}, 25);
  Tensor y = ops::rope(x, cos, sin);
  EXPECT_EQ(y.sizes(), x.sizes());
  expect_matches_ref(y, "rope_y", 1e-5, 1e-6);
  // The inverse rotation undoes it.
  const auto back = ops::rope(y, cos, sin, true).to_vector<float>();
  const auto xv = x.to_vector<float>();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(back[i], xv[i], 1e-5);
  expect_error_mentions([&] { ops::rope(x, ops::zeros({5, 3}), sin); }, {"rope", "[5, 3]", "[2, 3, 5, 8]"});
}

TEST(NnKernels, CudaTensorsAreUnsupportedInACpuBuild) {
  if (cuda_is_available()) GTEST_SKIP() << "a CUDA backend is built";
  Tensor c = testing::fake_cuda_tensor({4, 4});
  Tensor ci = testing::fake_cuda_tensor({4}, DType::i64);
  testing::expect_unsupported([&] { ops::softmax(c, -1); }, "softmax");
  testing::expect_unsupported([&] { ops::layer_norm(c, Tensor(), Tensor(), 1e-5); }, "layer_norm");
  testing::expect_unsupported([&] { ops::rms_norm(c, Tensor(), 1e-5); }, "rms_norm");
  testing::expect_unsupported([&] { ops::embedding(c, ci); }, "embedding");
  testing::expect_unsupported([&] { ops::cross_entropy(c, ci); }, "cross_entropy");
  testing::expect_unsupported([&] { ops::dropout(c, 0.1); }, "dropout");
  expect_error_mentions([&] { ops::embedding(ops::zeros({4, 4}), ci); }, {"embedding", "cuda:0"});
}

}  // namespace
}  // namespace loom
