// Elementwise ops: broadcasting binary arithmetic with dtype promotion, scalar
// overloads, comparisons (u8 results), in-place updates (optimizer steps) and
// unary activations with their gradients. Validation, promotion, broadcasting
// and allocation happen here for every device; the arithmetic runs in the cpu
// loops below or, for CUDA tensors, in the kernel table's entry for the op's
// enum (tensor/cuda_dispatch.h). f32 loops are plain loops over dense runs that
// the compiler vectorises (exp and erf are branch-free polynomial versions for
// that reason); f16/bf16 compute in f32.
// errno-free, non-trapping math lets the compiler vectorise the loops below
// (sqrt, clamps, selects); we never read errno or FP exception flags. Placed
// before the includes so every function in this file shares the options and
// still inlines.
#pragma GCC optimize("no-math-errno", "no-trapping-math")

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "tensor/cpu/vec_math.h"
#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"
#include "tensor/profiler.h"

namespace loom::ops {
namespace {

using detail::BinaryOp;
using detail::cuda_kernels_for;
using detail::CudaKernels;
using detail::need;
using detail::TernaryOp;
using detail::UnaryOp;

// ---------------------------------------------------------------- vectorisable math
/// exp for f32: the shared branch-free polynomial (tensor/cpu/vec_math.h).
inline float vexp(float x) { return detail::fast_expf(x); }
inline double vexp(double x) { return std::exp(x); }

/// erf for f32 (Abramowitz–Stegun 7.1.26, |error| < 1.5e-7), branch-free.
inline float verf(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float r = 1.0f - p * t * vexp(-ax * ax);
  return std::copysign(r, x);
}
inline double verf(double x) { return std::erf(x); }

/// tanh through exp, for use inside gelu's tanh approximation (absolute error ~1e-7).
inline float vtanh(float x) { return 1.0f - 2.0f / (1.0f + vexp(2.0f * x)); }
inline double vtanh(double x) { return std::tanh(x); }

template <typename V>
inline V vsigmoid(V x) {
  return V(1) / (V(1) + vexp(-x));
}

constexpr double kSqrt1_2 = 0.70710678118654752440;      // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/sqrt(2*pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi)
constexpr double kGeluKappa = 0.044715;

// ---------------------------------------------------------------- helpers
/// Checks a and b share a device; the CUDA kernel table for it, or nullptr on cpu.
const CudaKernels* check_binary(const char* op, const Tensor& a, const Tensor& b) {
  check_same_device(op, a, b);
  return cuda_kernels_for(op, a);
}

Tensor expand_to(const Tensor& t, const Shape& shape) { return t.sizes() == shape ? t : expand(t, shape); }

template <typename F>
Tensor binary_op_impl(const char* op, BinaryOp bop, const Tensor& a, const Tensor& b, F fn, bool int_to_float = false) {
  profiler::Scope scope(op);
  const CudaKernels* ck = check_binary(op, a, b);
  const Shape shape = broadcast_shapes(a.sizes(), b.sizes(), op);
  DType ct = promote_types(a.dtype(), b.dtype());
  if (int_to_float && !is_floating(ct)) ct = DType::f32;
  Tensor x = expand_to(to(a, ct), shape), y = expand_to(to(b, ct), shape);
  Tensor out = empty(shape, ct, a.device());
  if (ck) {
    need(ck->binary, op, a)(bop, out, x, y);
    return out;
  }
  LOOM_DISPATCH_ALL(ct, op, [&] { elementwise_kernel<scalar_t, scalar_t, scalar_t>(out, {x, y}, fn); });
  return out;
}

template <typename F>
Tensor compare_op_impl(const char* op, BinaryOp bop, const Tensor& a, const Tensor& b, F fn) {
  const CudaKernels* ck = check_binary(op, a, b);
  const Shape shape = broadcast_shapes(a.sizes(), b.sizes(), op);
  DType ct = promote_types(a.dtype(), b.dtype());
  Tensor x = expand_to(to(a, ct), shape), y = expand_to(to(b, ct), shape);
  Tensor out = empty(shape, DType::u8, a.device());
  if (ck) {
    need(ck->binary, op, a)(bop, out, x, y);
    return out;
  }
  LOOM_DISPATCH_ALL(ct, op, [&] {
    elementwise_kernel<uint8_t, scalar_t, scalar_t>(out, {x, y}, [&](auto u, auto v) -> uint8_t { return fn(u, v); });
  });
  return out;
}

bool is_integral_value(double s) { return std::isfinite(s) && s == std::floor(s); }

/// The compute type's value of scalar s (integers via int64 to avoid UB on negatives into u8).
template <typename A>
A scalar_as(double s) {
  if constexpr (std::is_integral_v<A>) {
    return static_cast<A>(static_cast<int64_t>(s));
  } else {
    return static_cast<A>(s);
  }
}

/// out = fn(x, c) for each element x of a and scalar c; an integer tensor with
/// a non-integer scalar computes in f32 (as PyTorch does).
template <typename F>
Tensor scalar_op_impl(const char* op, UnaryOp uop, const Tensor& a, double s, F fn, bool int_to_float = false) {
  profiler::Scope scope(op);
  const CudaKernels* ck = cuda_kernels_for(op, a);
  DType ct = a.dtype();
  if (!is_floating(ct) && (int_to_float || !is_integral_value(s))) ct = DType::f32;
  Tensor x = to(a, ct);
  Tensor out = empty(a.sizes(), ct, a.device());
  if (ck) {
    need(ck->unary, op, a)(uop, out, x, s, 0.0);
    return out;
  }
  LOOM_DISPATCH_ALL(ct, op, [&] {
    using A = acc_t<scalar_t>;
    const A c = scalar_as<A>(s);
    elementwise_kernel<scalar_t, scalar_t>(out, {x}, [c, &fn](A v) { return fn(v, c); });
  });
  return out;
}

template <typename F>
Tensor scalar_compare_impl(const char* op, UnaryOp uop, const Tensor& a, double s, F fn) {
  const CudaKernels* ck = cuda_kernels_for(op, a);
  Tensor out = empty(a.sizes(), DType::u8, a.device());
  if (ck) {
    need(ck->unary, op, a)(uop, out, a, s, 0.0);
    return out;
  }
  LOOM_DISPATCH_ALL(a.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    if constexpr (std::is_integral_v<A>) {
      // Compare exactly in double so 2 > 1.5 holds for an integer tensor.
      elementwise_kernel<uint8_t, scalar_t>(out, {a},
                                            [s, &fn](A v) -> uint8_t { return fn(static_cast<double>(v), s); });
    } else {
      const A c = static_cast<A>(s);
      elementwise_kernel<uint8_t, scalar_t>(out, {a}, [c, &fn](A v) -> uint8_t { return fn(v, c); });
    }
  });
  return out;
}

/// Unary op; float_only ops compute integer inputs in f32.
template <bool kFloatOnly, typename F>
Tensor unary_op_impl(const char* op, UnaryOp uop, const Tensor& t, F fn) {
  profiler::Scope scope(op);
  constexpr bool float_only = kFloatOnly;
  const CudaKernels* ck = cuda_kernels_for(op, t);
  DType ct = t.dtype();
  if (float_only && !is_floating(ct)) ct = DType::f32;
  Tensor x = to(t, ct);
  Tensor out = empty(t.sizes(), ct, t.device());
  if (ck) {
    need(ck->unary, op, t)(uop, out, x, 0.0, 0.0);
    return out;
  }
  if constexpr (kFloatOnly) {
    LOOM_DISPATCH_FLOATING(ct, op, [&] { elementwise_kernel<scalar_t, scalar_t>(out, {x}, fn); });
  } else {
    LOOM_DISPATCH_ALL(ct, op, [&] { elementwise_kernel<scalar_t, scalar_t>(out, {x}, fn); });
  }
  return out;
}

// The traced entry points of the helpers above: each records its op while an
// optrace::OpTrace is active (tensor/op_trace.h).
template <typename F>
Tensor binary_op(const char* op, BinaryOp bop, const Tensor& a, const Tensor& b, F fn, bool int_to_float = false) {
  Tensor out = binary_op_impl(op, bop, a, b, fn, int_to_float);
  if (optrace::active()) [[unlikely]]
    optrace::record(op, {a, b}, {out});
  return out;
}
template <typename F>
Tensor compare_op(const char* op, BinaryOp bop, const Tensor& a, const Tensor& b, F fn) {
  Tensor out = compare_op_impl(op, bop, a, b, fn);
  if (optrace::active()) [[unlikely]]
    optrace::record(op, {a, b}, {out});
  return out;
}
template <typename F>
Tensor scalar_op(const char* op, UnaryOp uop, const Tensor& a, double s, F fn, bool int_to_float = false) {
  Tensor out = scalar_op_impl(op, uop, a, s, fn, int_to_float);
  if (optrace::active()) [[unlikely]]
    optrace::record(std::string(op) + "_scalar", {a}, {out}, {{"value", s}});
  return out;
}
template <typename F>
Tensor scalar_compare(const char* op, UnaryOp uop, const Tensor& a, double s, F fn) {
  Tensor out = scalar_compare_impl(op, uop, a, s, fn);
  if (optrace::active()) [[unlikely]]
    optrace::record(std::string(op) + "_scalar", {a}, {out}, {{"value", s}});
  return out;
}
template <bool kFloatOnly, typename F>
Tensor unary_op(const char* op, UnaryOp uop, const Tensor& t, F fn) {
  Tensor out = unary_op_impl<kFloatOnly>(op, uop, t, fn);
  if (optrace::active()) [[unlikely]]
    optrace::record(op, {t}, {out}, {{"tanh", uop == UnaryOp::kGeluTanh ? 1 : 0}});
  return out;
}

/// For in-place ops: `b` must broadcast to a's shape; returns b converted and expanded.
Tensor inplace_operand(const char* op, const Tensor& a, const Tensor& b) {
  check_binary(op, a, b);
  const Shape shape = broadcast_shapes(a.sizes(), b.sizes(), op);
  LOOM_CHECK(shape == a.sizes(), op, ": in-place result of shape ", shape_str(a.sizes()),
             " cannot hold the broadcast of ", shape_str(a.sizes()), " and ", shape_str(b.sizes()), " (",
             shape_str(shape), ")");
  return expand_to(to(b, a.dtype()), a.sizes());
}

template <typename V>
V ipow(V base, V e) {
  if constexpr (std::is_integral_v<V>) {
    if (e < 0) return base == 1 ? 1 : 0;
    V r = 1;
    while (e) {
      if (e & 1) r = static_cast<V>(r * base);
      base = static_cast<V>(base * base);
      e >>= 1;
    }
    return r;
  } else {
    return std::pow(base, e);
  }
}

template <typename V>
inline V max_nan(V x, V y) {
  return (x > y || x != x) ? x : y;
}
template <typename V>
inline V min_nan(V x, V y) {
  return (x < y || x != x) ? x : y;
}

}  // namespace

