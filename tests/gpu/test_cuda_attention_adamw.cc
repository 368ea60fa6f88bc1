// CUDA-only checks of the flash-attention entries (tensor/cuda/attention.cu)
// and the fused AdamW (tensor/cuda/adamw.cu) beyond the conformance table: every
// compiled head dim and dtype against the CPU, a bitwise deterministic backward,
// the multi-tensor AdamW against nn::AdamW on the CPU across several launches,
// and the bf16 copy of the master weights. Each test skips, visibly, without a
// CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/optim.h"
#include "tensor/cuda_dispatch.h"
#include "tensor/ops.h"

namespace loom {
namespace {

const Device kGpu(DeviceType::kCUDA, 0);

#define LOOM_REQUIRE_GPU() \
  if (!cuda_is_available()) GTEST_SKIP() << "no CUDA device (cuda_is_available() is false): this test needs a GPU"

Tensor randn(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return ops::randn(s, g);
}

/// |a - b| <= atol + rtol |b| elementwise, compared in f64 on the host.
void expect_close(const Tensor& a, const Tensor& b, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const std::vector<double> x = ops::to(a, kCPU).to_vector<double>(), y = ops::to(b, kCPU).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_LE(std::fabs(x[i] - y[i]), atol + rtol * std::fabs(y[i]))
        << what << " element " << i << ": " << x[i] << " vs " << y[i];
}

struct AttnRun {
  Tensor out, dq, dk, dv;
};

/// Output and gradients of sum(sdpa(q, k, v) * w) with q, k, v, w given in f32 on
/// the CPU, run on `device` in dtype `dt`.
AttnRun run_attention(const Tensor& q32, const Tensor& k32, const Tensor& v32, const Tensor& w32, bool causal,
                      Device device, DType dt) {
  Tensor q = ops::to(ops::to(q32, dt), device).set_requires_grad();
  Tensor k = ops::to(ops::to(k32, dt), device).set_requires_grad();
  Tensor v = ops::to(ops::to(v32, dt), device).set_requires_grad();
  Tensor out = scaled_dot_product_attention(q, k, v, causal);
  auto g = autograd::grad({sum(mul(to(out, DType::f32), ops::to(w32, device)))}, {q, k, v});
  return {out, g[0], g[1], g[2]};
}

TEST(CudaAttention, EveryHeadDimAndDtypeMatchesTheCpu) {
  LOOM_REQUIRE_GPU();
  struct Case {
    int64_t H, Hkv, T, S;
  };
  for (const Case& c : {Case{4, 2, 70, 70}, Case{3, 1, 33, 80}, Case{2, 2, 90, 17}}) {
    for (int64_t D : {32, 64, 96, 128}) {
      Tensor q = randn({2, c.H, c.T, D}, 1), k = randn({2, c.Hkv, c.S, D}, 2), v = randn({2, c.Hkv, c.S, D}, 3);
      Tensor w = randn({2, c.H, c.T, D}, 4);
      for (bool causal : {true, false}) {
        for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
          // the CPU's fused kernel on the same rounded inputs (it computes in f32)
          const AttnRun ref = run_attention(q, k, v, w, causal, kCPU, dt);
          const AttnRun got = run_attention(q, k, v, w, causal, kGpu, dt);
          const double tol = dt == DType::f32 ? 2e-4 : 2e-2;
          const std::string what = std::string(dtype_name(dt)) + " D " + std::to_string(D) + " T " +
                                   std::to_string(c.T) + " S " + std::to_string(c.S) + (causal ? " causal" : " full");
          EXPECT_EQ(got.out.dtype(), dt) << what;
          expect_close(got.out, ref.out, tol, tol, what + " out");
          expect_close(got.dq, ref.dq, tol, tol, what + " dq");
          expect_close(got.dk, ref.dk, tol, tol, what + " dk");
          expect_close(got.dv, ref.dv, tol, tol, what + " dv");
        }
      }
    }
  }
}

TEST(CudaAttention, BackwardGivesTheSameBitsTwice) {
  LOOM_REQUIRE_GPU();
  Tensor q = randn({2, 8, 200, 64}, 5), k = randn({2, 2, 200, 64}, 6), v = randn({2, 2, 200, 64}, 7);
  Tensor w = randn({2, 8, 200, 64}, 8);
  const AttnRun a = run_attention(q, k, v, w, true, kGpu, DType::bf16);
  const AttnRun b = run_attention(q, k, v, w, true, kGpu, DType::bf16);
  expect_close(a.dq, b.dq, 0, 0, "dq");
  expect_close(a.dk, b.dk, 0, 0, "dk");
  expect_close(a.dv, b.dv, 0, 0, "dv");
}

TEST(CudaAttention, EntriesRejectHeadDimsWithoutAKernelAndTheOpFallsBack) {
  LOOM_REQUIRE_GPU();
  const int64_t D = 80;
  Tensor q = ops::to(randn({1, 2, 9, D}, 9), kGpu), k = ops::to(randn({1, 2, 9, D}, 10), kGpu),
         v = ops::to(randn({1, 2, 9, D}, 11), kGpu);
  Tensor out = empty({1, 2, 9, D}, DType::f32, kGpu), lse = empty({1, 2, 9}, DType::f32, kGpu);
  const auto& kernels = detail::cuda_kernels("sdpa_forward", q);
  try {
    kernels.sdpa_forward(out, lse, q, k, v, 1.0 / std::sqrt(80.0), true);
    FAIL() << "expected Unsupported for D = 80";
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find("D = 80"), std::string::npos) << e.what();
  }
  // scaled_dot_product_attention takes the composed ops for such a head dim
  expect_close(scaled_dot_product_attention(q, k, v, true),
               scaled_dot_product_attention(ops::to(q, kCPU), ops::to(k, kCPU), ops::to(v, kCPU), true), 1e-4, 1e-4,
               "D 80");
}

