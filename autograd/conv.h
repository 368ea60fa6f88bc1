// Differentiable convolution, pooling and batch norm (NCHW), as torch.nn.functional's:
// each runs the tensor op from tensor/ops.h and records its backward.
#pragma once

#include <array>

#include "autograd/autograd.h"
#include "tensor/conv.h"

namespace loom {

/// x (N, C, H, W), w (OC, C/groups, KH, KW), b (OC) or undefined -> (N, OC, OH, OW); gradients for x, w and b.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b = Tensor(), const Conv2dOptions& opts = {});
/// Max over each window; the gradient flows to the (first) maximum of each window.
Tensor max_pool2d(const Tensor& x, const Pool2dOptions& opts);
/// Mean over each window (count_include_pad and ceil_mode as PyTorch's).
Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opts);
/// Mean over adaptive windows giving an output of output_size (H, W).
Tensor adaptive_avg_pool2d(const Tensor& x, std::array<int64_t, 2> output_size);
/// torch.nn.functional.batch_norm over channel dim 1 of x (N, C, *): in training the batch's statistics are used
/// (and running_mean/var, when given, updated in place with momentum, var unbiased); in eval the running ones.
/// Gradients for x, weight and bias.
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                  const Tensor& bias, bool training, double momentum = 0.1, double eps = 1e-5);

}  // namespace loom