// ---------------------------------------------------------------- binary
Tensor add(const Tensor& a, const Tensor& b) {
  return binary_op("add", BinaryOp::kAdd, a, b, [](auto x, auto y) { return static_cast<decltype(x)>(x + y); });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary_op("sub", BinaryOp::kSub, a, b, [](auto x, auto y) { return static_cast<decltype(x)>(x - y); });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary_op("mul", BinaryOp::kMul, a, b, [](auto x, auto y) { return static_cast<decltype(x)>(x * y); });
}
Tensor div(const Tensor& a, const Tensor& b) {
  // True division: integer inputs give f32, like torch.div.
  return binary_op(
      "div", BinaryOp::kDiv, a, b, [](auto x, auto y) { return x / y; }, /*int_to_float=*/true);
}
Tensor pow(const Tensor& a, const Tensor& b) {
  return binary_op("pow", BinaryOp::kPow, a, b, [](auto x, auto y) { return ipow(x, y); });
}
Tensor maximum(const Tensor& a, const Tensor& b) {
  return binary_op("maximum", BinaryOp::kMaximum, a, b, [](auto x, auto y) { return max_nan(x, y); });
}
Tensor minimum(const Tensor& a, const Tensor& b) {
  return binary_op("minimum", BinaryOp::kMinimum, a, b, [](auto x, auto y) { return min_nan(x, y); });
}

