// The public fused ops on CUDA (ops::linear_gelu, ops::add_layer_norm, ops::add_rms_norm
// and their autograd functions) against the CPU, where they are the unfused ops bit for
// bit: outputs, saved pre-activation / statistics and gradients within f32 tolerances.
// Each test skips, visibly, without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"

namespace loom {
namespace {

const Device kGpu(DeviceType::kCUDA, 0);

#define LOOM_REQUIRE_GPU() \
  if (!cuda_is_available()) GTEST_SKIP() << "no CUDA device (cuda_is_available() is false): this test needs a GPU"

Tensor randn(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return ops::randn(s, g);
}

void expect_close(const Tensor& a, const Tensor& b, double atol, double rtol, const std::string& what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const std::vector<double> x = ops::to(ops::to(a, kCPU), DType::f64).to_vector<double>();
  const std::vector<double> y = ops::to(ops::to(b, kCPU), DType::f64).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_LE(std::fabs(x[i] - y[i]), atol + rtol * std::fabs(y[i]))
        << what << " element " << i << ": " << x[i] << " vs " << y[i];
}

TEST(CudaFusedOps, LinearGeluMatchesCpuWithGradients) {
  LOOM_REQUIRE_GPU();
  Tensor x = randn({4, 7, 64}, 1), w = ops::mul(randn({96, 64}, 2), 0.1), b = randn({96}, 3);
  Tensor gy = randn({4, 7, 96}, 4);
  Tensor xc = ops::clone(x).set_requires_grad(), wc = ops::clone(w).set_requires_grad(),
         bc = ops::clone(b).set_requires_grad();
  Tensor xg = ops::to(x, kGpu).set_requires_grad(), wg = ops::to(w, kGpu).set_requires_grad(),
         bg = ops::to(b, kGpu).set_requires_grad();
  ops::LinearGeluResult rc = ops::linear_gelu(x, w, b),
                        rg = ops::linear_gelu(ops::to(x, kGpu), ops::to(w, kGpu), ops::to(b, kGpu));
  expect_close(rg.pre, rc.pre, 1e-4, 1e-4, "pre-activation");
  expect_close(rg.out, rc.out, 1e-4, 1e-4, "activation");
  sum(mul(linear_gelu(xc, wc, bc), gy)).backward();
  sum(mul(linear_gelu(xg, wg, bg), ops::to(gy, kGpu))).backward();
  expect_close(xg.grad(), xc.grad(), 1e-4, 1e-4, "dx");
  expect_close(wg.grad(), wc.grad(), 1e-3, 1e-4, "dw");
  expect_close(bg.grad(), bc.grad(), 1e-3, 1e-4, "db");
}

// cuBLASLt's epilogue needs 16-byte aligned operands (tensor/cuda/linear_plan.h): a
// bias, input, weight or pre-activation view that starts 4 or 2 bytes into its
// buffer takes the unfused path (gemm, then bias + GELU) and must give the fused
// path's numbers; N = 12 (GELU aux leading dimension not a multiple of 8) too.
TEST(CudaFusedOps, LinearGeluWithMisalignedOperandsFallsBackWithTheSameResults) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    const double tol = dt == DType::f32 ? 1e-4 : 3e-2;
    for (int64_t N : {96, 12}) {
      Tensor x = ops::to(randn({5, 64}, 11), dt), w = ops::to(ops::mul(randn({N, 64}, 12), 0.1), dt);
      Tensor b = ops::to(randn({N}, 13), dt);
      const ops::LinearGeluResult want = ops::linear_gelu(x, w, b);  // CPU
      // x, w, then b as a view one element into a larger device buffer; last none (fused where N allows).
      for (int which = 0; which < 4; ++which) {
        auto shifted = [&](const Tensor& t) {
          Tensor flat = ops::to(ops::reshape(t, {t.numel()}), kGpu);
          Tensor big = ops::to(ops::zeros({t.numel() + 1}, dt), kGpu);
          ops::copy_(ops::narrow(big, 0, 1, t.numel()), flat);
          return ops::reshape(ops::narrow(big, 0, 1, t.numel()), t.sizes());
        };
        Tensor xg = which == 0 ? shifted(x) : ops::to(x, kGpu);
        Tensor wg = which == 1 ? shifted(w) : ops::to(w, kGpu);
        Tensor bg = which == 2 ? shifted(b) : ops::to(b, kGpu);
        const std::string what =
            std::string(dtype_name(dt)) + " N=" + std::to_string(N) + " shifted operand " + std::to_string(which);
        const ops::LinearGeluResult got = ops::linear_gelu(xg, wg, bg);
        expect_close(got.pre, want.pre, tol, tol, what + " pre");
        expect_close(got.out, want.out, tol, tol, what + " out");
        expect_close(ops::linear(xg, wg, bg), want.pre, tol, tol, what + " linear");
      }
    }
  }
}

