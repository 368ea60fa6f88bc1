// The host-side fusion decision of CUDA linear / linear_gelu
// (tensor/cuda/linear_plan.h): which operand layouts may take cuBLASLt's bias /
// GELU epilogue and what a declined cublasLtMatmul leads to. That the unfused
// path gives the fused path's numbers needs a GPU (tests/gpu).
#include "tensor/cuda/linear_plan.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace loom::cuda_detail {
namespace {

const void* at(uintptr_t address) { return reinterpret_cast<const void*>(address); }

// f32, M = 4, N = 64, K = 32; every pointer 256-byte aligned, bias and aux set.
LinearOperands aligned() {
  LinearOperands o;
  o.w = at(0x10000);
  o.x = at(0x20000);
  o.out = at(0x30000);
  o.bias = at(0x40000);
  o.aux = at(0x50000);
  o.M = 4;
  o.N = 64;
  o.K = 32;
  o.element_size = 4;
  return o;
}

TEST(CudaLinearPlan, PointerAlignmentIsTheLargestPowerOfTwoUpTo256) {
  EXPECT_EQ(pointer_alignment(at(0x1000)), 256u);
  EXPECT_EQ(pointer_alignment(at(0x1010)), 16u);
  EXPECT_EQ(pointer_alignment(at(0x1008)), 8u);
  EXPECT_EQ(pointer_alignment(at(0x1002)), 2u);
  EXPECT_EQ(pointer_alignment(at(0x1001)), 1u);
}

TEST(CudaLinearPlan, AlignedOperandsAreFused) {
  EXPECT_EQ(plan_linear_fusion(aligned()), LinearFusion::kFused);
  LinearOperands plain = aligned();
  plain.bias = nullptr;
  plain.aux = nullptr;
  EXPECT_EQ(plan_linear_fusion(plain), LinearFusion::kFused);
  LinearOperands half = aligned();
  half.element_size = 2;  // K = 32 and N = 64 halves: 64 and 128 bytes
  EXPECT_EQ(plan_linear_fusion(half), LinearFusion::kFused);
}

TEST(CudaLinearPlan, EachMisalignedPointerFallsBackToTheUnfusedPath) {
  // A view at an offset of 8 bytes (two f32) into an aligned buffer: each of
  // A, B, C/D, bias and the GELU aux in turn.
  const void* LinearOperands::*fields[] = {&LinearOperands::w, &LinearOperands::x, &LinearOperands::out,
                                           &LinearOperands::bias, &LinearOperands::aux};
  for (auto field : fields) {
    LinearOperands o = aligned();
    o.*field = at(reinterpret_cast<uintptr_t>(o.*field) + 8);
    EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kUnalignedPointer);
  }
  // A bias off by one bf16 element (2 bytes), the case that slipped through before.
  LinearOperands o = aligned();
  o.element_size = 2;
  o.bias = at(0x40002);
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kUnalignedPointer);
}

TEST(CudaLinearPlan, MisalignedLeadingDimensionsFallBack) {
  LinearOperands o = aligned();
  o.aux = nullptr;
  o.K = 33;  // 132 bytes: A's and B's columns start off 16-byte boundaries
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kUnalignedLd);
  o = aligned();
  o.aux = nullptr;
  o.N = 6;  // 24 bytes: C/D's columns
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kUnalignedLd);
  o = aligned();
  o.element_size = 2;
  o.K = 12;  // 24 bytes of bf16
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kUnalignedLd);
}

TEST(CudaLinearPlan, GeluAuxNeedsALeadingDimensionDivisibleBy8) {
  LinearOperands o = aligned();
  o.N = 12;  // 48 bytes: aligned, but not a multiple of 8 elements
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kAuxLd);
  o.aux = nullptr;  // without GELU the same N is fine
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kFused);
}

TEST(CudaLinearPlan, EmptyInnerDimensionIsNotAProduct) {
  LinearOperands o = aligned();
  o.K = 0;
  EXPECT_EQ(plan_linear_fusion(o), LinearFusion::kEmpty);
}

TEST(CudaLinearPlan, DeclinedMatmulFallsBackOtherErrorsThrow) {
  EXPECT_EQ(lt_matmul_outcome(kCublasStatusSuccess), LtMatmulOutcome::kDone);
  EXPECT_EQ(lt_matmul_outcome(kCublasStatusNotSupported), LtMatmulOutcome::kRunUnfused);
  EXPECT_EQ(lt_matmul_outcome(kCublasStatusInvalidValue), LtMatmulOutcome::kRunUnfused);
  EXPECT_EQ(lt_matmul_outcome(3), LtMatmulOutcome::kFail);   // CUBLAS_STATUS_ALLOC_FAILED
  EXPECT_EQ(lt_matmul_outcome(13), LtMatmulOutcome::kFail);  // CUBLAS_STATUS_EXECUTION_FAILED
  EXPECT_EQ(lt_matmul_outcome(14), LtMatmulOutcome::kFail);  // CUBLAS_STATUS_INTERNAL_ERROR
}

}  // namespace
}  // namespace loom::cuda_detail