Tensor add(const Tensor& a, double b) {
  return scalar_op("add", UnaryOp::kAddScalar, a, b, [](auto x, auto c) { return static_cast<decltype(x)>(x + c); });
}
Tensor mul(const Tensor& a, double b) {
  return scalar_op("mul", UnaryOp::kMulScalar, a, b, [](auto x, auto c) { return static_cast<decltype(x)>(x * c); });
}
Tensor pow(const Tensor& a, double exponent) {
  if (exponent == 1.0) return clone(a);
  if (exponent == 2.0)
    return scalar_op("pow", UnaryOp::kPowScalar, a, exponent,
                     [](auto x, auto) { return static_cast<decltype(x)>(x * x); });
  if (exponent == 0.5) return sqrt(a);
  if (exponent == -1.0 && is_floating(a.dtype())) return rdiv(a, 1.0);
  return scalar_op("pow", UnaryOp::kPowScalar, a, exponent, [](auto x, auto c) { return ipow(x, c); });
}
Tensor rsub(const Tensor& a, double b) {
  return scalar_op("rsub", UnaryOp::kRsubScalar, a, b, [](auto x, auto c) { return static_cast<decltype(x)>(c - x); });
}
Tensor rdiv(const Tensor& a, double b) {
  return scalar_op(
      "rdiv", UnaryOp::kRdivScalar, a, b, [](auto x, auto c) { return c / x; }, /*int_to_float=*/true);
}

