// Tensor operations as free functions, without gradients (autograd/ wraps the
// differentiable ones). Each dispatches on its inputs' device; a mismatch of
// device, dtype or shape throws InvalidArgument naming the op and the shapes.
// Binary ops broadcast like NumPy/PyTorch. Results are new contiguous tensors
// unless the function is documented as a view.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace loom {
/// GELU's form: exact (erf) or the tanh approximation. Declared in loom (not
/// loom::ops) so an unqualified gelu(x, GeluApprox::kTanh) finds only the
/// differentiable loom::gelu by argument-dependent lookup.
enum class GeluApprox { kNone, kTanh };
}  // namespace loom

namespace loom::ops {

// ---------------------------------------------------------------- creation
Tensor zeros(const Shape& sizes, DType dtype = DType::f32, Device device = kCPU);
Tensor ones(const Shape& sizes, DType dtype = DType::f32, Device device = kCPU);
Tensor full(const Shape& sizes, double value, DType dtype = DType::f32, Device device = kCPU);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
Tensor empty_like(const Tensor& t);
/// [start, end) in steps of step; i64 by default.
Tensor arange(double start, double end, double step = 1, DType dtype = DType::i64, Device device = kCPU);
Tensor arange(int64_t end, DType dtype = DType::i64, Device device = kCPU);
/// A 0-dim tensor holding value.
Tensor scalar_tensor(double value, DType dtype = DType::f32, Device device = kCPU);
/// Uniform in [0, 1).
Tensor rand(const Shape& sizes, Generator& gen = default_generator(), DType dtype = DType::f32, Device device = kCPU);
/// Standard normal (Box–Muller on Philox draws).
Tensor randn(const Shape& sizes, Generator& gen = default_generator(), DType dtype = DType::f32, Device device = kCPU);
/// Uniform integers in [low, high).
Tensor randint(int64_t low, int64_t high, const Shape& sizes, Generator& gen = default_generator(),
               DType dtype = DType::i64, Device device = kCPU);
void uniform_(const Tensor& t, double low, double high, Generator& gen = default_generator());
void normal_(const Tensor& t, double mean, double std, Generator& gen = default_generator());

// ---------------------------------------------------------------- copies and conversion
/// Copies src into dst elementwise, broadcasting src and converting dtype; dst may be a view.
void copy_(const Tensor& dst, const Tensor& src);
void fill_(const Tensor& t, double value);
void zero_(const Tensor& t);
Tensor clone(const Tensor& t);
/// t itself when already contiguous, else a contiguous copy.
Tensor contiguous(const Tensor& t);
/// Converts dtype (t itself when it already has it).
Tensor to(const Tensor& t, DType dtype);
/// Moves to device (t itself when already there).
Tensor to(const Tensor& t, Device device);

// ---------------------------------------------------------------- views (share storage)
/// New shape with the same numel; one size may be -1. Throws when strides don't allow a view.
Tensor view(const Tensor& t, const Shape& sizes);
/// A view when strides allow, else a contiguous copy.
Tensor reshape(const Tensor& t, const Shape& sizes);
Tensor permute(const Tensor& t, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1);
/// Elements [start, start+length) of dim.
Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length);
/// Elements start, start+step, … < end of dim (negative start/end count from the end).
Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
/// Removes dim, taking index.
Tensor select(const Tensor& t, int64_t dim, int64_t index);
/// Broadcasts size-1 dims to sizes (stride 0); -1 keeps a size.
Tensor expand(const Tensor& t, const Shape& sizes);
Tensor unsqueeze(const Tensor& t, int64_t dim);
Tensor squeeze(const Tensor& t, int64_t dim);
/// Flattens dims [start_dim, end_dim] into one.
Tensor flatten(const Tensor& t, int64_t start_dim = 0, int64_t end_dim = -1);
/// The broadcast shape of a and b; throws naming op and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// ---------------------------------------------------------------- elementwise (broadcasting)
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor pow(const Tensor& a, double exponent);
/// b - a for a scalar b (rsub).
Tensor rsub(const Tensor& a, double b);
/// b / a for a scalar b.
Tensor rdiv(const Tensor& a, double b);
// comparisons give u8 (0/1)
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
// in place (a is written; its shape must be the broadcast shape)
void add_(const Tensor& a, const Tensor& b, double alpha = 1.0);
void mul_(const Tensor& a, const Tensor& b);
void mul_(const Tensor& a, double b);
void add_(const Tensor& a, double b);
/// a += alpha * b * c (elementwise).
void addcmul_(const Tensor& a, const Tensor& b, const Tensor& c, double alpha = 1.0);
/// a += alpha * b / c.
void addcdiv_(const Tensor& a, const Tensor& b, const Tensor& c, double alpha = 1.0);
/// a = a + weight * (b - a).
void lerp_(const Tensor& a, const Tensor& b, double weight);

// ---------------------------------------------------------------- unary
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
/// Clamps to [lo, hi].
Tensor clamp(const Tensor& t, double lo, double hi);
using loom::GeluApprox;
Tensor gelu(const Tensor& t, GeluApprox approx = GeluApprox::kNone);
Tensor silu(const Tensor& t);
/// d(gelu)/dx * grad.
Tensor gelu_backward(const Tensor& grad, const Tensor& x, GeluApprox approx = GeluApprox::kNone);
Tensor silu_backward(const Tensor& grad, const Tensor& x);

