// The seam between the device-neutral ops (tensor/*.cc, tensor/cpu/*.cc) and the
// CUDA kernels (tensor/cuda/*.cu). An op validates its inputs, broadcasts and
// allocates its outputs in plain C++, then hands the arithmetic to the CPU loop
// or to the entry of this table that the CUDA backend fills in. Plain C++: no
// CUDA header, compiled in every build; a build without CUDA leaves the table
// empty and `cuda_kernels()` throws Unsupported naming the op and the tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/ops.h"
#include "tensor/storage.h"

namespace loom::detail {

/// Binary elementwise ops; comparisons write u8 (0/1).
enum class BinaryOp : uint8_t { kAdd, kSub, kMul, kDiv, kPow, kMaximum, kMinimum, kEq, kNe, kLt, kLe, kGt, kGe };

/// Unary elementwise ops. Those marked (s0) / (s0, s1) read the scalars passed
/// beside them; kGtScalar / kLtScalar write u8.
enum class UnaryOp : uint8_t {
  kNeg,
  kAbs,
  kExp,
  kLog,
  kSqrt,
  kRsqrt,
  kTanh,
  kSigmoid,
  kRelu,
  kSin,
  kCos,
  kGelu,      // exact (erf)
  kGeluTanh,  // tanh approximation
  kSilu,
  kAddScalar,   // x + s0
  kMulScalar,   // x * s0
  kPowScalar,   // x ^ s0
  kRsubScalar,  // s0 - x
  kRdivScalar,  // s0 / x
  kClamp,       // min(max(x, s0), s1)
  kGtScalar,    // x > s0 (u8)
  kLtScalar,    // x < s0 (u8)
};

/// In-place updates of `a` (optimizers, gradient accumulation).
enum class TernaryOp : uint8_t {
  kAddScaled,  // a += alpha * b            (c unused)
  kAddcmul,    // a += alpha * b * c
  kAddcdiv,    // a += alpha * b / c
  kLerp,       // a += alpha * (b - a)      (c unused)
};

/// Reductions over the middle dim of a contiguous (O, R, I) input into a contiguous (O, I) output.
enum class ReduceOp : uint8_t {
  kSum,  // floating: accumulated in f64 (as on the cpu), times `scale` (mean passes 1/R); integers: i64 out
  kMax,  // NaN propagates
};

/// One parameter of an adamw_multi call: the tensors of the adamw entry, with
/// its group's lr and weight decay and its own step count.
struct AdamWParam {
  Tensor p, grad, exp_avg, exp_avg_sq, p_lowp;  // p_lowp may be undefined
  double lr = 0.0, weight_decay = 0.0;
  int64_t step = 1;
};

/// The CUDA kernels. Every tensor argument lives on one CUDA device (the op has
/// checked that); outputs are allocated by the caller and may alias no input
/// unless the entry says so. Entries run on the current stream of that device
/// and return without synchronising unless they must read a result on the host
/// (they say so).
struct CudaKernels {
  // ---------------------------------------------------------------- elementwise (any strides, any shape)
  /// out = a op b; a, b already expanded to out's shape and of the compute dtype;
  /// out has that dtype, or u8 for comparisons. out may be a (mul_ writes a = a * b).
  void (*binary)(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) = nullptr;
  /// out = op(x; s0, s1); out has x's shape, and x's dtype (u8 for kGtScalar/kLtScalar).
  void (*unary)(UnaryOp op, const Tensor& out, const Tensor& x, double s0, double s1) = nullptr;
  /// out = grad * d op(x)/dx for kGelu, kGeluTanh, kSilu; all of one shape and dtype.
  void (*unary_backward)(UnaryOp op, const Tensor& out, const Tensor& grad, const Tensor& x) = nullptr;
  /// In place on a; b and c expanded to a's shape and of a's dtype.
  void (*ternary)(TernaryOp op, const Tensor& a, const Tensor& b, const Tensor& c, double alpha) = nullptr;
  /// out = cond ? a : b; cond u8, all expanded to out's shape, a and b of out's dtype.
  void (*where)(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) = nullptr;
  /// dst = src converted to dst's dtype; src expanded to dst's shape; both on the same device.
  void (*copy)(const Tensor& dst, const Tensor& src) = nullptr;
  void (*fill)(const Tensor& t, double value) = nullptr;

