// SyncBatchNorm: a Conv2d -> BatchNorm2d -> ReLU stack converted with convert_sync_batchnorm, each rank on its rows of
// a global batch, gives the outputs, input gradients, summed weight/bias gradients and running statistics of
// single-rank BatchNorm2d on the whole batch, over two training steps and then in eval.
#include "parallel/sync_batch_norm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/conv.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

/// scale * sin(0.37*i + seed) in f32.
Tensor gen(const Shape& shape, double seed, double scale = 1.0) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>(std::sin(static_cast<double>(i) * 0.37 + seed) * scale);
  return from_vector(v, shape);
}

std::shared_ptr<nn::Sequential> make_net() {
  Generator g(7);  // same weights on every rank
  return std::make_shared<nn::Sequential>(std::make_shared<nn::Conv2d>(2, 3, 3, nn::Conv2dOptions{}, g),
                                          std::make_shared<nn::BatchNorm2d>(3), std::make_shared<nn::ReLU>());
}

void expect_near(const Tensor& got, const Tensor& want, double rtol, const std::string& what) {
  const std::vector<double> a = got.to_vector<double>(), b = want.to_vector<double>();
  ASSERT_EQ(a.size(), b.size()) << what;
  double scale = 0;
  for (double v : b) scale = std::max(scale, std::abs(v));
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::abs(a[i] - b[i]) > rtol * (std::abs(b[i]) + 0.1 * scale) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: synced " << a[i] << ", single-rank " << b[i];
  EXPECT_EQ(bad, 0) << what;
}

TEST(SyncBatchNorm, MatchesSingleRankOnTheGlobalBatch) {
  auto world = ptest::world();
  const int W = world->size(), r = world->rank();
  const int64_t N = 4 * W, n = 4;
  auto ref = make_net();
  auto net = make_net();
  EXPECT_EQ(convert_sync_batchnorm(*net, world), 1);
  auto* bn_ref = dynamic_cast<nn::BatchNorm2d*>((*ref)[1].get());
  auto* bn = dynamic_cast<nn::BatchNorm2d*>((*net)[1].get());
  ASSERT_TRUE(bn && bn_ref && bn->sync);
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const Tensor xg = ops::add(gen({N, 2, 6, 5}, 1 + step, 2.0), 0.3 * step);
    const Tensor rg = gen({N, 3, 4, 3}, 5 + step);
    // single rank, whole batch
    ref->zero_grad();
    Tensor x_ref = ops::clone(xg).set_requires_grad();
    Tensor y_ref = (*ref)(x_ref);
    sum(mul(y_ref, rg)).backward();
    // this rank's rows
    net->zero_grad();
    Tensor x = ops::contiguous(ops::narrow(xg, 0, r * n, n)).set_requires_grad();
    Tensor y = (*net)(x);
    sum(mul(y, ops::contiguous(ops::narrow(rg, 0, r * n, n)))).backward();
    expect_near(y, ops::narrow(y_ref, 0, r * n, n), 1e-5, "output");
    expect_near(x.grad(), ops::narrow(x_ref.grad(), 0, r * n, n), 1e-4, "input gradient");
    // parameter gradients are local sums: all-reduced they are the whole batch's (what DDP then averages)
    for (const auto& [name, p] : net->named_parameters()) {
      Tensor gsum = ops::clone(p.grad());
      world->allreduce(gsum)->wait();
      Tensor want;
      for (const auto& [rn, rp] : ref->named_parameters())
        if (rn == name) want = rp.grad();
      if (name == "0.bias") {
        // A per-channel constant before batch norm cancels: its exact gradient is 0, both sides are rounding noise.
        for (double v : gsum.to_vector<double>()) EXPECT_LT(std::abs(v), 1e-4) << name;
        continue;
      }
      expect_near(gsum, want, 1e-4, name + " gradient");
    }
    expect_near(bn->running_mean, bn_ref->running_mean, 1e-5, "running_mean");
    expect_near(bn->running_var, bn_ref->running_var, 1e-5, "running_var");
    EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), step + 1);
  }
  // eval: no collective, the running statistics
  net->eval();
  ref->eval();
  const Tensor xg = gen({N, 2, 6, 5}, 9, 2.0);
  expect_near((*net)(ops::contiguous(ops::narrow(xg, 0, r * n, n))), ops::narrow((*ref)(xg), 0, r * n, n), 1e-5,
              "eval output");
  EXPECT_NE(bn->extra_repr().find("sync="), std::string::npos) << bn->extra_repr();
}

}  // namespace
}  // namespace loom::parallel