// ---------------------------------------------------------------- selection
/// cond ? a : b, broadcasting all three; cond is u8.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
/// t with value where mask (u8, broadcastable to t) is nonzero.
Tensor masked_fill(const Tensor& t, const Tensor& mask, double value);
/// (T, T) u8 mask, 1 above the diagonal (the positions a causal query must not see).
Tensor causal_mask(int64_t T, Device device = kCPU);
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim);
/// Views of consecutive chunks of `split_size` along dim (the last may be smaller).
std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim);
/// Views of chunks with the given sizes along dim (must sum to the dim's size).
std::vector<Tensor> split_with_sizes(const Tensor& t, const std::vector<int64_t>& sizes, int64_t dim);
/// out[i] = t[index[i]] along dim (index i64, 1-D).
Tensor index_select(const Tensor& t, int64_t dim, const Tensor& index);

// ---------------------------------------------------------------- reductions
/// Sum over dims (empty dims: all). Integer inputs sum in i64.
Tensor sum(const Tensor& t, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& t, const std::vector<int64_t>& dims = {}, bool keepdim = false);
/// Variance with Bessel's correction (correction=1) by default.
Tensor var(const Tensor& t, const std::vector<int64_t>& dims = {}, int64_t correction = 1, bool keepdim = false);
/// Max of all elements (0-dim).
Tensor max(const Tensor& t);
/// (values, indices i64) along dim.
std::pair<Tensor, Tensor> max(const Tensor& t, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& t, int64_t dim, bool keepdim = false);
/// Sums t down to `sizes` (the inverse of broadcasting); used for gradients.
Tensor sum_to(const Tensor& t, const Shape& sizes);
/// Euclidean norm of all elements, accumulated in f64, as a 0-dim f32 tensor.
Tensor norm(const Tensor& t);

// ---------------------------------------------------------------- linear algebra
/// Matrix product with PyTorch's matmul semantics (1-D, 2-D, batched with
/// broadcast batch dims). Transposed (column-major) operands go to BLAS without a copy.
/// bf16/f16 are computed in f32. Throws naming both shapes when inner dims differ.
Tensor matmul(const Tensor& a, const Tensor& b);
/// x @ w^T + b for x (..., in), w (out, in), b (out) or undefined.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);
struct LinearGeluResult {
  Tensor out;  // gelu_tanh(pre), same shape and dtype as pre
  Tensor pre;  // x @ w^T + b (..., out), the pre-activation saved for gelu_backward
};
/// gelu(linear(x, w, b), GeluApprox::kTanh), keeping the pre-activation (GPT-2's
/// c_fc + GELU). On CPU it is exactly linear() then gelu() (same kernels, same
/// bits); on CUDA one cuBLASLt matmul with the bias and GELU in its epilogue.
LinearGeluResult linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b);
/// out = beta*out + alpha * op(a) @ op(b) for 2-D a, b (views allowed), out contiguous 2-D.
void gemm_(const Tensor& out, const Tensor& a, const Tensor& b, double alpha = 1.0, double beta = 0.0);

// ---------------------------------------------------------------- neural-network kernels
Tensor softmax(const Tensor& t, int64_t dim);
Tensor log_softmax(const Tensor& t, int64_t dim);
/// Gradient of softmax given its output y.
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim);
/// Gradient of log_softmax given its output y.
Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim);

struct NormResult {
  Tensor y;     // same shape as x
  Tensor mean;  // (rows) f32; undefined for rms_norm
  Tensor rstd;  // (rows) f32
};
/// Normalises over the last dim; w and b of shape (C) may be undefined.
NormResult layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps);
struct NormGrads {
  Tensor dx, dw, db;  // dw/db undefined when w/b were
};
NormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                              const Tensor& rstd, bool has_bias);
NormResult rms_norm(const Tensor& x, const Tensor& w, double eps);
NormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd);

struct AddNormResult {
  Tensor sum;   // x + residual, the residual stream that goes on
  Tensor y;     // norm(sum)
  Tensor mean;  // (rows) f32; undefined for add_rms_norm
  Tensor rstd;  // (rows) f32
};
/// Fused residual add + layer norm: sum = x + residual, y = layer_norm(sum, w, b, eps).
/// On CPU exactly add() then layer_norm() (same bits); on CUDA one kernel when x and
/// residual have one shape and dtype (otherwise the same two ops). The backward is
/// layer_norm_backward on `sum`.
AddNormResult add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b, double eps);
/// Fused residual add + RMS norm, as add_layer_norm.
AddNormResult add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& w, double eps);

/// weight (V, C), indices i64/i32 (...) -> (..., C). Out-of-range index names it and V.
Tensor embedding(const Tensor& weight, const Tensor& indices);
/// Gradient for weight: (V, C) with rows accumulated from grad (..., C).
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights);

struct CrossEntropyResult {
  Tensor loss;        // 0-dim, mean over rows whose target != ignore_index
  Tensor lse;         // (N) f32 log-sum-exp per row, saved for backward
  int64_t count = 0;  // rows that counted
};
/// Fused log_softmax + nll: logits (N, V), target (N) i64. Rows with
/// target == ignore_index add nothing. Targets outside [0, V) throw naming them.
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100);
/// dlogits = grad_loss * (softmax - onehot) / count for counted rows, 0 for ignored.
Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& target, const Tensor& lse,
                              int64_t count, int64_t ignore_index = -100);

/// Inverted dropout: y = x * mask / (1-p); mask (u8) returned for backward.
std::pair<Tensor, Tensor> dropout(const Tensor& x, double p, Generator& gen = default_generator());

/// Rotary position embedding on x (B, H, T, D) with cos/sin tables (T, D/2),
/// rotating pairs (i, i + D/2) as Hugging Face's Llama does. inverse=true applies
/// the opposite rotation (its gradient).
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse = false);

}  // namespace loom::ops
