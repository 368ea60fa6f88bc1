// Host-side plan of linear / linear_gelu on CUDA (tensor/cuda/matmul.cu): whether
// the bias / bias + GELU epilogue is fused into the cuBLASLt matmul or run
// unfused (cuBLAS gemm, then bias_gelu_kernel), from the operands' addresses and
// leading dimensions and, after the heuristic, from cublasLtMatmul's status.
// Plain C++ (no CUDA header), so the decision table is tested on the CPU
// (tests/tensor/test_cuda_linear_plan.cc).
#pragma once

#include <cstdint>

namespace loom::cuda_detail {

/// The alignment in bytes every pointer of a fused linear must have: cuBLASLt's
/// epilogue kernels read the bias vector and write the GELU aux matrix with
/// 16-byte vector accesses, and an algorithm the heuristic returned for aligned
/// A/B/C/D may still assume it.
constexpr uint32_t kLtAlignBytes = 16;

/// Largest power of two (up to 256) dividing the address: the alignment cuBLASLt may assume.
inline uint32_t pointer_alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && (v % a) != 0) a >>= 1;
  return a;
}

/// The operands of out (M, N) = x (M, K) @ w (N, K)^T [+ bias] [-> gelu], all
/// row-major and contiguous, as the fusion decision sees them.
struct LinearOperands {
  const void* w = nullptr;     // cuBLASLt's A: (K, N) column-major, ld K
  const void* x = nullptr;     // cuBLASLt's B: (K, M) column-major, ld K
  const void* out = nullptr;   // C and D: (N, M) column-major, ld N
  const void* bias = nullptr;  // N elements; null: no bias
  const void* aux = nullptr;   // gelu_pre (M, N), ld N; null: no GELU
  int64_t M = 0, N = 0, K = 0;
  int64_t element_size = 4;  // bytes of one element (2 for bf16/f16, 8 for f64)
};

/// Why a linear is not fused (kFused when it may be).
enum class LinearFusion {
  kFused,             // try cuBLASLt with the epilogue
  kUnalignedPointer,  // A, B, C/D, bias or aux not 16-byte aligned
  kUnalignedLd,       // a leading dimension (K for A and B, N for C/D and aux) is not a multiple of 16 bytes
  kAuxLd,             // GELU aux leading dimension N not a multiple of 8 elements (cuBLASLt's rule)
  kEmpty,             // K == 0 (no product: the unfused path writes the bias / zeros)
};

/// Before the heuristic: may this linear run fused through cuBLASLt? Every
/// pointer cuBLASLt touches (A, B, C/D, bias, aux) must be 16-byte aligned and
/// every leading dimension in bytes a multiple of 16; the GELU aux leading
/// dimension must also be a multiple of 8 elements. Anything else runs the
/// unfused path, which gives the same results.
inline LinearFusion plan_linear_fusion(const LinearOperands& o) {
  if (o.K == 0) return LinearFusion::kEmpty;
  if (o.aux != nullptr && o.N % 8 != 0) return LinearFusion::kAuxLd;
  const void* ptrs[] = {o.w, o.x, o.out, o.bias, o.aux};
  for (const void* p : ptrs)
    if (p != nullptr && pointer_alignment(p) < kLtAlignBytes) return LinearFusion::kUnalignedPointer;
  if ((o.K * o.element_size) % kLtAlignBytes != 0 || (o.N * o.element_size) % kLtAlignBytes != 0)
    return LinearFusion::kUnalignedLd;
  return LinearFusion::kFused;
}

/// What the status of the fused cublasLtMatmul (after a successful heuristic) means.
enum class LtMatmulOutcome {
  kDone,        // success: the product and its epilogue are written
  kRunUnfused,  // cuBLASLt declined (not supported / invalid value for this case): run the unfused path and
                // remember to skip the fused attempt for this shape
  kFail,        // any other error (out of memory, execution failure, ...): throw
};

/// Status codes, as cublas_api.h numbers them, that the plan needs (kept here so
/// the plan compiles without CUDA headers; matmul.cu static_asserts they match).
constexpr int kCublasStatusSuccess = 0;
constexpr int kCublasStatusInvalidValue = 7;
constexpr int kCublasStatusNotSupported = 15;

/// Maps cublasLtMatmul's status to what linear does next: a case cuBLASLt does
/// not support (CUBLAS_STATUS_NOT_SUPPORTED, or INVALID_VALUE, which some
/// releases return for an epilogue/alignment combination the heuristic accepted)
/// falls back to the unfused path; other failures are errors.
inline LtMatmulOutcome lt_matmul_outcome(int status) {
  if (status == kCublasStatusSuccess) return LtMatmulOutcome::kDone;
  if (status == kCublasStatusNotSupported || status == kCublasStatusInvalidValue) return LtMatmulOutcome::kRunUnfused;
  return LtMatmulOutcome::kFail;
}

}  // namespace loom::cuda_detail