// ---------------------------------------------------------------- comparisons
Tensor eq(const Tensor& a, const Tensor& b) {
  return compare_op("eq", BinaryOp::kEq, a, b, [](auto x, auto y) { return x == y; });
}
Tensor ne(const Tensor& a, const Tensor& b) {
  return compare_op("ne", BinaryOp::kNe, a, b, [](auto x, auto y) { return x != y; });
}
Tensor lt(const Tensor& a, const Tensor& b) {
  return compare_op("lt", BinaryOp::kLt, a, b, [](auto x, auto y) { return x < y; });
}
Tensor le(const Tensor& a, const Tensor& b) {
  return compare_op("le", BinaryOp::kLe, a, b, [](auto x, auto y) { return x <= y; });
}
Tensor gt(const Tensor& a, const Tensor& b) {
  return compare_op("gt", BinaryOp::kGt, a, b, [](auto x, auto y) { return x > y; });
}
Tensor ge(const Tensor& a, const Tensor& b) {
  return compare_op("ge", BinaryOp::kGe, a, b, [](auto x, auto y) { return x >= y; });
}
Tensor gt(const Tensor& a, double b) {
  return scalar_compare("gt", UnaryOp::kGtScalar, a, b, [](auto x, auto c) { return x > c; });
}
Tensor lt(const Tensor& a, double b) {
  return scalar_compare("lt", UnaryOp::kLtScalar, a, b, [](auto x, auto c) { return x < c; });
}

// ---------------------------------------------------------------- in place
void add_(const Tensor& a, const Tensor& b, double alpha) {
  Tensor y = inplace_operand("add_", a, b);
  a.bump_version();
  if (const CudaKernels* ck = cuda_kernels_for("add_", a)) {
    need(ck->ternary, "add_", a)(TernaryOp::kAddScaled, a, y, Tensor(), alpha);
    return;
  }
  LOOM_DISPATCH_ALL(a.dtype(), "add_", [&] {
    using A = acc_t<scalar_t>;
    if (alpha == 1.0) {
      elementwise_kernel<scalar_t, scalar_t, scalar_t>(a, {a, y}, [](A u, A v) { return static_cast<A>(u + v); });
    } else {
      const A al = scalar_as<A>(alpha);
      elementwise_kernel<scalar_t, scalar_t, scalar_t>(a, {a, y},
                                                       [al](A u, A v) { return static_cast<A>(u + al * v); });
    }
  });
}

