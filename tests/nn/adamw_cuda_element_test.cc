// The element update and step scalars the CUDA fused AdamW kernel runs
// (tensor/cuda/adamw_plan.h), run here on the host, against nn::AdamW's CPU
// kernel over several steps with weight decay: the same torch.optim.AdamW
// arithmetic up to float rounding (either side may contract into FMA).
#include <gtest/gtest.h>

#include <cmath>

#include "nn/optim.h"
#include "tensor/cuda/adamw_plan.h"

namespace loom::nn {
namespace {

TEST(CudaAdamWElement, FiveStepsMatchTheCpuOptimizer) {
  Generator gen(11);
  const int64_t n = 1000;
  Tensor p = ops::randn({n}, gen).set_requires_grad();
  std::vector<float> hp = p.to_vector<float>(), hm(n, 0.f), hv(n, 0.f);
  const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  AdamW opt({p}, AdamWOptions{lr, b1, b2, eps, wd});
  for (int64_t step = 1; step <= 5; ++step) {
    Tensor g = ops::mul(ops::randn({n}, gen), 0.5);
    p.set_grad(g);
    opt.step();
    const std::vector<float> hg = g.to_vector<float>();
    const cuda_detail::AdamWScalars s = cuda_detail::adamw_scalars(lr, b1, b2, eps, wd, step);
    for (int64_t i = 0; i < n; ++i) cuda_detail::adamw_element(hp[i], hg[i], hm[i], hv[i], s);
  }
  const std::vector<float> got = p.to_vector<float>();
  const std::vector<float> m = opt.state(0).tensors["exp_avg"].to_vector<float>();
  const std::vector<float> v = opt.state(0).tensors["exp_avg_sq"].to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(got[i], hp[i], 1e-6f * (1.f + std::fabs(hp[i]))) << "p[" << i << "]";
    ASSERT_NEAR(m[i], hm[i], 1e-6f * (1.f + std::fabs(hm[i]))) << "exp_avg[" << i << "]";
    ASSERT_NEAR(v[i], hv[i], 1e-6f * (1.f + std::fabs(hv[i]))) << "exp_avg_sq[" << i << "]";
  }
}

}  // namespace
}  // namespace loom::nn