TEST(CudaFusedOps, AddNormsMatchCpuWithGradients) {
  LOOM_REQUIRE_GPU();
  for (bool rms : {false, true}) {
    const std::string tag = rms ? "add_rms_norm " : "add_layer_norm ";
    Tensor x = randn({3, 5, 128}, 10), r = randn({3, 5, 128}, 11), w = ops::add(randn({128}, 12), 1.0),
           b = randn({128}, 13), gs = randn({3, 5, 128}, 14), gy = randn({3, 5, 128}, 15);
    std::vector<Tensor> c{ops::clone(x), ops::clone(r), ops::clone(w), ops::clone(b)}, g;
    for (Tensor& t : c) g.push_back(ops::to(t, kGpu).set_requires_grad());
    for (Tensor& t : c) t.set_requires_grad();
    auto fwd = [&](const std::vector<Tensor>& in) {
      return rms ? add_rms_norm(in[0], in[1], in[2]) : add_layer_norm(in[0], in[1], in[2], in[3]);
    };
    auto [sc, yc] = fwd(c);
    auto [sg, yg] = fwd(g);
    expect_close(sg, sc, 0.0, 0.0, tag + "sum");
    expect_close(yg, yc, 1e-5, 1e-5, tag + "y");
    add(sum(mul(sc, gs)), sum(mul(yc, gy))).backward();
    add(sum(mul(sg, ops::to(gs, kGpu))), sum(mul(yg, ops::to(gy, kGpu)))).backward();
    const int n = rms ? 3 : 4;
    for (int i = 0; i < n; ++i) expect_close(g[i].grad(), c[i].grad(), 1e-4, 1e-4, tag + "grad " + std::to_string(i));
  }
}

TEST(CudaFusedOps, AddNormWidensABf16BranchLikeAdd) {
  LOOM_REQUIRE_GPU();
  // Autocast's case: an f32 residual stream plus a bf16 branch output, in either order.
  Tensor x = randn({6, 256}, 20), r = ops::to(randn({6, 256}, 21), DType::bf16), w = randn({256}, 22);
  for (bool swap : {false, true}) {
    const Tensor& a = swap ? r : x;
    const Tensor& c = swap ? x : r;
    ops::AddNormResult cpu = ops::add_rms_norm(a, c, w, 1e-6);
    ops::AddNormResult gpu = ops::add_rms_norm(ops::to(a, kGpu), ops::to(c, kGpu), ops::to(w, kGpu), 1e-6);
    ASSERT_EQ(gpu.sum.dtype(), DType::f32);
    expect_close(gpu.sum, cpu.sum, 0.0, 0.0, "sum");
    expect_close(gpu.y, cpu.y, 1e-5, 1e-5, "y");
    expect_close(gpu.rstd, cpu.rstd, 1e-5, 1e-5, "rstd");
  }
}

}  // namespace
}  // namespace loom
