// CUDA elementwise ops: the binary, unary, unary_backward, ternary and where
// entries of the kernel table. Each op is a functor on accumulation-type values
// with the CPU kernel's formula (tensor/cpu/elementwise.cc): NaN-propagating
// maximum/minimum, integer pow by squaring, exact and tanh GELU, integer
// scalars truncated as the CPU truncates them. bf16/f16 compute in f32.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/loops.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

using detail::BinaryOp;
using detail::TernaryOp;
using detail::UnaryOp;

// ---------------------------------------------------------------- device math (f32 or f64 by argument type)
template <typename A>
__device__ __forceinline__ A m_exp(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return expf(x);
  } else {
    return exp(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_log(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return logf(x);
  } else {
    return log(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_sqrt(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return sqrtf(x);
  } else {
    return sqrt(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_tanh(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return tanhf(x);
  } else {
    return tanh(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_sin(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return sinf(x);
  } else {
    return sin(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_cos(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return cosf(x);
  } else {
    return cos(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_erf(A x) {
  if constexpr (std::is_same_v<A, float>) {
    return erff(x);
  } else {
    return erf(x);
  }
}
template <typename A>
__device__ __forceinline__ A m_sigmoid(A x) {
  return A(1) / (A(1) + m_exp(-x));
}

/// base^e; integers by squaring (negative e: 1 for base 1, else 0), as the CPU kernel.
template <typename A>
__device__ __forceinline__ A ipow(A base, A e) {
  if constexpr (std::is_integral_v<A>) {
    if constexpr (std::is_signed_v<A>) {
      if (e < 0) return base == 1 ? A(1) : A(0);
    }
    A r = 1;
    while (e) {
      if (e & 1) r = static_cast<A>(r * base);
      base = static_cast<A>(base * base);
      e = static_cast<A>(e >> 1);
    }
    return r;
  } else if constexpr (std::is_same_v<A, float>) {
    return powf(base, e);
  } else {
    return pow(base, e);
  }
}

constexpr double kSqrt1_2 = 0.70710678118654752440;      // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/sqrt(2*pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2/pi)
constexpr double kGeluKappa = 0.044715;

// ---------------------------------------------------------------- binary functors
template <typename A>
struct AddF {
  __device__ A operator()(A x, A y) const { return static_cast<A>(x + y); }
};
template <typename A>
struct SubF {
  __device__ A operator()(A x, A y) const { return static_cast<A>(x - y); }
};
template <typename A>
struct MulF {
  __device__ A operator()(A x, A y) const { return static_cast<A>(x * y); }
};
template <typename A>
struct DivF {
  __device__ A operator()(A x, A y) const { return x / y; }
};
template <typename A>
struct PowF {
  __device__ A operator()(A x, A y) const { return ipow(x, y); }
};
template <typename A>
struct MaximumF {  // NaN propagates
  __device__ A operator()(A x, A y) const { return (x > y || x != x) ? x : y; }
};
template <typename A>
struct MinimumF {
  __device__ A operator()(A x, A y) const { return (x < y || x != x) ? x : y; }
};
template <typename A>
struct EqF {
  __device__ bool operator()(A x, A y) const { return x == y; }
};
template <typename A>
struct NeF {
  __device__ bool operator()(A x, A y) const { return x != y; }
};
template <typename A>
struct LtF {
  __device__ bool operator()(A x, A y) const { return x < y; }
};
template <typename A>
struct LeF {
  __device__ bool operator()(A x, A y) const { return x <= y; }
};
template <typename A>
struct GtF {
  __device__ bool operator()(A x, A y) const { return x > y; }
};
template <typename A>
struct GeF {
  __device__ bool operator()(A x, A y) const { return x >= y; }
};

// ---------------------------------------------------------------- unary functors
template <typename A>
struct NegF {
  __device__ A operator()(A x) const { return static_cast<A>(-x); }
};
template <typename A>
struct AbsF {
  __device__ A operator()(A x) const {
    if constexpr (std::is_unsigned_v<A>) {
      return x;
    } else {
      return static_cast<A>(x < 0 ? -x : x);
    }
  }
};
template <typename A>
struct ExpF {
  __device__ A operator()(A x) const { return m_exp(x); }
};
template <typename A>
struct LogF {
  __device__ A operator()(A x) const { return m_log(x); }
};
template <typename A>
struct SqrtF {
  __device__ A operator()(A x) const { return m_sqrt(x); }
};
template <typename A>
struct RsqrtF {  // 1/sqrt (correctly rounded sqrt, then a division), not the approximate rsqrt
  __device__ A operator()(A x) const { return A(1) / m_sqrt(x); }
};
template <typename A>
struct TanhF {
  __device__ A operator()(A x) const { return m_tanh(x); }
};
template <typename A>
struct SigmoidF {
  __device__ A operator()(A x) const { return m_sigmoid(x); }
};
template <typename A>
struct ReluF {  // NaN stays NaN (PyTorch's relu), as in the CPU kernel
  __device__ A operator()(A x) const {
    if constexpr (std::is_unsigned_v<A>) {
      return x;
    } else {
      return x < A(0) ? A(0) : x;
    }
  }
};
template <typename A>
struct SinF {
  __device__ A operator()(A x) const { return m_sin(x); }
};
template <typename A>
struct CosF {
  __device__ A operator()(A x) const { return m_cos(x); }
};
template <typename A>
struct GeluF {
  __device__ A operator()(A x) const { return A(0.5) * x * (A(1) + m_erf(x * A(kSqrt1_2))); }
};
template <typename A>
struct GeluTanhF {
  __device__ A operator()(A x) const {
    const A inner = A(kSqrt2OverPi) * (x + A(kGeluKappa) * x * x * x);
    return A(0.5) * x * (A(1) + m_tanh(inner));
  }
};
template <typename A>
struct SiluF {
  __device__ A operator()(A x) const { return x * m_sigmoid(x); }
};
template <typename A>
struct AddScalarF {
  A c;
  __device__ A operator()(A x) const { return static_cast<A>(x + c); }
};
template <typename A>
struct MulScalarF {
  A c;
  __device__ A operator()(A x) const { return static_cast<A>(x * c); }
};
template <typename A>
struct PowScalarF {  // the CPU op squares by x * x; ipow(x, 2) is the same value for integers
  A c;
  __device__ A operator()(A x) const { return c == A(2) ? static_cast<A>(x * x) : ipow(x, c); }
};
template <typename A>
struct RsubScalarF {
  A c;
  __device__ A operator()(A x) const { return static_cast<A>(c - x); }
};
template <typename A>
struct RdivScalarF {
  A c;
  __device__ A operator()(A x) const { return c / x; }
};
template <typename A>
struct ClampF {  // NaN stays NaN
  A lo, hi;
  __device__ A operator()(A x) const {
    const A y = x < lo ? lo : x;
    return y > hi ? hi : y;
  }
};
/// x > s / x < s: integers compare exactly in double (2 > 1.5), floats against s in their own type.
template <typename A, bool kGreater>
struct CompareScalarF {
  A c;
  double s;
  __device__ bool operator()(A x) const {
    if constexpr (std::is_integral_v<A>) {
      return kGreater ? static_cast<double>(x) > s : static_cast<double>(x) < s;
    } else {
      return kGreater ? x > c : x < c;
    }
  }
};

// ---------------------------------------------------------------- gradients (grad, x)
template <typename A>
struct GeluBackwardF {
  __device__ A operator()(A dy, A v) const {
    const A cdf = A(0.5) * (A(1) + m_erf(v * A(kSqrt1_2)));
    const A pdf = A(kInvSqrt2Pi) * m_exp(A(-0.5) * v * v);
    return dy * (cdf + v * pdf);
  }
};
template <typename A>
struct GeluTanhBackwardF {
  __device__ A operator()(A dy, A v) const {
    const A x2 = v * v;
    const A inner = A(kSqrt2OverPi) * (v + A(kGeluKappa) * x2 * v);
    const A th = m_tanh(inner);
    const A left = A(0.5) * v;
    const A right = A(1) + th;
    const A dleft = A(0.5) * right;
    const A dright = left * (A(1) - th * th) * A(kSqrt2OverPi) * (A(1) + A(3 * kGeluKappa) * x2);
    return dy * (dleft + dright);
  }
};
template <typename A>
struct SiluBackwardF {
  __device__ A operator()(A dy, A v) const {
    const A s = m_sigmoid(v);
    return dy * s * (A(1) + v * (A(1) - s));
  }
};

// ---------------------------------------------------------------- in place (a, b[, c])
template <typename A>
struct AddScaledF {
  A alpha;
  __device__ A operator()(A u, A v) const { return static_cast<A>(u + alpha * v); }
};
template <typename A>
struct AddcmulF {
  A alpha;
  __device__ A operator()(A u, A v, A w) const { return static_cast<A>(u + alpha * v * w); }
};
template <typename A>
struct AddcdivF {
  A alpha;
  __device__ A operator()(A u, A v, A w) const { return static_cast<A>(u + alpha * v / w); }
};
template <typename A>
struct LerpF {
  A w;
  __device__ A operator()(A u, A v) const { return u + w * (v - u); }
};

template <typename A>
struct WhereF {
  __device__ A operator()(uint8_t m, A u, A v) const { return m ? u : v; }
};

// ---------------------------------------------------------------- host side
/// The compute type's value of scalar s: integers through int64 (no UB on negatives into u8), as the CPU does.
template <typename A>
A scalar_as(double s) {
  if constexpr (std::is_integral_v<A>) {
    return static_cast<A>(static_cast<int64_t>(s));
  } else {
    return static_cast<A>(s);
  }
}

template <typename T>
constexpr bool kIsFloat = std::is_floating_point_v<T> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

const char* binary_name(BinaryOp op) {
  static const char* const kNames[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                       "eq",  "ne",  "lt",  "le",  "gt",  "ge"};
  return kNames[static_cast<int>(op)];
}
const char* unary_name(UnaryOp op) {
  static const char* const kNames[] = {"neg",  "abs",  "exp",  "log",   "sqrt",      "rsqrt", "tanh", "sigmoid",
                                       "relu", "sin",  "cos",  "gelu",  "gelu_tanh", "silu",  "add",  "mul",
                                       "pow",  "rsub", "rdiv", "clamp", "gt",        "lt"};
  return kNames[static_cast<int>(op)];
}

void check_dtype(const char* op, const Tensor& t, DType want, const char* role) {
  LOOM_CHECK(t.dtype() == want, op, " (cuda): ", role, " has dtype ", dtype_name(t.dtype()), ", expected ",
             dtype_name(want));
}
void check_shape(const char* op, const Tensor& t, const Tensor& out, const char* role) {
  LOOM_CHECK(t.sizes() == out.sizes(), op, " (cuda): ", role, " of shape ", shape_str(t.sizes()),
             " is not expanded to the output shape ", shape_str(out.sizes()));
}

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  const char* name = binary_name(op);
  const bool cmp = op >= BinaryOp::kEq;
  check_dtype(name, b, a.dtype(), "b");
  check_dtype(name, out, cmp ? DType::u8 : a.dtype(), "out");
  check_shape(name, a, out, "a");
  check_shape(name, b, out, "b");
  DeviceScope scope(out.device().index);
  cudaStream_t s = stream_for(out);
  const std::array<const Tensor*, 2> in{&a, &b};
  dispatch_all(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    switch (op) {
      case BinaryOp::kAdd:
        return launch_loop<T, T, T>(name, out, in, AddF<A>{}, s);
      case BinaryOp::kSub:
        return launch_loop<T, T, T>(name, out, in, SubF<A>{}, s);
      case BinaryOp::kMul:
        return launch_loop<T, T, T>(name, out, in, MulF<A>{}, s);
      case BinaryOp::kDiv:
        if constexpr (kIsFloat<T>) {
          return launch_loop<T, T, T>(name, out, in, DivF<A>{}, s);
        } else {
          LOOM_THROW(InvalidArgument, "div (cuda): integer operands must be promoted to a floating dtype first");
        }
      case BinaryOp::kPow:
        return launch_loop<T, T, T>(name, out, in, PowF<A>{}, s);
      case BinaryOp::kMaximum:
        return launch_loop<T, T, T>(name, out, in, MaximumF<A>{}, s);
      case BinaryOp::kMinimum:
        return launch_loop<T, T, T>(name, out, in, MinimumF<A>{}, s);
      case BinaryOp::kEq:
        return launch_loop<uint8_t, T, T>(name, out, in, EqF<A>{}, s);
      case BinaryOp::kNe:
        return launch_loop<uint8_t, T, T>(name, out, in, NeF<A>{}, s);
      case BinaryOp::kLt:
        return launch_loop<uint8_t, T, T>(name, out, in, LtF<A>{}, s);
      case BinaryOp::kLe:
        return launch_loop<uint8_t, T, T>(name, out, in, LeF<A>{}, s);
      case BinaryOp::kGt:
        return launch_loop<uint8_t, T, T>(name, out, in, GtF<A>{}, s);
      case BinaryOp::kGe:
        return launch_loop<uint8_t, T, T>(name, out, in, GeF<A>{}, s);
    }
  });
}

/// Ops that need a floating input (the CPU op computes integers in f32, so the caller converts first).
template <typename T, typename F>
void float_only(const char* name, const Tensor& out, const Tensor& x, const F& f, cudaStream_t s) {
  if constexpr (kIsFloat<T>) {
    launch_loop<T, T>(name, out, std::array<const Tensor*, 1>{&x}, f, s);
  } else {
    LOOM_THROW(InvalidArgument, name, " (cuda): expected a floating dtype, got ", dtype_name(x.dtype()));
  }
}

void unary(UnaryOp op, const Tensor& out, const Tensor& x, double s0, double s1) {
  const char* name = unary_name(op);
  const bool cmp = op == UnaryOp::kGtScalar || op == UnaryOp::kLtScalar;
  check_dtype(name, out, cmp ? DType::u8 : x.dtype(), "out");
  check_shape(name, x, out, "x");
  DeviceScope scope(out.device().index);
  cudaStream_t s = stream_for(out);
  const std::array<const Tensor*, 1> in{&x};
  dispatch_all(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    switch (op) {
      case UnaryOp::kNeg:
        return launch_loop<T, T>(name, out, in, NegF<A>{}, s);
      case UnaryOp::kAbs:
        return launch_loop<T, T>(name, out, in, AbsF<A>{}, s);
      case UnaryOp::kExp:
        return float_only<T>(name, out, x, ExpF<A>{}, s);
      case UnaryOp::kLog:
        return float_only<T>(name, out, x, LogF<A>{}, s);
      case UnaryOp::kSqrt:
        return float_only<T>(name, out, x, SqrtF<A>{}, s);
      case UnaryOp::kRsqrt:
        return float_only<T>(name, out, x, RsqrtF<A>{}, s);
      case UnaryOp::kTanh:
        return float_only<T>(name, out, x, TanhF<A>{}, s);
      case UnaryOp::kSigmoid:
        return float_only<T>(name, out, x, SigmoidF<A>{}, s);
      case UnaryOp::kRelu:
        return launch_loop<T, T>(name, out, in, ReluF<A>{}, s);
      case UnaryOp::kSin:
        return float_only<T>(name, out, x, SinF<A>{}, s);
      case UnaryOp::kCos:
        return float_only<T>(name, out, x, CosF<A>{}, s);
      case UnaryOp::kGelu:
        return float_only<T>(name, out, x, GeluF<A>{}, s);
      case UnaryOp::kGeluTanh:
        return float_only<T>(name, out, x, GeluTanhF<A>{}, s);
      case UnaryOp::kSilu:
        return float_only<T>(name, out, x, SiluF<A>{}, s);
      case UnaryOp::kAddScalar:
        return launch_loop<T, T>(name, out, in, AddScalarF<A>{scalar_as<A>(s0)}, s);
      case UnaryOp::kMulScalar:
        return launch_loop<T, T>(name, out, in, MulScalarF<A>{scalar_as<A>(s0)}, s);
      case UnaryOp::kPowScalar:
        return launch_loop<T, T>(name, out, in, PowScalarF<A>{scalar_as<A>(s0)}, s);
      case UnaryOp::kRsubScalar:
        return launch_loop<T, T>(name, out, in, RsubScalarF<A>{scalar_as<A>(s0)}, s);
      case UnaryOp::kRdivScalar:
        return float_only<T>(name, out, x, RdivScalarF<A>{scalar_as<A>(s0)}, s);
      case UnaryOp::kClamp:
        return launch_loop<T, T>(name, out, in, ClampF<A>{scalar_as<A>(s0), scalar_as<A>(s1)}, s);
      case UnaryOp::kGtScalar:
        return launch_loop<uint8_t, T>(name, out, in, CompareScalarF<A, true>{scalar_as<A>(s0), s0}, s);
      case UnaryOp::kLtScalar:
        return launch_loop<uint8_t, T>(name, out, in, CompareScalarF<A, false>{scalar_as<A>(s0), s0}, s);
    }
  });
}

void unary_backward(UnaryOp op, const Tensor& out, const Tensor& grad, const Tensor& x) {
  const char* name = op == UnaryOp::kSilu ? "silu_backward" : "gelu_backward";
  check_dtype(name, grad, x.dtype(), "grad");
  check_dtype(name, out, x.dtype(), "out");
  check_shape(name, grad, out, "grad");
  check_shape(name, x, out, "x");
  DeviceScope scope(out.device().index);
  cudaStream_t s = stream_for(out);
  const std::array<const Tensor*, 2> in{&grad, &x};
  dispatch_floating(x.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    switch (op) {
      case UnaryOp::kGelu:
        return launch_loop<T, T, T>(name, out, in, GeluBackwardF<A>{}, s);
      case UnaryOp::kGeluTanh:
        return launch_loop<T, T, T>(name, out, in, GeluTanhBackwardF<A>{}, s);
      case UnaryOp::kSilu:
        return launch_loop<T, T, T>(name, out, in, SiluBackwardF<A>{}, s);
      default:
        LOOM_THROW(InvalidArgument, "unary_backward (cuda): no gradient kernel for ", unary_name(op),
                   " (only gelu, gelu_tanh and silu)");
    }
  });
}

void ternary(TernaryOp op, const Tensor& a, const Tensor& b, const Tensor& c, double alpha) {
  static const char* const kNames[] = {"add_", "addcmul_", "addcdiv_", "lerp_"};
  const char* name = kNames[static_cast<int>(op)];
  const bool uses_c = op == TernaryOp::kAddcmul || op == TernaryOp::kAddcdiv;
  check_dtype(name, b, a.dtype(), "b");
  check_shape(name, b, a, "b");
  if (uses_c) {
    check_dtype(name, c, a.dtype(), "c");
    check_shape(name, c, a, "c");
  }
  DeviceScope scope(a.device().index);
  cudaStream_t s = stream_for(a);
  dispatch_all(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const A al = scalar_as<A>(alpha);
    switch (op) {
      case TernaryOp::kAddScaled:
        return launch_loop<T, T, T>(name, a, std::array<const Tensor*, 2>{&a, &b}, AddScaledF<A>{al}, s);
      case TernaryOp::kAddcmul:
        return launch_loop<T, T, T, T>(name, a, std::array<const Tensor*, 3>{&a, &b, &c}, AddcmulF<A>{al}, s);
      case TernaryOp::kAddcdiv:
        return launch_loop<T, T, T, T>(name, a, std::array<const Tensor*, 3>{&a, &b, &c}, AddcdivF<A>{al}, s);
      case TernaryOp::kLerp:
        if constexpr (kIsFloat<T>) {
          return launch_loop<T, T, T>(name, a, std::array<const Tensor*, 2>{&a, &b}, LerpF<A>{al}, s);
        } else {
          LOOM_THROW(InvalidArgument, "lerp_: expected a floating dtype, got ", dtype_name(a.dtype()));
        }
    }
  });
}

void where(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_dtype("where", cond, DType::u8, "cond");
  check_dtype("where", a, out.dtype(), "a");
  check_dtype("where", b, out.dtype(), "b");
  check_shape("where", cond, out, "cond");
  check_shape("where", a, out, "a");
  check_shape("where", b, out, "b");
  DeviceScope scope(out.device().index);
  cudaStream_t s = stream_for(out);
  dispatch_all(out.dtype(), "where", [&](auto tag) {
    using T = decltype(tag);
    launch_loop<T, uint8_t, T, T>("where", out, std::array<const Tensor*, 3>{&cond, &a, &b}, WhereF<acc_t<T>>{}, s);
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {

void register_elementwise(CudaKernels& k) {
  k.binary = cuda_detail::binary;
  k.unary = cuda_detail::unary;
  k.unary_backward = cuda_detail::unary_backward;
  k.ternary = cuda_detail::ternary;
  k.where = cuda_detail::where;
}

}  // namespace loom::detail
