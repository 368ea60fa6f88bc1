// Which implementation scaled_dot_product_attention picks (autograd/attention.h):
// CUDA tensors without dropout go to the flash-attention entries, the rest as before.
#include <gtest/gtest.h>

#include "autograd/attention.h"

namespace loom::detail {
namespace {

const Device kCuda0{DeviceType::kCUDA, 0};

TEST(SdpaRoute, CpuAlwaysRunsTheFusedKernelInF32OrF64) {
  EXPECT_EQ(sdpa_route(kCPU, DType::bf16, DType::bf16, DType::bf16, 64, 0.0).path, SdpaPath::kCpuFused);
  EXPECT_EQ(sdpa_route(kCPU, DType::bf16, DType::bf16, DType::bf16, 64, 0.0).compute, DType::f32);
  EXPECT_EQ(sdpa_route(kCPU, DType::f32, DType::f64, DType::f32, 7, 0.1).path, SdpaPath::kCpuFused);
  EXPECT_EQ(sdpa_route(kCPU, DType::f32, DType::f64, DType::f32, 7, 0.1).compute, DType::f64);
}

TEST(SdpaRoute, CudaWithoutDropoutRunsFlashAttentionInTheInputDtype) {
  for (DType dt : {DType::bf16, DType::f16, DType::f32}) {
    for (int64_t D : {32, 64, 96, 128}) {
      const SdpaRoute r = sdpa_route(kCuda0, dt, dt, dt, D, 0.0);
      EXPECT_EQ(r.path, SdpaPath::kCudaFused) << dtype_name(dt) << " D " << D;
      EXPECT_EQ(r.compute, dt);
    }
  }
  // mixed inputs meet in f32
  const SdpaRoute mixed = sdpa_route(kCuda0, DType::bf16, DType::f32, DType::bf16, 64, 0.0);
  EXPECT_EQ(mixed.path, SdpaPath::kCudaFused);
  EXPECT_EQ(mixed.compute, DType::f32);
}

TEST(SdpaRoute, CudaKeepsTheComposedOpsForDropoutF64AndOtherHeadDims) {
  EXPECT_EQ(sdpa_route(kCuda0, DType::bf16, DType::bf16, DType::bf16, 64, 0.1).path, SdpaPath::kComposed);
  EXPECT_EQ(sdpa_route(kCuda0, DType::f64, DType::f64, DType::f64, 64, 0.0).path, SdpaPath::kComposed);
  EXPECT_EQ(sdpa_route(kCuda0, DType::f32, DType::f32, DType::f64, 64, 0.0).path, SdpaPath::kComposed);
  for (int64_t D : {8, 16, 80, 256})
    EXPECT_EQ(sdpa_route(kCuda0, DType::bf16, DType::bf16, DType::bf16, D, 0.0).path, SdpaPath::kComposed) << D;
}

}  // namespace
}  // namespace loom::detail