TEST(CudaAdamW, MultiTensorStepsMatchTheCpuOptimizer) {
  LOOM_REQUIRE_GPU();
  // 30 parameters (two launches of at most 24), sizes around the 8192-element chunk
  std::vector<Shape> shapes;
  for (int i = 0; i < 30; ++i) shapes.push_back(i % 3 == 0 ? Shape{8193 + 7 * i} : Shape{3 + i, 11 * (i + 1)});
  std::vector<Tensor> cpu, gpu;
  for (size_t i = 0; i < shapes.size(); ++i) {
    cpu.push_back(randn(shapes[i], 100 + i).set_requires_grad());
    gpu.push_back(ops::to(cpu.back(), kGpu).set_requires_grad());
  }
  auto groups = [](const std::vector<Tensor>& ps) {
    return std::vector<nn::ParamGroup>{{{ps.begin(), ps.begin() + 17}, 3e-3, 0.1},
                                       {{ps.begin() + 17, ps.end()}, 1e-3, 0.0}};
  };
  nn::AdamWOptions opts{1e-3, 0.9, 0.95, 1e-8, 0.0};
  nn::AdamW a(groups(cpu), opts), b(groups(gpu), opts);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor g = ops::mul(randn(shapes[i], 1000 * step + i), 0.3);
      cpu[i].set_grad(g);
      gpu[i].set_grad(ops::to(g, kGpu));
    }
    a.step();
    b.step();
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    expect_close(gpu[i], cpu[i], 1e-6, 1e-5, "parameter " + std::to_string(i));
    expect_close(b.state(static_cast<int64_t>(i)).tensors["exp_avg_sq"],
                 a.state(static_cast<int64_t>(i)).tensors["exp_avg_sq"], 1e-9, 1e-5, "exp_avg_sq " + std::to_string(i));
  }
}

TEST(CudaAdamW, Bf16GradientsAndTheLowPrecisionCopy) {
  LOOM_REQUIRE_GPU();
  const int64_t n = 20000;
  Tensor p = randn({n}, 1), g = ops::to(ops::mul(randn({n}, 2), 0.1), DType::bf16);
  Tensor m = ops::zeros({n}), v = ops::zeros({n});
  Tensor pg = ops::to(p, kGpu), gg = ops::to(g, kGpu), mg = ops::to(m, kGpu), vg = ops::to(v, kGpu);
  Tensor lowp = empty({n}, DType::bf16, kGpu);
  const auto& kernels = detail::cuda_kernels("adamw", pg);
  kernels.adamw(pg, gg, mg, vg, lowp, 1e-2, 0.9, 0.999, 1e-8, 0.05, 1);
  // the CPU optimizer on the same step, with the bf16 gradient widened to f32
  Tensor pc = ops::clone(p).set_requires_grad();
  nn::AdamW cpu_opt({pc}, nn::AdamWOptions{1e-2, 0.9, 0.999, 1e-8, 0.05});
  pc.set_grad(ops::to(g, DType::f32));
  cpu_opt.step();
  expect_close(pg, pc, 1e-6, 1e-5, "p");
  expect_close(lowp, ops::to(pg, DType::bf16), 0, 0, "p_lowp is p rounded to bf16");
}

}  // namespace
}  // namespace loom