void mul_(const Tensor& a, const Tensor& b) {
  Tensor y = inplace_operand("mul_", a, b);
  a.bump_version();
  if (const CudaKernels* ck = cuda_kernels_for("mul_", a)) {
    need(ck->binary, "mul_", a)(BinaryOp::kMul, a, a, y);
    return;
  }
  LOOM_DISPATCH_ALL(a.dtype(), "mul_", [&] {
    using A = acc_t<scalar_t>;
    elementwise_kernel<scalar_t, scalar_t, scalar_t>(a, {a, y}, [](A u, A v) { return static_cast<A>(u * v); });
  });
}

void mul_(const Tensor& a, double b) {
  const CudaKernels* ck = cuda_kernels_for("mul_", a);
  a.bump_version();
  if (ck) {
    need(ck->unary, "mul_", a)(UnaryOp::kMulScalar, a, a, b, 0.0);
    return;
  }
  LOOM_DISPATCH_ALL(a.dtype(), "mul_", [&] {
    using A = acc_t<scalar_t>;
    const A c = scalar_as<A>(b);
    elementwise_kernel<scalar_t, scalar_t>(a, {a}, [c](A u) { return static_cast<A>(u * c); });
  });
}

void add_(const Tensor& a, double b) {
  const CudaKernels* ck = cuda_kernels_for("add_", a);
  a.bump_version();
  if (ck) {
    need(ck->unary, "add_", a)(UnaryOp::kAddScalar, a, a, b, 0.0);
    return;
  }
  LOOM_DISPATCH_ALL(a.dtype(), "add_", [&] {
    using A = acc_t<scalar_t>;
    const A c = scalar_as<A>(b);
    elementwise_kernel<scalar_t, scalar_t>(a, {a}, [c](A u) { return static_cast<A>(u + c); });
  });
}

void addcmul_(const Tensor& a, const Tensor& b, const Tensor& c, double alpha) {
  Tensor y = inplace_operand("addcmul_", a, b), z = inplace_operand("addcmul_", a, c);
  a.bump_version();
  if (const CudaKernels* ck = cuda_kernels_for("addcmul_", a)) {
    need(ck->ternary, "addcmul_", a)(TernaryOp::kAddcmul, a, y, z, alpha);
    return;
  }
  LOOM_DISPATCH_ALL(a.dtype(), "addcmul_", [&] {
    using A = acc_t<scalar_t>;
    const A al = scalar_as<A>(alpha);
    elementwise_kernel<scalar_t, scalar_t, scalar_t, scalar_t>(
        a, {a, y, z}, [al](A u, A v, A w) { return static_cast<A>(u + al * v * w); });
  });
}

void addcdiv_(const Tensor& a, const Tensor& b, const Tensor& c, double alpha) {
  Tensor y = inplace_operand("addcdiv_", a, b), z = inplace_operand("addcdiv_", a, c);
  a.bump_version();
  if (const CudaKernels* ck = cuda_kernels_for("addcdiv_", a)) {
    need(ck->ternary, "addcdiv_", a)(TernaryOp::kAddcdiv, a, y, z, alpha);
    return;
  }
  LOOM_DISPATCH_ALL(a.dtype(), "addcdiv_", [&] {
    using A = acc_t<scalar_t>;
    const A al = scalar_as<A>(alpha);
    elementwise_kernel<scalar_t, scalar_t, scalar_t, scalar_t>(
        a, {a, y, z}, [al](A u, A v, A w) { return static_cast<A>(u + al * v / w); });
  });
}

void lerp_(const Tensor& a, const Tensor& b, double weight) {
  Tensor y = inplace_operand("lerp_", a, b);
  a.bump_version();
  if (const CudaKernels* ck = cuda_kernels_for("lerp_", a)) {
    LOOM_CHECK(is_floating(a.dtype()), "lerp_: expected a floating dtype, got ", dtype_name(a.dtype()));
    need(ck->ternary, "lerp_", a)(TernaryOp::kLerp, a, y, Tensor(), weight);
    return;
  }
  LOOM_DISPATCH_FLOATING(a.dtype(), "lerp_", [&] {
    using A = acc_t<scalar_t>;
    const A w = static_cast<A>(weight);
    elementwise_kernel<scalar_t, scalar_t, scalar_t>(a, {a, y}, [w](A u, A v) { return u + w * (v - u); });
  });
}

