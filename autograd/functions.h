// The differentiable operations users and nn/ call: the same names as
// tensor/ops.h, in namespace loom, each recording a Node when a gradient is
// needed. Non-differentiable helpers (creation, comparisons) are re-exported.
#pragma once

#include <utility>
#include <vector>

#include "autograd/autograd.h"
#include "tensor/ops.h"

namespace loom {

using autograd::NoGradGuard;

// creation and comparisons carry no gradient: the tensor-level versions.
using ops::arange;
using ops::causal_mask;
using ops::eq;
using ops::full;
using ops::full_like;
using ops::ge;
using ops::gt;
using ops::le;
using ops::lt;
using ops::ne;
using ops::ones;
using ops::ones_like;
using ops::rand;
using ops::randint;
using ops::randn;
using ops::zeros;
using ops::zeros_like;

/// A view of t that shares storage and has no autograd history.
Tensor detach(const Tensor& t);

// views (gradients flow back into the base)
Tensor view(const Tensor& t, const Shape& sizes);
Tensor reshape(const Tensor& t, const Shape& sizes);
Tensor permute(const Tensor& t, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1);
Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length);
Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& t, int64_t dim, int64_t index);
Tensor expand(const Tensor& t, const Shape& sizes);
Tensor unsqueeze(const Tensor& t, int64_t dim);
Tensor squeeze(const Tensor& t, int64_t dim);
Tensor flatten(const Tensor& t, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor contiguous(const Tensor& t);
/// dtype conversion; the gradient converts back.
Tensor to(const Tensor& t, DType dtype);
Tensor to(const Tensor& t, Device device);

// elementwise
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, double exponent);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor neg(const Tensor& t);
Tensor abs(const Tensor& t);
Tensor exp(const Tensor& t);
Tensor log(const Tensor& t);
Tensor sqrt(const Tensor& t);
Tensor rsqrt(const Tensor& t);
Tensor tanh(const Tensor& t);
Tensor sigmoid(const Tensor& t);
Tensor relu(const Tensor& t);
Tensor sin(const Tensor& t);
Tensor cos(const Tensor& t);
Tensor clamp(const Tensor& t, double lo, double hi);
Tensor gelu(const Tensor& t, GeluApprox approx = GeluApprox::kNone);
Tensor silu(const Tensor& t);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(const Tensor& a, double b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(const Tensor& a, double b);
Tensor operator/(double a, const Tensor& b);

// selection
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& t, const Tensor& mask, double value);
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim);
std::vector<Tensor> split_with_sizes(const Tensor& t, const std::vector<int64_t>& sizes, int64_t dim);
Tensor index_select(const Tensor& t, int64_t dim, const Tensor& index);

// reductions
Tensor sum(const Tensor& t, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& t, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor var(const Tensor& t, const std::vector<int64_t>& dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor max(const Tensor& t);
/// (values, indices); gradient flows to the argmax positions.
std::pair<Tensor, Tensor> max(const Tensor& t, int64_t dim, bool keepdim = false);
using ops::argmax;

// linear algebra and nn kernels
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
/// gelu(linear(x, w, b), GeluApprox::kTanh) as one op (GPT-2's c_fc + GELU): on CPU
/// bit-identical to the two ops, forward and gradients; on CUDA the bias and GELU run
/// in the cuBLASLt epilogue. A low-precision op under autocast, like linear.
Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());
Tensor softmax(const Tensor& t, int64_t dim);
Tensor log_softmax(const Tensor& t, int64_t dim);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps = 1e-5);
/// Fused residual add + layer norm: returns {sum = x + residual, layer_norm(sum, w, b, eps)}.
/// On CPU bit-identical to add() then layer_norm(), forward and gradients (when both
/// outputs are used, as in a pre-norm block); on CUDA one kernel. Under autocast the
/// norm runs in f32 as layer_norm does; a bf16/f16 sum falls back to the two ops.
std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b,
                                         double eps = 1e-5);
/// Fused residual add + RMS norm, as add_layer_norm: {x + residual, rms_norm(x + residual, w, eps)}.
std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& w, double eps = 1e-6);
Tensor rms_norm(const Tensor& x, const Tensor& w, double eps = 1e-6);
Tensor embedding(const Tensor& weight, const Tensor& indices);
/// Mean cross-entropy of logits (N, V) against target (N); rows equal to ignore_index excluded.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100);
/// Identity when !training or p == 0.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin);
/// Causal scaled-dot-product attention: q (B, H, T, D), k/v (B, Hkv, S, D) with
/// H a multiple of Hkv (grouped-query); scale 1/sqrt(D). Returns (B, H, T, D).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal = true,
                                    double dropout_p = 0.0, bool training = false,
                                    Generator& gen = default_generator());

namespace autograd {
struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
};
/// Compares analytical gradients of sum(f(inputs) * r) for a fixed random r
/// with central finite differences, in f64. Inputs must be f64 leaves that
/// require grad. Returns true when they match; on a mismatch throws
/// InvalidArgument naming the input, element and both values.
bool gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
               const GradcheckOptions& opts = {});
}  // namespace autograd

}  // namespace loom
