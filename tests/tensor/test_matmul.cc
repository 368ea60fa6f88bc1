// matmul / linear / gemm_ against PyTorch: every rank combination, broadcast
// batches, transposed and sliced operands (transposes must not be copied),
// each dtype, and errors that name both shapes.
#include <gtest/gtest.h>

#include "tensor/ops.h"
#include "tests/tensor/torch_ref.h"

namespace loom {
namespace {

using testing::expect_error_mentions;
using testing::expect_matches_ref;
using testing::gen;

constexpr double kTol = 1e-5;

Tensor t2(const Tensor& x) { return ops::transpose(x, -2, -1); }

TEST(Matmul, TwoDimensionalMatchesPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor c = ops::matmul(gen({5, 7}, 1), gen({7, 3}, 2));
  EXPECT_EQ(c.sizes(), Shape({5, 3}));
  expect_matches_ref(c, "mm_2d", kTol, kTol);
}

TEST(Matmul, TransposedOperandsMatchContiguousWithoutCopying) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor a = t2(gen({7, 5}, 3));
  Tensor b = t2(gen({3, 7}, 4));
  ASSERT_FALSE(a.is_contiguous());
  ASSERT_FALSE(b.is_contiguous());
  const int64_t before = memory_stats().num_allocs;
  Tensor c = ops::matmul(a, b);
  EXPECT_EQ(memory_stats().num_allocs - before, 1) << "only the output should be allocated";
  expect_matches_ref(c, "mm_tt", kTol, kTol);
  // Batched transposes go to BLAS as they lie too.
  Tensor ba = ops::transpose(gen({3, 5, 4}, 18), 1, 2);
  Tensor bb = ops::transpose(gen({3, 6, 5}, 19), 1, 2);
  const int64_t before2 = memory_stats().num_allocs;
  Tensor bc = ops::matmul(ba, bb);
  EXPECT_EQ(memory_stats().num_allocs - before2, 1);
  EXPECT_EQ(bc.sizes(), Shape({3, 4, 6}));
  expect_matches_ref(bc, "mm_batch_t", kTol, kTol);
}

TEST(Matmul, VectorOperandsArePromotedAndSqueezed) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor dot = ops::matmul(gen({7}, 1), gen({7}, 2));
  EXPECT_EQ(dot.dim(), 0);
  expect_matches_ref(dot, "mm_vv", kTol, kTol);
  Tensor vm = ops::matmul(gen({7}, 1), gen({7, 3}, 2));
  EXPECT_EQ(vm.sizes(), Shape({3}));
  expect_matches_ref(vm, "mm_vm", kTol, kTol);
  Tensor mv = ops::matmul(gen({5, 7}, 1), gen({7}, 2));
  EXPECT_EQ(mv.sizes(), Shape({5}));
  expect_matches_ref(mv, "mm_mv", kTol, kTol);
  Tensor bv = ops::matmul(gen({2, 3, 4}, 7), gen({4}, 8));
  EXPECT_EQ(bv.sizes(), Shape({2, 3}));
  expect_matches_ref(bv, "mm_b_vec", kTol, kTol);
  Tensor vb = ops::matmul(gen({4}, 9), gen({2, 4, 3}, 10));
  EXPECT_EQ(vb.sizes(), Shape({2, 3}));
  expect_matches_ref(vb, "mm_vec_b", kTol, kTol);
}

TEST(Matmul, BatchDimsBroadcast) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor c = ops::matmul(gen({2, 1, 4, 5}, 5), gen({3, 5, 6}, 6));
  EXPECT_EQ(c.sizes(), Shape({2, 3, 4, 6}));
  expect_matches_ref(c, "mm_bcast", kTol, kTol);
  Tensor f = ops::matmul(gen({2, 3, 4, 5}, 11), gen({5, 6}, 12));
  EXPECT_EQ(f.sizes(), Shape({2, 3, 4, 6}));
  expect_matches_ref(f, "mm_fold", kTol, kTol);
  expect_matches_ref(ops::matmul(gen({2, 3, 4, 5}, 11), t2(gen({6, 5}, 13))), "mm_fold_t", kTol, kTol);
}

TEST(Matmul, SlicedAndStridedOperandsMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor a = ops::narrow(gen({6, 10}, 14), 1, 2, 7);     // row stride 10
  Tensor b = ops::slice(gen({14, 3}, 15), 0, 0, 14, 2);  // every other row
  expect_matches_ref(ops::matmul(a, b), "mm_sliced", kTol, kTol);
  Tensor s = ops::slice(gen({5, 14}, 16), 1, 0, 14, 2);  // column stride 2: copied once
  expect_matches_ref(ops::matmul(s, gen({7, 3}, 17)), "mm_strided", kTol, kTol);
}

TEST(Matmul, EveryDtypeMatchesPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor d = ops::matmul(gen({4, 6}, 20, 2.0, DType::f64), gen({6, 2}, 21, 2.0, DType::f64));
  EXPECT_EQ(d.dtype(), DType::f64);
  expect_matches_ref(d, "mm_f64", 1e-13, 1e-13);
  Tensor bf = ops::matmul(gen({4, 16}, 22, 2.0, DType::bf16), gen({16, 3}, 23, 2.0, DType::bf16));
  EXPECT_EQ(bf.dtype(), DType::bf16);
  expect_matches_ref(bf, "mm_bf16", 1e-2, 2e-2);
  Tensor h = ops::matmul(gen({4, 16}, 22, 2.0, DType::f16), gen({16, 3}, 23, 2.0, DType::f16));
  EXPECT_EQ(h.dtype(), DType::f16);
  expect_matches_ref(h, "mm_f16", 2e-3, 2e-3);
  Tensor ia = ops::to(ops::mul(gen({3, 4}, 24), 10.0), DType::i64);
  Tensor ib = ops::to(ops::mul(gen({4, 2}, 25), 10.0), DType::i64);
  Tensor i = ops::matmul(ia, ib);
  EXPECT_EQ(i.dtype(), DType::i64);
  expect_matches_ref(i, "mm_i64", 0, 0);
}

TEST(Matmul, ShapeErrorsNameBothShapes) {
  expect_error_mentions(
      [] {
        ops::matmul(ops::zeros({2, 3}), ops::zeros({4, 5}));
      },
      {"matmul: inner dimensions differ: [2, 3] @ [4, 5]"});
  expect_error_mentions(
      [] {
        ops::matmul(ops::zeros({2, 2, 3}), ops::zeros({3, 3, 1}));
      },
      {"matmul", "[2, 2, 3]", "[3, 3, 1]"});
  expect_error_mentions([] { ops::matmul(ops::zeros({}), ops::zeros({3})); }, {"matmul", "[]", "[3]"});
  expect_error_mentions(
      [] {
        ops::matmul(ops::zeros({2, 3}), ops::zeros({3, 2}, DType::f64));
      },
      {"matmul", "float32", "float64"});
  expect_error_mentions(
      [] {
        ops::linear(ops::zeros({2, 3}), ops::zeros({4, 5}), Tensor());
      },
      {"linear", "[2, 3]", "[4, 5]"});
  expect_error_mentions(
      [] {
        ops::linear(ops::zeros({2, 3}), ops::zeros({4, 3}), ops::zeros({5}));
      },
      {"linear", "[5]", "[4, 3]"});
  Tensor out = ops::zeros({2, 2});
  expect_error_mentions(
      [&] {
        ops::gemm_(out, ops::zeros({2, 3}), ops::zeros({3, 4}));
      },
      {"gemm_", "[2, 2]", "[2, 3]", "[3, 4]"});
}

TEST(Matmul, ManySmallBatchesMatchPerBatchProducts) {
  // 96 products of 8x16x8 run spread over threads; each must equal its own 2-D product.
  Tensor a = gen({2, 48, 8, 16}, 1), b = ops::transpose(gen({48, 8, 16}, 2), 1, 2);
  Tensor c = ops::matmul(a, b);
  ASSERT_EQ(c.sizes(), Shape({2, 48, 8, 8}));
  for (int64_t i : {0, 1}) {
    for (int64_t j : {0, 17, 47}) {
      Tensor want = ops::matmul(ops::select(ops::select(a, 0, i), 0, j), ops::select(b, 0, j));
      Tensor got = ops::select(ops::select(c, 0, i), 0, j);
      EXPECT_EQ(got.to_vector<float>(), want.to_vector<float>()) << i << ", " << j;
    }
  }
}

TEST(Matmul, EmptyInnerDimensionGivesZeros) {
  Tensor c = ops::matmul(ops::ones({3, 0}), ops::ones({0, 2}));
  EXPECT_EQ(c.sizes(), Shape({3, 2}));
  EXPECT_EQ(c.to_vector<float>(), std::vector<float>(6, 0.f));
}