// ---------------------------------------------------------------- unary
Tensor neg(const Tensor& t) {
  return unary_op<false>("neg", UnaryOp::kNeg, t, [](auto x) { return static_cast<decltype(x)>(-x); });
}
Tensor abs(const Tensor& t) {
  return unary_op<false>("abs", UnaryOp::kAbs, t, [](auto x) {
    using V = decltype(x);
    if constexpr (std::is_unsigned_v<V>) {
      return x;
    } else {
      return static_cast<V>(x < 0 ? -x : x);
    }
  });
}
Tensor exp(const Tensor& t) {
  return unary_op<true>("exp", UnaryOp::kExp, t, [](auto x) { return std::exp(x); });
}
Tensor log(const Tensor& t) {
  return unary_op<true>("log", UnaryOp::kLog, t, [](auto x) { return std::log(x); });
}
Tensor sqrt(const Tensor& t) {
  return unary_op<true>("sqrt", UnaryOp::kSqrt, t, [](auto x) { return std::sqrt(x); });
}
Tensor rsqrt(const Tensor& t) {
  return unary_op<true>("rsqrt", UnaryOp::kRsqrt, t, [](auto x) { return decltype(x)(1) / std::sqrt(x); });
}
Tensor tanh(const Tensor& t) {
  return unary_op<true>("tanh", UnaryOp::kTanh, t, [](auto x) { return std::tanh(x); });
}
Tensor sigmoid(const Tensor& t) {
  return unary_op<true>("sigmoid", UnaryOp::kSigmoid, t, [](auto x) { return vsigmoid(x); });
}
Tensor relu(const Tensor& t) {
  // x < 0 ? 0 : x keeps NaN (a NaN compares false), as PyTorch's relu does.
  return unary_op<false>("relu", UnaryOp::kRelu, t, [](auto x) { return x < decltype(x)(0) ? decltype(x)(0) : x; });
}
Tensor sin(const Tensor& t) {
  return unary_op<true>("sin", UnaryOp::kSin, t, [](auto x) { return std::sin(x); });
}
Tensor cos(const Tensor& t) {
  return unary_op<true>("cos", UnaryOp::kCos, t, [](auto x) { return std::cos(x); });
}

Tensor clamp(const Tensor& t, double lo, double hi) {
  LOOM_CHECK(lo <= hi, "clamp: lo ", lo, " exceeds hi ", hi);
  const CudaKernels* ck = cuda_kernels_for("clamp", t);
  Tensor out = empty(t.sizes(), t.dtype(), t.device());
  if (ck) {
    const bool fl = is_floating(t.dtype());
    need(ck->unary, "clamp", t)(UnaryOp::kClamp, out, t, fl ? lo : std::ceil(lo), fl ? hi : std::floor(hi));
    return out;
  }
  LOOM_DISPATCH_ALL(t.dtype(), "clamp", [&] {
    using A = acc_t<scalar_t>;
    const A l = scalar_as<A>(is_floating(t.dtype()) ? lo : std::ceil(lo));
    const A h = scalar_as<A>(is_floating(t.dtype()) ? hi : std::floor(hi));
    elementwise_kernel<scalar_t, scalar_t>(out, {t}, [l, h](A x) {
      A y = x < l ? l : x;
      return y > h ? h : y;
    });
  });
  if (optrace::active()) [[unlikely]]
    optrace::record("clamp", {t}, {out}, {{"lo", lo}, {"hi", hi}});
  return out;
}

