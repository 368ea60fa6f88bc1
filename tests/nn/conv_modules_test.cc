// The convolutional layers as modules: issue 18's ConvNet built with Sequential has PyTorch's parameter names,
// count, printed form and default initialisation bounds, runs forward/backward, and Dropout/BatchNorm follow
// train()/eval().
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/conv.h"
#include "autograd/functions.h"
#include "nn/activation.h"
#include "nn/conv.h"
#include "nn/dropout.h"
#include "nn/linear.h"

namespace loom::nn {
namespace {

std::shared_ptr<Sequential> convnet(Generator& g) {
  Conv2dOptions pad1;
  pad1.padding = {1, 1};
  return std::make_shared<Sequential>(
      std::make_shared<Conv2d>(1, 32, 3, pad1, g), std::make_shared<ReLU>(), std::make_shared<MaxPool2d>(2),
      std::make_shared<Conv2d>(32, 64, 3, pad1, g), std::make_shared<ReLU>(), std::make_shared<MaxPool2d>(2),
      std::make_shared<Dropout>(0.25, g), std::make_shared<Flatten>(),
      std::make_shared<Linear>(64 * 7 * 7, 128, LinearOptions{}, g), std::make_shared<ReLU>(),
      std::make_shared<Dropout>(0.5, g), std::make_shared<Linear>(128, 10, LinearOptions{}, g));
}

TEST(ConvModules, ConvNetNamesCountAndRepr) {
  Generator g(1);
  auto net = convnet(g);
  std::vector<std::string> names;
  for (const auto& [n, p] : net->named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "3.weight", "3.bias", "8.weight", "8.bias",
                                             "11.weight", "11.bias"}));
  EXPECT_EQ(net->num_parameters(), 421642);  // torch: sum(p.numel() for p in model.parameters())
  const std::string r = net->repr();
  for (const char* line : {"(0): Conv2d(1, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))", "(1): ReLU()",
                           "(2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)",
                           "(7): Flatten(start_dim=1, end_dim=-1)", "(6): Dropout(p=0.25, inplace=False)"})
    EXPECT_NE(r.find(line), std::string::npos) << "missing '" << line << "' in\n" << r;
  // PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, fan_in = 32*3*3 for conv 2.
  auto conv2 = std::dynamic_pointer_cast<Conv2d>((*net)[3]);
  ASSERT_TRUE(conv2);
  const double bound = 1.0 / std::sqrt(32.0 * 9);
  double maxabs = 0;
  for (double v : conv2->weight.to_vector<double>()) maxabs = std::max(maxabs, std::abs(v));
  EXPECT_LE(maxabs, bound);
  EXPECT_GT(maxabs, 0.9 * bound);  // uniform over the whole range, not a narrower normal
}

TEST(ConvModules, ConvNetForwardBackwardAndModes) {
  Generator g(2);
  auto net = convnet(g);
  Tensor x = ops::randn({4, 1, 28, 28}, g);
  Tensor logits = (*net)(x);
  EXPECT_EQ(logits.sizes(), (Shape{4, 10}));
  cross_entropy(logits, ops::arange(4)).backward();
  for (const auto& [n, p] : net->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << n;
    EXPECT_GT(ops::norm(p.grad()).item<float>(), 0.0f) << n;
  }
  // eval: dropout off, so two forwards agree exactly; train: they differ.
  net->eval();
  EXPECT_EQ((*net)(x).to_vector<float>(), (*net)(x).to_vector<float>());
  net->train();
  EXPECT_NE((*net)(x).to_vector<float>(), (*net)(x).to_vector<float>());
}

TEST(ConvModules, PoolsAndGeluModulesAndBatchNormWithoutTracking) {
  Tensor x = ops::randn({2, 3, 6, 6});
  EXPECT_EQ(MaxPool2d(3, 2, 1)(x).sizes(), (Shape{2, 3, 3, 3}));
  EXPECT_EQ(AvgPool2d(2)(x).sizes(), (Shape{2, 3, 3, 3}));
  EXPECT_EQ(AdaptiveAvgPool2d(1)(x).sizes(), (Shape{2, 3, 1, 1}));
  EXPECT_EQ(GELU()(x).sizes(), x.sizes());
  BatchNorm2d bn(3, 1e-5, 0.1, /*affine=*/false, /*track_running_stats=*/false);
  EXPECT_TRUE(bn.named_buffers().empty());
  EXPECT_TRUE(bn.named_parameters().empty());
  bn.eval();  // without running statistics eval still normalises with the batch's, as PyTorch's
  const std::vector<double> m = ops::mean(bn(x), {0, 2, 3}).to_vector<double>();
  for (double v : m) EXPECT_NEAR(v, 0.0, 1e-5);
  EXPECT_THROW(Conv2d(3, 4, 3)(ops::randn({2, 5, 6, 6})), InvalidArgument);
  EXPECT_THROW(bn(ops::randn({2, 4, 3, 3})), InvalidArgument);
}

}  // namespace
}  // namespace loom::nn
