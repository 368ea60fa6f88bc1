// Gradient clipping by total norm, as torch.nn.utils.clip_grad_norm_.
#pragma once

#include <limits>
#include <vector>

#include "tensor/tensor.h"

namespace loom::nn {

/// Computes the norm of all gradients together (as if concatenated; parameters
/// without a gradient are skipped), accumulated in f64, and when it exceeds
/// max_norm scales every gradient in place by max_norm / (norm + 1e-6) (PyTorch
/// multiplies by min(1, that), so gradients below the limit are untouched).
/// norm_type is 2 (Euclidean) or infinity (max |g|). Returns the total norm
/// before clipping. Throws for any other norm_type or a negative max_norm.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0);

/// The scaling step of clip_grad_norm_ given a total norm computed elsewhere (e.g. across ranks): when total_norm
/// exceeds max_norm, multiplies every defined gradient in place by max_norm / (total_norm + 1e-6), rounded to the
/// gradient's dtype first, so that single-rank and sharded clipping round alike (torch.nn.utils.clip_grads_with_norm_).
void clip_grads_with_norm_(const std::vector<Tensor>& params, double max_norm, double total_norm);

/// The total gradient norm without clipping.
double grad_norm(const std::vector<Tensor>& params, double norm_type = 2.0);

}  // namespace loom::nn