  // ---------------------------------------------------------------- reductions
  /// out (O, I) = reduce over R of in (O, R, I); both contiguous.
  void (*reduce)(ReduceOp op, const Tensor& out, const Tensor& in, int64_t O, int64_t R, int64_t I,
                 double scale) = nullptr;
  /// out (O, I) = variance over R of in (O, R, I) with `correction` (Bessel: 1), in f32/f64.
  void (*var)(const Tensor& out, const Tensor& in, int64_t O, int64_t R, int64_t I, int64_t correction) = nullptr;
  /// values (O, I) and indices (O, I) i64 of the max over R of in (O, R, I); first index wins ties.
  void (*max_dim)(const Tensor& values, const Tensor& indices, const Tensor& in, int64_t O, int64_t R,
                  int64_t I) = nullptr;
  /// out 0-dim f32 = sqrt(sum of squares) of contiguous in, accumulated in f64.
  void (*norm)(const Tensor& out, const Tensor& in) = nullptr;

  // ---------------------------------------------------------------- matrix products (cuBLAS / cuBLASLt)
  /// out (B, M, N) contiguous = alpha * a @ b + beta * out for a (B, M, K) and b
  /// (B, K, N) given as 3-D views whose last two dims are row- or column-major
  /// (one of their strides is 1); batch stride 0 broadcasts. f32, f64, bf16, f16
  /// (bf16/f16 accumulate in f32).
  void (*bmm)(const Tensor& out, const Tensor& a, const Tensor& b, double alpha, double beta) = nullptr;
  /// out (M, N) = x (M, K) @ w (N, K)^T + bias (N, or undefined), with the bias
  /// (and, when `gelu_pre` is defined, a tanh-GELU: gelu_pre gets the pre-activation
  /// and out the activation) in the cuBLASLt epilogue. x, w contiguous.
  void (*linear)(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias,
                 const Tensor& gelu_pre) = nullptr;

  // ---------------------------------------------------------------- neural-network kernels (rows of a contiguous (N,
  // D))
  /// y = softmax(x) or log_softmax(x) along D.
  void (*softmax)(const Tensor& y, const Tensor& x, bool log) = nullptr;
  /// dx from dy and the forward output y.
  void (*softmax_backward)(const Tensor& dx, const Tensor& dy, const Tensor& y, bool log) = nullptr;
  /// Layer norm (rms = false; b may be undefined) or RMS norm (mean undefined); mean, rstd (N) f32
  /// (f64 for f64 x); w may be undefined; w and b both of x's dtype or both of the statistics'.
  /// When `residual` is defined, x is first replaced by x + residual and that sum is written to
  /// `sum_out` (fused residual add + norm).
  void (*norm_forward)(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                       const Tensor& b, double eps, bool rms, const Tensor& residual, const Tensor& sum_out) = nullptr;
  /// dx (N, D); dw, db (D) f32 (f64 for f64 x) or undefined when not wanted.
  void (*norm_backward)(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                        const Tensor& w, const Tensor& mean, const Tensor& rstd, bool rms) = nullptr;
  /// out (N, C) = weight (V, C) rows at idx (N) i64/i32. Out-of-range indices are reported by
  /// `index_check` below, which the op calls first.
  void (*embedding)(const Tensor& out, const Tensor& weight, const Tensor& idx) = nullptr;
  /// dw (V, C), zeroed by the caller, += grad (N, C) rows at idx (N); deterministic (sorted, no atomics
  /// on floats) so two runs give the same bits.
  void (*embedding_backward)(const Tensor& dw, const Tensor& grad, const Tensor& idx) = nullptr;
  /// Returns the first i with idx[i] outside [0, limit) and != skip, or -1 (synchronises: reads one
  /// value on the host). Used by embedding, index_select and cross_entropy for their errors.
  int64_t (*index_check)(const Tensor& idx, int64_t limit, int64_t skip) = nullptr;
  /// Fused log-softmax + NLL over logits (N, V): lse (N) f32, row_loss (N) f32 (f64 for f64 logits;
  /// 0 where target == ignore_index); never materialises the probabilities.
  void (*cross_entropy)(const Tensor& row_loss, const Tensor& lse, const Tensor& logits, const Tensor& target,
                        int64_t ignore_index) = nullptr;
  /// dlogits (N, V) = scale * (softmax - onehot) for counted rows, 0 for ignored; scale = grad_loss / count
  /// read from the 0-dim grad_loss on the device (no host sync).
  void (*cross_entropy_backward)(const Tensor& dlogits, const Tensor& grad_loss, const Tensor& logits,
                                 const Tensor& target, const Tensor& lse, int64_t count,
                                 int64_t ignore_index) = nullptr;
  /// y = x * mask / (1-p), mask u8 drawn from the Philox stream (seed, offset) exactly as the CPU
  /// kernel draws it, so a seed gives the same mask on either device.
  void (*dropout)(const Tensor& y, const Tensor& mask, const Tensor& x, double p, uint64_t seed,
                  uint64_t offset) = nullptr;
  /// Rotary embedding of x (B, H, T, D) with cos/sin (T, D/2) f32 (f64 for f64 x); see ops::rope.
  void (*rope)(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse) = nullptr;
  /// out = t gathered along dim at index (i64, 1-D); out contiguous with t's dims, dim resized.
  void (*index_select)(const Tensor& out, const Tensor& t, int64_t dim, const Tensor& index) = nullptr;

