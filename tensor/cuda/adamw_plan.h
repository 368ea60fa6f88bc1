// Host-side plan of the fused AdamW kernel in tensor/cuda/adamw.cu: the scalars
// of one step, the update of one element (shared by the kernel and the CPU
// tests), how parameters are packed into multi-tensor launches, and the checks
// of the adamw entries' arguments. Plain C++ unless compiled by nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "tensor/cuda_dispatch.h"
#include "tensor/error.h"
#include "tensor/tensor.h"

#if defined(__CUDACC__)
#define LOOM_ADAMW_HD __host__ __device__ __forceinline__
#else
#define LOOM_ADAMW_HD inline
#endif

namespace loom::cuda_detail {

/// The per-step constants of torch.optim.AdamW, rounded to f32 as nn/optim.cc's
/// CPU kernel rounds them.
struct AdamWScalars {
  float decay = 1.f;         // 1 - lr * weight_decay (decoupled decay, applied to p before the step)
  float one_minus_b1 = 0.f;  // exp_avg = lerp(exp_avg, g, 1 - beta1)
  float b2 = 0.f;
  float one_minus_b2 = 0.f;
  float step_size = 0.f;  // lr / (1 - beta1^step)
  float bc2_sqrt = 1.f;   // sqrt(1 - beta2^step)
  float eps = 0.f;
};

inline AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {static_cast<float>(1.0 - lr * weight_decay),
          static_cast<float>(1.0 - beta1),
          static_cast<float>(beta2),
          static_cast<float>(1.0 - beta2),
          static_cast<float>(lr / bc1),
          static_cast<float>(std::sqrt(bc2)),
          static_cast<float>(eps)};
}

/// One element: p *= decay; m = m + (1-b1)(g - m); v = b2 v + (1-b2) g²;
/// p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps), in nn/optim.cc's order.
LOOM_ADAMW_HD void adamw_element(float& p, float g, float& m, float& v, const AdamWScalars& s) {
  const float mi = m + s.one_minus_b1 * (g - m);
  const float vi = s.b2 * v + s.one_minus_b2 * g * g;
  const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
  p = p * s.decay - s.step_size * (mi / denom);
  m = mi;
  v = vi;
}

/// Tensors per multi-tensor launch: the kernel's argument block (pointers, sizes,
/// scalars and block offsets of each) stays under CUDA's 4 KiB parameter limit.
constexpr int kAdamWMaxTensors = 24;
/// Elements one block updates.
constexpr int64_t kAdamWChunk = 8192;
constexpr int kAdamWThreads = 256;

/// One launch: the indices (into the caller's list) of its tensors and, per
/// tensor, the first block of the grid that works on it; block_start has one
/// more entry, the grid size.
struct AdamWBatchPlan {
  std::vector<int64_t> tensors;
  std::vector<int64_t> block_start;
  int64_t blocks() const { return block_start.empty() ? 0 : block_start.back(); }
};

/// Packs tensors of `numels` (in order, skipping empty ones) into launches of
/// at most kAdamWMaxTensors tensors, each tensor cut into kAdamWChunk-element
/// blocks.
inline std::vector<AdamWBatchPlan> plan_adamw_batches(const std::vector<int64_t>& numels) {
  std::vector<AdamWBatchPlan> plans;
  for (size_t i = 0; i < numels.size(); ++i) {
    if (numels[i] <= 0) continue;
    if (plans.empty() || static_cast<int>(plans.back().tensors.size()) == kAdamWMaxTensors) {
      plans.emplace_back();
      plans.back().block_start.push_back(0);
    }
    AdamWBatchPlan& b = plans.back();
    b.tensors.push_back(static_cast<int64_t>(i));
    b.block_start.push_back(b.block_start.back() + (numels[i] + kAdamWChunk - 1) / kAdamWChunk);
  }
  return plans;
}

/// The tensor block `blk` of a launch works on: the t with block_start[t] <= blk
/// < block_start[t + 1] among `count` tensors (a linear scan: count <= 24).
LOOM_ADAMW_HD int adamw_block_tensor(const int64_t* block_start, int count, int64_t blk) {
  int t = 0;
  while (t + 1 < count && block_start[t + 1] <= blk) ++t;
  return t;
}

/// Checks entry `index` of an adamw / adamw_multi call against the contract:
/// p, exp_avg, exp_avg_sq f32 contiguous of one numel; grad f32 or bf16 of that
/// numel, contiguous; p_lowp undefined or bf16 contiguous of that numel; all on
/// `device`; step >= 1. Throws InvalidArgument naming the parameter and the operand.
inline void check_adamw_param(const char* op, const detail::AdamWParam& a, int64_t index, const Device& device) {
  LOOM_CHECK(a.p.defined() && a.grad.defined() && a.exp_avg.defined() && a.exp_avg_sq.defined(), op, ": parameter ",
             index, " lacks p, grad, exp_avg or exp_avg_sq");
  const int64_t n = a.p.numel();
  auto expect = [&](const Tensor& t, const char* what, bool dtype_ok, const char* dtypes) {
    LOOM_CHECK(dtype_ok, op, ": parameter ", index, ": ", what, " is ", dtype_name(t.dtype()), ", expected ", dtypes);
    LOOM_CHECK(t.numel() == n, op, ": parameter ", index, ": ", what, " has ", t.numel(), " elements ",
               shape_str(t.sizes()), ", p has ", n, " ", shape_str(a.p.sizes()));
    LOOM_CHECK(t.is_contiguous(), op, ": parameter ", index, ": ", what, " ", shape_str(t.sizes()),
               " must be contiguous");
    LOOM_CHECK(t.device() == device, op, ": parameter ", index, ": ", what, " is on ", t.device().str(), ", expected ",
               device.str());
  };
  expect(a.p, "p", a.p.dtype() == DType::f32, "f32");
  expect(a.grad, "grad", a.grad.dtype() == DType::f32 || a.grad.dtype() == DType::bf16, "f32 or bf16");
  expect(a.exp_avg, "exp_avg", a.exp_avg.dtype() == DType::f32, "f32");
  expect(a.exp_avg_sq, "exp_avg_sq", a.exp_avg_sq.dtype() == DType::f32, "f32");
  if (a.p_lowp.defined()) expect(a.p_lowp, "p_lowp", a.p_lowp.dtype() == DType::bf16, "bf16");
  LOOM_CHECK(a.step >= 1, op, ": parameter ", index, ": step must be >= 1, got ", a.step);
}

}  // namespace loom::cuda_detail
