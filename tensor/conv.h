// Convolution, pooling and batch-norm ops for NCHW tensors, without gradients
// (autograd/conv.h wraps them), as free functions beside tensor/ops.h's. CPU
// kernels in tensor/cpu/conv.cc for f32 and f64; CUDA tensors are refused
// with Unsupported naming the op (no cuDNN path yet).
#pragma once

#include <array>
#include <utility>

#include "tensor/ops.h"

namespace loom {
// The option structs live in loom (not loom::ops) so that an unqualified conv2d(x, w, b, opts) finds only the
// differentiable loom::conv2d by argument-dependent lookup.

/// Stride, padding, dilation and groups of a 2-D convolution (torch.nn.functional.conv2d).
struct Conv2dOptions {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
};
/// Window, stride, padding, dilation of a 2-D pooling (stride {0, 0}: the kernel size, as PyTorch's None).
struct Pool2dOptions {
  std::array<int64_t, 2> kernel_size{1, 1};
  std::array<int64_t, 2> stride{0, 0};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};  // max_pool2d only
  bool ceil_mode = false;
  bool count_include_pad = true;  // avg_pool2d only
};
}  // namespace loom

namespace loom::ops {

using loom::Conv2dOptions;
using loom::Pool2dOptions;

// Inputs are (N, C, H, W); a wrong rank, channel count or an empty output throws naming the op and shapes.

/// x (N, C, H, W), w (OC, C/groups, KH, KW), b (OC) or undefined -> (N, OC, OH, OW).
/// CPU: im2col + sgemm per image and group (1x1 stride-1 convolutions skip im2col), OpenMP over the batch.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dOptions& opts = {});
/// Gradient of conv2d for its input (shape x_sizes) given dy (N, OC, OH, OW).
Tensor conv2d_backward_input(const Tensor& dy, const Tensor& w, const Shape& x_sizes, const Conv2dOptions& opts);
/// Gradient of conv2d for its weight (shape w_sizes) given dy and the input x.
Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_sizes, const Conv2dOptions& opts);
/// Gradient of conv2d for its bias: dy summed over N, H, W -> (OC).
Tensor conv2d_backward_bias(const Tensor& dy);

/// (values, indices i64): indices are flat positions h*W + w within each input plane, as PyTorch's.
std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, const Pool2dOptions& opts);
/// Scatters dy to the positions in indices; x_sizes is the input's shape.
Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_sizes);
Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opts);
Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_sizes, const Pool2dOptions& opts);
/// Averages over the windows [floor(i*H/OH), ceil((i+1)*H/OH)) as torch's adaptive_avg_pool2d.
Tensor adaptive_avg_pool2d(const Tensor& x, std::array<int64_t, 2> output_size);
Tensor adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_sizes);

/// Per-channel statistics of x (N, C, *): sum and sum of squares over every dim but 1, in f64,
/// packed as one (2*C + 1) f64 tensor [sum..., sumsq..., count] so SyncBatchNorm all-reduces it in one call.
Tensor batch_norm_stats(const Tensor& x);
/// mean and 1/sqrt(var + eps) (biased var) from packed stats, in `dtype`; also the unbiased var (f64) for running
/// stats.
struct BatchNormMoments {
  Tensor mean, invstd;  // (C) in dtype
  Tensor var_unbiased;  // (C) f64
  int64_t count = 0;
};
BatchNormMoments batch_norm_moments(const Tensor& packed_stats, double eps, DType dtype);
/// running = (1 - momentum) * running + momentum * value, in place (running f32 or f64, value any floating).
void batch_norm_update_running_(const Tensor& running, const Tensor& value, double momentum);
/// y = (x - mean) * invstd * w + b over channel dim 1; w, b (C) may be undefined.
Tensor batch_norm_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& w, const Tensor& b);
/// Packed (2*C) f64 [sum(dy)..., sum(dy * (x - mean))...] per channel.
Tensor batch_norm_backward_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean);
/// dx = (dy - mean_dy - (x - mean) * invstd^2 * mean_dy_xmu) * invstd * w with mean_dy, mean_dy_xmu the
/// packed reduce divided by the element count per channel (training); with `reduced` undefined (eval:
/// statistics are constants) dx = dy * invstd * w.
Tensor batch_norm_backward_elemt(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                 const Tensor& w, const Tensor& reduced, int64_t count);
struct BatchNormResult {
  Tensor y;
  Tensor mean, invstd;  // (C) the statistics used (batch's in training, running ones in eval)
};
/// torch.nn.functional.batch_norm: training uses the batch's statistics and, when given, updates the running
/// mean and (unbiased) var with momentum; eval uses the running statistics.
BatchNormResult batch_norm(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& running_mean,
                           const Tensor& running_var, bool training, double momentum, double eps);
/// Gradients (dx, dw, db) of batch_norm; dw/db undefined when w/b were not given (has_weight/has_bias).
NormGrads batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                              const Tensor& invstd, bool training, bool has_bias);

}  // namespace loom::ops