Tensor gelu(const Tensor& t, GeluApprox approx) {
  if (approx == GeluApprox::kTanh) {
    return unary_op<true>("gelu", UnaryOp::kGeluTanh, t, [](auto x) {
      using V = decltype(x);
      const V inner = V(kSqrt2OverPi) * (x + V(kGeluKappa) * x * x * x);
      return V(0.5) * x * (V(1) + vtanh(inner));
    });
  }
  return unary_op<true>("gelu", UnaryOp::kGelu, t, [](auto x) {
    using V = decltype(x);
    return V(0.5) * x * (V(1) + verf(x * V(kSqrt1_2)));
  });
}

Tensor silu(const Tensor& t) {
  return unary_op<true>("silu", UnaryOp::kSilu, t, [](auto x) { return x * vsigmoid(x); });
}

Tensor gelu_backward(const Tensor& grad, const Tensor& x, GeluApprox approx) {
  profiler::Scope prof("gelu_backward");
  const CudaKernels* ck = check_binary("gelu_backward", grad, x);
  LOOM_CHECK(grad.sizes() == x.sizes(), "gelu_backward: grad shape ", shape_str(grad.sizes()),
             " differs from input shape ", shape_str(x.sizes()));
  DType ct = promote_types(grad.dtype(), x.dtype());
  if (!is_floating(ct)) ct = DType::f32;
  Tensor g = to(grad, ct), xi = to(x, ct);
  Tensor out = empty(x.sizes(), ct, x.device());
  if (ck) {
    need(ck->unary_backward, "gelu_backward", x)(approx == GeluApprox::kTanh ? UnaryOp::kGeluTanh : UnaryOp::kGelu, out,
                                                 g, xi);
    return out;
  }
  LOOM_DISPATCH_FLOATING(ct, "gelu_backward", [&] {
    using V = acc_t<scalar_t>;
    if (approx == GeluApprox::kTanh) {
      // always_inline: left to itself gcc calls this lambda per element (perf: 7.7% of a 1-thread GPT-2 step) instead
      // of vectorising the loop around it.
      elementwise_kernel<scalar_t, scalar_t, scalar_t>(
          out, {g, xi}, [](V dy, V v) __attribute__((always_inline)) {
            const V x2 = v * v;
            const V inner = V(kSqrt2OverPi) * (v + V(kGeluKappa) * x2 * v);
            const V th = vtanh(inner);
            const V left = V(0.5) * v;
            const V right = V(1) + th;
            const V dleft = V(0.5) * right;
            const V dright = left * (V(1) - th * th) * V(kSqrt2OverPi) * (V(1) + V(3 * kGeluKappa) * x2);
            return dy * (dleft + dright);
          });
    } else {
      elementwise_kernel<scalar_t, scalar_t, scalar_t>(
          out, {g, xi}, [](V dy, V v) __attribute__((always_inline)) {
            const V cdf = V(0.5) * (V(1) + verf(v * V(kSqrt1_2)));
            const V pdf = V(kInvSqrt2Pi) * vexp(V(-0.5) * v * v);
            return dy * (cdf + v * pdf);
          });
    }
  });
  return out;
}

Tensor silu_backward(const Tensor& grad, const Tensor& x) {
  profiler::Scope prof("silu_backward");
  const CudaKernels* ck = check_binary("silu_backward", grad, x);
  LOOM_CHECK(grad.sizes() == x.sizes(), "silu_backward: grad shape ", shape_str(grad.sizes()),
             " differs from input shape ", shape_str(x.sizes()));
  DType ct = promote_types(grad.dtype(), x.dtype());
  if (!is_floating(ct)) ct = DType::f32;
  Tensor g = to(grad, ct), xi = to(x, ct);
  Tensor out = empty(x.sizes(), ct, x.device());
  if (ck) {
    need(ck->unary_backward, "silu_backward", x)(UnaryOp::kSilu, out, g, xi);
    return out;
  }
  LOOM_DISPATCH_FLOATING(ct, "silu_backward", [&] {
    using V = acc_t<scalar_t>;
    elementwise_kernel<scalar_t, scalar_t, scalar_t>(out, {g, xi}, [](V dy, V v) {
      const V s = vsigmoid(v);
      return dy * s * (V(1) + v * (V(1) - s));
    });
  });
  return out;
}

}  // namespace loom::ops
