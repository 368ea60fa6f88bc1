// Fused AdamW (torch.optim.AdamW semantics, as nn/optim.cc computes them) over
// flat f32 parameters: one pass reads p, grad, exp_avg, exp_avg_sq and writes
// p, the moments and optionally a bf16 copy of p. Multi-tensor apply: one launch
// updates up to kAdamWMaxTensors parameters, each cut into kAdamWChunk-element
// blocks. The plan, the element update and the checks: tensor/cuda/adamw_plan.h.
#include <vector>

#include "tensor/cuda/adamw_plan.h"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

/// The kernel's argument block (passed by value, about 2 KiB).
struct AdamWLaunchArgs {
  float* p[kAdamWMaxTensors];
  const void* grad[kAdamWMaxTensors];  // f32 or bf16, as the kernel's template argument says
  float* m[kAdamWMaxTensors];
  float* v[kAdamWMaxTensors];
  __nv_bfloat16* p_lowp[kAdamWMaxTensors];  // nullptr: no low-precision copy
  int64_t n[kAdamWMaxTensors];
  AdamWScalars s[kAdamWMaxTensors];
  int64_t block_start[kAdamWMaxTensors + 1];
  int count = 0;
};

/// Block b updates elements [chunk * kAdamWChunk, +kAdamWChunk) of the tensor t
/// with block_start[t] <= b < block_start[t + 1].
template <typename G>
__global__ void __launch_bounds__(kAdamWThreads) adamw_kernel(const AdamWLaunchArgs args) {
  const int64_t blk = blockIdx.x;
  const int t = adamw_block_tensor(args.block_start, args.count, blk);
  const int64_t begin = (blk - args.block_start[t]) * kAdamWChunk;
  const int64_t n = args.n[t];
  const int64_t end = begin + kAdamWChunk < n ? begin + kAdamWChunk : n;
  float* __restrict__ p = args.p[t];
  const G* __restrict__ g = static_cast<const G*>(args.grad[t]);
  float* __restrict__ m = args.m[t];
  float* __restrict__ v = args.v[t];
  __nv_bfloat16* __restrict__ lowp = args.p_lowp[t];
  const AdamWScalars s = args.s[t];
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    adamw_element(pi, load_acc(g + i), mi, vi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (lowp) lowp[i] = __float2bfloat16_rn(pi);
  }
}

/// Launches the parameters `which` (indices into params, all with grads of type G).
template <typename G>
void launch_adamw(const std::vector<detail::AdamWParam>& params, const std::vector<int64_t>& which, double beta1,
                  double beta2, double eps, cudaStream_t stream) {
  std::vector<int64_t> numels;
  numels.reserve(which.size());
  for (int64_t i : which) numels.push_back(params[static_cast<size_t>(i)].p.numel());
  for (const AdamWBatchPlan& plan : plan_adamw_batches(numels)) {
    AdamWLaunchArgs args;
    args.count = static_cast<int>(plan.tensors.size());
    for (int j = 0; j < args.count; ++j) {
      const detail::AdamWParam& a = params[static_cast<size_t>(which[static_cast<size_t>(plan.tensors[j])])];
      args.p[j] = dptr<float>(a.p);
      args.grad[j] = a.grad.data_ptr();
      args.m[j] = dptr<float>(a.exp_avg);
      args.v[j] = dptr<float>(a.exp_avg_sq);
      args.p_lowp[j] = a.p_lowp.defined() ? dptr<__nv_bfloat16>(a.p_lowp) : nullptr;
      args.n[j] = a.p.numel();
      args.s[j] = adamw_scalars(a.lr, beta1, beta2, eps, a.weight_decay, a.step);
      args.block_start[j] = plan.block_start[static_cast<size_t>(j)];
    }
    args.block_start[args.count] = plan.blocks();
    LOOM_CHECK_T(Unsupported, plan.blocks() <= 0x7fffffffLL, "adamw (CUDA): ", plan.blocks(),
                 " blocks exceed CUDA's grid limit");
    adamw_kernel<G><<<static_cast<unsigned>(plan.blocks()), kAdamWThreads, 0, stream>>>(args);
    LOOM_CUDA_LAUNCH_CHECK("adamw_kernel");
  }
}

}  // namespace

void adamw_multi(const std::vector<detail::AdamWParam>& params, double beta1, double beta2, double eps) {
  const char* op = "adamw (CUDA)";
  if (params.empty()) return;
  const Device device = params.front().p.device();
  LOOM_CHECK(device.is_cuda(), op, ": parameters on ", device.str(), ", expected a CUDA device");
  std::vector<int64_t> f32_grads, bf16_grads;
  for (size_t i = 0; i < params.size(); ++i) {
    check_adamw_param(op, params[i], static_cast<int64_t>(i), device);
    (params[i].grad.dtype() == DType::bf16 ? bf16_grads : f32_grads).push_back(static_cast<int64_t>(i));
  }
  DeviceScope scope(device.index);
  cudaStream_t stream = current_stream(device.index);
  if (!f32_grads.empty()) launch_adamw<float>(params, f32_grads, beta1, beta2, eps, stream);
  if (!bf16_grads.empty()) launch_adamw<__nv_bfloat16>(params, bf16_grads, beta1, beta2, eps, stream);
}

void adamw(const Tensor& p, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& p_lowp,
           double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  adamw_multi({detail::AdamWParam{p, grad, exp_avg, exp_avg_sq, p_lowp, lr, weight_decay, step}}, beta1, beta2, eps);
}

}  // namespace loom::cuda_detail

namespace loom::detail {

void register_adamw(CudaKernels& kernels) {
  kernels.adamw = &cuda_detail::adamw;
  kernels.adamw_multi = &cuda_detail::adamw_multi;
}

}  // namespace loom::detail
