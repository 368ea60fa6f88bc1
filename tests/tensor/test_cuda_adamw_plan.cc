// The host-side plan of the CUDA fused AdamW (tensor/cuda/adamw_plan.h): launches
// cover every element of every parameter once, and the entries' argument checks
// name the parameter and operand. The kernel itself needs a GPU; its element
// update is checked against nn::AdamW in tests/nn/adamw_cuda_element_test.cc.
#include "tensor/cuda/adamw_plan.h"

#include <gtest/gtest.h>

#include <string>

#include "tensor/ops.h"

namespace loom::cuda_detail {
namespace {

TEST(CudaAdamWPlan, LaunchesCoverEveryElementOnceAndSkipEmptyTensors) {
  std::vector<int64_t> numels = {0, 1, kAdamWChunk, kAdamWChunk + 1, 3 * kAdamWChunk - 5, 0, 77};
  for (int i = 0; i < 40; ++i) numels.push_back(1000 * i + 3);
  const std::vector<AdamWBatchPlan> plans = plan_adamw_batches(numels);
  std::vector<std::vector<int>> hits(numels.size());
  for (size_t i = 0; i < numels.size(); ++i) hits[i].assign(static_cast<size_t>(numels[i]), 0);
  size_t tensors = 0;
  for (const AdamWBatchPlan& plan : plans) {
    ASSERT_LE(static_cast<int>(plan.tensors.size()), kAdamWMaxTensors);
    ASSERT_EQ(plan.block_start.size(), plan.tensors.size() + 1);
    tensors += plan.tensors.size();
    const int count = static_cast<int>(plan.tensors.size());
    for (int64_t blk = 0; blk < plan.blocks(); ++blk) {  // as the kernel maps its blocks
      const int t = adamw_block_tensor(plan.block_start.data(), count, blk);
      const int64_t n = numels[static_cast<size_t>(plan.tensors[static_cast<size_t>(t)])];
      const int64_t begin = (blk - plan.block_start[static_cast<size_t>(t)]) * kAdamWChunk;
      ASSERT_LT(begin, n) << "block " << blk << " starts past its tensor";
      for (int64_t i = begin; i < std::min(n, begin + kAdamWChunk); ++i)
        ++hits[static_cast<size_t>(plan.tensors[static_cast<size_t>(t)])][static_cast<size_t>(i)];
    }
  }
  EXPECT_EQ(tensors, numels.size() - 2);  // the two empty ones
  for (size_t i = 0; i < numels.size(); ++i)
    for (size_t e = 0; e < hits[i].size(); ++e) ASSERT_EQ(hits[i][e], 1) << "tensor " << i << " element " << e;
  EXPECT_EQ(plans.size(), 2u);  // 45 tensors at 24 per launch
  EXPECT_TRUE(plan_adamw_batches({}).empty());
  EXPECT_TRUE(plan_adamw_batches({0, 0}).empty());
}

TEST(CudaAdamWPlan, ScalarsFollowTorchBiasCorrection) {
  const AdamWScalars s = adamw_scalars(0.01, 0.9, 0.999, 1e-8, 0.1, 3);
  EXPECT_FLOAT_EQ(s.decay, 1.0f - 0.001f);
  EXPECT_FLOAT_EQ(s.one_minus_b1, 0.1f);
  EXPECT_FLOAT_EQ(s.b2, 0.999f);
  EXPECT_FLOAT_EQ(s.one_minus_b2, 0.001f);
  EXPECT_FLOAT_EQ(s.step_size, static_cast<float>(0.01 / (1.0 - 0.9 * 0.9 * 0.9)));
  EXPECT_FLOAT_EQ(s.bc2_sqrt, static_cast<float>(std::sqrt(1.0 - 0.999 * 0.999 * 0.999)));
  EXPECT_FLOAT_EQ(s.eps, 1e-8f);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaAdamWPlan, ParamChecksNameTheParameterAndOperand) {
  auto make = [] {
    return detail::AdamWParam{
        ops::zeros({4, 3}), ops::zeros({4, 3}), ops::zeros({4, 3}), ops::zeros({4, 3}), Tensor(), 0.1, 0.01, 1};
  };
  EXPECT_NO_THROW(check_adamw_param("adamw", make(), 0, kCPU));
  detail::AdamWParam bf16_grad = make();
  bf16_grad.grad = ops::zeros({12}, DType::bf16);  // any shape of the same numel
  bf16_grad.p_lowp = ops::zeros({4, 3}, DType::bf16);
  EXPECT_NO_THROW(check_adamw_param("adamw", bf16_grad, 0, kCPU));

  detail::AdamWParam bad = make();
  bad.exp_avg_sq = ops::zeros({4, 4});
  const std::string msg = message_of([&] { check_adamw_param("adamw", bad, 7, kCPU); });
  EXPECT_NE(msg.find("parameter 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("exp_avg_sq"), std::string::npos) << msg;

  bad = make();
  bad.p = ops::zeros({4, 3}, DType::bf16);
  EXPECT_THROW(check_adamw_param("adamw", bad, 0, kCPU), InvalidArgument);
  bad = make();
  bad.grad = ops::zeros({4, 3}, DType::f16);
  EXPECT_THROW(check_adamw_param("adamw", bad, 0, kCPU), InvalidArgument);
  bad = make();
  bad.exp_avg = ops::transpose(ops::zeros({3, 4}), 0, 1);
  EXPECT_NE(message_of([&] { check_adamw_param("adamw", bad, 0, kCPU); }).find("contiguous"), std::string::npos);
  bad = make();
  bad.p_lowp = ops::zeros({4, 3});  // f32, not bf16
  EXPECT_THROW(check_adamw_param("adamw", bad, 0, kCPU), InvalidArgument);
  bad = make();
  bad.step = 0;
  EXPECT_THROW(check_adamw_param("adamw", bad, 0, kCPU), InvalidArgument);
  const Device cuda0{DeviceType::kCUDA, 0};
  EXPECT_NE(message_of([&] { check_adamw_param("adamw", make(), 0, cuda0); }).find("cuda"), std::string::npos);
}

}  // namespace
}  // namespace loom::cuda_detail