  // ---------------------------------------------------------------- attention
  /// Causal (or full) scaled-dot-product attention, flash style: q (B, H, T, D), k, v (B, Hkv, S, D)
  /// contiguous, H a multiple of Hkv; out (B, H, T, D) and lse (B, H, T) f32 (saved for backward).
  void (*sdpa_forward)(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       double scale, bool causal) = nullptr;
  /// dq, dk, dv (shapes of q, k, v) from dout and the forward's out and lse; recomputes P by tiles.
  void (*sdpa_backward)(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, double scale,
                        bool causal) = nullptr;

  // ---------------------------------------------------------------- optimizer
  /// Fused AdamW over one flat f32 buffer (torch.optim.AdamW semantics, bias-corrected at `step`):
  /// p, exp_avg, exp_avg_sq f32 (n); grad f32 or bf16 (n); when `p_lowp` (bf16, n) is defined it
  /// receives the updated p rounded (the model's low-precision copy of the f32 master weights).
  void (*adamw)(const Tensor& p, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const Tensor& p_lowp, double lr, double beta1, double beta2, double eps, double weight_decay,
                int64_t step) = nullptr;
  /// adamw over many parameters in a few multi-tensor launches (each bias-corrected at its own step,
  /// with its own lr and weight decay); all on one device, each under adamw's contract. Same
  /// arithmetic as adamw, so either gives the same bits.
  void (*adamw_multi)(const std::vector<AdamWParam>& params, double beta1, double beta2, double eps) = nullptr;
};

/// The table for an op on `t`: throws Unsupported naming op, t's device and shape
/// when this build has no CUDA backend or no CUDA device is present (a missing
/// entry is caught by `need`).
const CudaKernels& cuda_kernels(const char* op, const Tensor& t);

/// nullptr for a cpu tensor, else cuda_kernels(op, t) (so a CUDA tensor without a device
/// throws before any of its memory is touched): `if (auto* k = cuda_kernels_for(op, t)) {...}`.
inline const CudaKernels* cuda_kernels_for(const char* op, const Tensor& t) {
  return t.device().is_cpu() ? nullptr : &cuda_kernels(op, t);
}

[[noreturn]] void throw_missing_cuda_kernel(const char* op, const Tensor& t);

/// The entry `fn` of the table, or Unsupported naming op and t when this backend lacks it:
///   detail::need(detail::cuda_kernels(op, x).softmax, op, x)(y, x, false);
template <typename Fn>
Fn need(Fn fn, const char* op, const Tensor& t) {
  if (!fn) throw_missing_cuda_kernel(op, t);
  return fn;
}

/// The table itself, filled on first use by the CUDA backend's
/// `register_cuda_backend` (tensor/cuda/register.cu); empty in a CPU-only build.
CudaKernels& mutable_cuda_kernels();

#if LOOM_WITH_CUDA
/// Defined in tensor/cuda/register.cu: fills the allocator hooks and the kernel table.
void register_cuda_backend(CudaAllocatorHooks& hooks, CudaKernels& kernels);
#endif

}  // namespace loom::detail
