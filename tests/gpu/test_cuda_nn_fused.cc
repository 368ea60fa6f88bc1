// CUDA-only checks of the nn kernels' fused paths that no public op exposes
// yet, and of properties a conformance tolerance cannot see: the norm kernel's
// fused residual add, linear's GELU epilogue (cuBLASLt's fused kernel and the
// unfused fallback), dropout's mask bit for bit against the CPU, a
// deterministic embedding backward, and the CPU's error naming a bad index.
// Each test skips, visibly, without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tensor/cuda_dispatch.h"
#include "tensor/ops.h"

namespace loom {
namespace {

const Device kGpu(DeviceType::kCUDA, 0);

#define LOOM_REQUIRE_GPU() \
  if (!cuda_is_available()) GTEST_SKIP() << "no CUDA device (cuda_is_available() is false): this test needs a GPU"

Tensor randn(const Shape& s, uint64_t seed, DType dt = DType::f32) {
  Generator g(seed);
  return ops::to(ops::randn(s, g), dt);
}

/// max |a - b| / (atol + rtol |b|) <= 1 elementwise, a and b compared in f64 on the host.
void expect_close(const Tensor& a, const Tensor& b, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const std::vector<double> x = ops::to(a, kCPU).to_vector<double>(), y = ops::to(b, kCPU).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_LE(std::fabs(x[i] - y[i]), atol + rtol * std::fabs(y[i]))
        << what << " element " << i << ": " << x[i] << " vs " << y[i];
}

TEST(CudaNnFused, NormWithResidualEqualsAddThenNorm) {
  LOOM_REQUIRE_GPU();
  const auto& k = detail::cuda_kernels("norm_forward", ops::zeros({1}, DType::f32, kGpu));
  for (DType dt : {DType::f32, DType::bf16}) {
    for (bool rms : {false, true}) {
      const int64_t N = 37, C = 200;
      Tensor x = randn({N, C}, 1, dt), r = randn({N, C}, 2, dt), w = randn({C}, 3, dt), b = randn({C}, 4, dt);
      Tensor sum_cpu = ops::add(x, r);
      ops::NormResult ref = rms ? ops::rms_norm(sum_cpu, w, 1e-5) : ops::layer_norm(sum_cpu, w, b, 1e-5);
      Tensor y = empty({N, C}, dt, kGpu), so = empty({N, C}, dt, kGpu);
      Tensor mean = rms ? Tensor() : empty({N}, DType::f32, kGpu), rstd = empty({N}, DType::f32, kGpu);
      k.norm_forward(y, mean, rstd, ops::to(x, kGpu), ops::to(w, kGpu), rms ? Tensor() : ops::to(b, kGpu), 1e-5, rms,
                     ops::to(r, kGpu), so);
      const std::string what = std::string(rms ? "rms" : "layer") + " " + dtype_name(dt);
      expect_close(so, sum_cpu, 0, 0, what + " sum_out");  // the same rounding of the same sum
      const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
      expect_close(y, ref.y, tol, tol, what + " y");
      expect_close(rstd, ref.rstd, 1e-5, 1e-5, what + " rstd");
      if (!rms) expect_close(mean, ref.mean, 1e-5, 1e-5, what + " mean");
    }
  }
}

TEST(CudaNnFused, LinearGeluEpilogueMatchesUnfused) {
  LOOM_REQUIRE_GPU();
  const auto& k = detail::cuda_kernels("linear", ops::zeros({1}, DType::f32, kGpu));
  for (DType dt : {DType::f32, DType::bf16}) {
    for (int64_t N : {64, 30}) {  // 30: the aux leading dimension is not a multiple of 8, the unfused path
      const int64_t M = 33, K = 48;
      Tensor x = randn({M, K}, 5, dt), w = randn({N, K}, 6, dt), b = randn({N}, 7, dt);
      Tensor pre_ref = ops::linear(x, w, b);
      Tensor y_ref = ops::gelu(pre_ref, GeluApprox::kTanh);
      Tensor y = empty({M, N}, dt, kGpu), pre = empty({M, N}, dt, kGpu);
      k.linear(y, ops::to(x, kGpu), ops::to(w, kGpu), ops::to(b, kGpu), pre);
      const double tol = dt == DType::f32 ? 1e-4 : 3e-2;
      const std::string what = std::string(dtype_name(dt)) + " N=" + std::to_string(N);
      expect_close(pre, pre_ref, tol, tol, what + " pre-activation");
      expect_close(y, y_ref, tol, tol, what + " gelu");
    }
  }
}

TEST(CudaNnFused, DropoutMaskIsTheCpuMaskBitForBit) {
  LOOM_REQUIRE_GPU();
  for (int64_t n : {1, 5, 4096, 100003}) {
    Tensor x = randn({n}, 8);
    Generator gc(99), gg(99);
    gc.advance(3);
    gg.advance(3);
    auto [yc, mc] = ops::dropout(x, 0.3, gc);
    auto [yg, mg] = ops::dropout(ops::to(x, kGpu), 0.3, gg);
    EXPECT_EQ(gc.offset(), gg.offset());
    EXPECT_EQ(ops::to(mg, kCPU).to_vector<uint8_t>(), mc.to_vector<uint8_t>()) << "n " << n;
    EXPECT_EQ(ops::to(yg, kCPU).to_vector<float>(), yc.to_vector<float>()) << "n " << n;
  }
}

TEST(CudaNnFused, EmbeddingBackwardIsDeterministicAndMatchesTheCpu) {
  LOOM_REQUIRE_GPU();
  const int64_t V = 50, C = 70, N = 3000;
  Generator g(3);
  Tensor idx = ops::randint(0, V, {N}, g);
  idx = ops::where(ops::lt(ops::rand({N}, g), 0.5), ops::full({N}, 7, DType::i64), idx);  // one hot row
  Tensor grad = randn({N, C}, 9);
  Tensor ref = ops::embedding_backward(grad, idx, V);
  Tensor a = ops::embedding_backward(ops::to(grad, kGpu), ops::to(idx, kGpu), V);
  Tensor b = ops::embedding_backward(ops::to(grad, kGpu), ops::to(idx, kGpu), V);
  const std::vector<float> av = ops::to(a, kCPU).to_vector<float>();
  EXPECT_EQ(av, ops::to(b, kCPU).to_vector<float>()) << "two runs differ";
  EXPECT_EQ(av, ref.to_vector<float>()) << "the CPU's order of summation gives the same bits";
}

TEST(CudaNnFused, BadIndicesThrowTheCpuError) {
  LOOM_REQUIRE_GPU();
  Tensor w = randn({10, 4}, 10);
  Tensor idx = ops::to(from_vector<int64_t>({1, 2, 11, 3, 12}, {5}), kGpu);
  try {
    ops::embedding(ops::to(w, kGpu), idx);
    ADD_FAILURE() << "expected an error for index 11";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("index 11 at position [2]"), std::string::npos) << e.what();
  }
  Tensor logits = ops::to(randn({4, 6}, 11), kGpu);
  Tensor tg = ops::to(from_vector<int64_t>({0, -100, 6, 1}, {4}), kGpu);
  try {
    ops::cross_entropy(logits, tg);
    ADD_FAILURE() << "expected an error for target 6";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 6 at row 2"), std::string::npos) << e.what();
  }
  auto ok = ops::cross_entropy(logits, ops::to(from_vector<int64_t>({0, -100, 5, 1}, {4}), kGpu));
  EXPECT_EQ(ok.count, 3);
}

TEST(CudaNnFused, MatmulViewsAndBroadcastsMatchTheCpu) {
  LOOM_REQUIRE_GPU();
  Tensor a = randn({2, 3, 5, 7}, 12), b = randn({7, 4}, 13), c = randn({3, 7, 4}, 14), d = randn({2, 1, 4, 7}, 15);
  auto check = [&](const Tensor& x, const Tensor& y, const std::string& what) {
    expect_close(ops::matmul(ops::to(x, kGpu), ops::to(y, kGpu)), ops::matmul(x, y), 1e-4, 1e-4, what);
  };
  check(a, b, "batched @ shared");
  check(a, c, "batched @ broadcast batch");
  check(a, ops::transpose(d, -1, -2), "column-major b with a broadcast dim");
  check(ops::transpose(randn({7, 5}, 16), 0, 1), b, "column-major a");
  check(randn({7}, 17), b, "vector @ matrix");
  check(a, randn({7}, 18), "batched @ vector");
  // Batch dims that do not fold into one stride: a permuted batch.
  check(ops::permute(randn({3, 2, 5, 7}, 19), {1, 0, 2, 3}), c, "permuted batch");
  Tensor out = ops::full({5, 4}, 1.0, DType::f32, kGpu);
  ops::gemm_(out, ops::to(ops::transpose(randn({7, 5}, 20), 0, 1), kGpu), ops::to(b, kGpu), 2.0, 0.5);
  Tensor ref = ops::full({5, 4}, 1.0);
  ops::gemm_(ref, ops::transpose(randn({7, 5}, 20), 0, 1), b, 2.0, 0.5);
  expect_close(out, ref, 1e-4, 1e-4, "gemm_ alpha beta");
}

}  // namespace
}  // namespace loom