TEST(Linear, MatchesPyTorchForEveryLayout) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor y = ops::linear(gen({2, 3, 8}, 26), gen({5, 8}, 27), gen({5}, 28));
  EXPECT_EQ(y.sizes(), Shape({2, 3, 5}));
  expect_matches_ref(y, "linear_bias", kTol, kTol);
  expect_matches_ref(ops::linear(gen({2, 3, 8}, 26), gen({5, 8}, 27), Tensor()), "linear_nobias", kTol, kTol);
  expect_matches_ref(ops::linear(gen({4, 8}, 29), t2(gen({8, 5}, 30)), gen({5}, 31)), "linear_wt", kTol, kTol);
  Tensor xt = ops::transpose(gen({3, 2, 8}, 32), 0, 1);
  expect_matches_ref(ops::linear(xt, gen({5, 8}, 33), gen({5}, 34)), "linear_xt", kTol, kTol);
  Tensor v = ops::linear(gen({8}, 35), gen({5, 8}, 36), gen({5}, 37));
  EXPECT_EQ(v.sizes(), Shape({5}));
  expect_matches_ref(v, "linear_vec", kTol, kTol);
  Tensor bf =
      ops::linear(gen({4, 8}, 38, 2.0, DType::bf16), gen({5, 8}, 39, 2.0, DType::bf16), gen({5}, 40, 2.0, DType::bf16));
  EXPECT_EQ(bf.dtype(), DType::bf16);
  expect_matches_ref(bf, "linear_bf16", 1e-2, 2e-2);
}

TEST(Linear, EmptyInputFeaturesGiveTheBiasOrZeros) {
  // x (3, 0) @ w (4, 0)^T sums nothing: every output element is its bias (or 0), as in PyTorch.
  Tensor x = ops::zeros({3, 0}), w = ops::zeros({4, 0});
  Tensor b = from_vector<float>({1, -2, 3, 0.5f}, {4});
  std::vector<float> with_bias = ops::linear(x, w, b).to_vector<float>();
  std::vector<float> no_bias = ops::linear(x, w, Tensor()).to_vector<float>();
  ASSERT_EQ(with_bias.size(), 12u);
  ASSERT_EQ(no_bias.size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(with_bias[i], b.to_vector<float>()[i % 4]) << "element " << i;
    EXPECT_EQ(no_bias[i], 0.0f) << "element " << i;
  }
}

TEST(Linear, AgreesWithMatmulPlusBias) {
  Tensor x = gen({6, 16}, 1), w = gen({9, 16}, 2), b = gen({9}, 3);
  Tensor ref = ops::add(ops::matmul(x, t2(w)), b);
  const auto got = ops::linear(x, w, b).to_vector<float>();
  const auto want = ref.to_vector<float>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5);
}

TEST(Gemm, AlphaBetaAndTransposedOperandsMatchPyTorch) {
  LOOM_REQUIRE_TORCH_REF();
  Tensor out = gen({5, 3}, 41);
  const int64_t v0 = out.version();
  ops::gemm_(out, t2(gen({7, 5}, 42)), gen({7, 3}, 43), 0.5, 2.0);
  EXPECT_GT(out.version(), v0);
  expect_matches_ref(out, "gemm_ab", kTol, kTol);
}

TEST(Gemm, WritesIntoARowMajorView) {
  // out is the left half of a (2, 6) buffer: rows are 6 apart.
  Tensor buf = ops::zeros({2, 6});
  Tensor out = ops::narrow(buf, 1, 0, 3);
  ops::gemm_(out, ops::ones({2, 4}), ops::ones({4, 3}));
  EXPECT_EQ(buf.to_vector<float>(), std::vector<float>({4, 4, 4, 0, 0, 0, 4, 4, 4, 0, 0, 0}));
}

TEST(Matmul, CudaTensorsAreUnsupportedAndDevicesMustMatch) {
  if (cuda_is_available()) GTEST_SKIP() << "a CUDA backend is built";
  Tensor c = testing::fake_cuda_tensor({4, 4});
  testing::expect_unsupported([&] { ops::matmul(c, c); }, "matmul");
  testing::expect_unsupported([&] { ops::linear(c, c, Tensor()); }, "linear");
  testing::expect_unsupported([&] { ops::gemm_(c, c, c); }, "gemm_");
  expect_error_mentions([&] { ops::matmul(ops::zeros({4, 4}), c); }, {"matmul", "cpu", "cuda:0"});
}

}  // namespace
}  // namespace loom
