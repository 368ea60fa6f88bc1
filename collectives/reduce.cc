#include "collectives/reduce.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tensor/ops.h"

namespace loom::collectives::detail {

Tensor half_to_f32(const Tensor& t) {
  Tensor f = empty(t.sizes(), DType::f32);
  float* o = static_cast<float*>(f.data_ptr());
  const int64_t n = t.numel();
  if (t.dtype() == DType::bf16) {
    const BFloat16* p = static_cast<const BFloat16*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(p[i]);
  } else {
    LOOM_CHECK(t.dtype() == DType::f16, "half_to_f32: expected f16 or bf16, got ", dtype_name(t.dtype()));
    const Half* p = static_cast<const Half*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(p[i]);
  }
  return f;
}

void f32_to_half(const Tensor& f, Tensor& t) {
  const float* p = static_cast<const float*>(f.data_ptr());
  const int64_t n = t.numel();
  if (t.dtype() == DType::bf16) {
    BFloat16* o = static_cast<BFloat16*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) o[i] = BFloat16(p[i]);
  } else {
    Half* o = static_cast<Half*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) o[i] = Half(p[i]);
  }
}

void scale_inplace(Tensor& t, double s) {
  const int64_t n = t.numel();
  if (t.dtype() == DType::f64) {
    double* p = static_cast<double*>(t.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] *= s;
  } else {
    LOOM_CHECK(t.dtype() == DType::f32, "scale_inplace: expected f32/f64, got ", dtype_name(t.dtype()));
    float* p = static_cast<float*>(t.data_ptr());
    const float fs = static_cast<float>(s);
    for (int64_t i = 0; i < n; ++i) p[i] *= fs;
  }
}

void ordered_sum(Tensor& out, const Tensor& parts, int w, double scale) {
  const int64_t n = out.numel();
  LOOM_CHECK(parts.numel() == w * n && parts.dtype() == out.dtype(), "ordered_sum: ", parts.numel(), " ",
             dtype_name(parts.dtype()), " elements for ", w, " parts of ", n, " ", dtype_name(out.dtype()));
  LOOM_CHECK_T(Unsupported, out.device().is_cpu() && parts.device().is_cpu(),
               "rank-ordered reductions run on host tensors; got a tensor on ", out.device().str());
  const bool half = out.dtype() == DType::f16 || out.dtype() == DType::bf16;
  Tensor acc = half ? half_to_f32(ops::narrow(parts, 0, 0, n)) : ops::clone(ops::narrow(parts, 0, 0, n));
  for (int r = 1; r < w; ++r) {
    Tensor part = ops::narrow(parts, 0, r * n, n);
    if (half) part = half_to_f32(part);
    reduce_into(acc.data_ptr(), part.data_ptr(), static_cast<size_t>(n), acc.dtype(), ReduceOp::kSum);
  }
  if (scale != 1.0) scale_inplace(acc, scale);
  if (half) {
    f32_to_half(acc, out);
  } else {
    std::memcpy(out.data_ptr(), acc.data_ptr(), out.nbytes());
  }
}

namespace {
template <typename T>
void reduce_typed(T* a, const T* b, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      for (size_t i = 0; i < n; ++i) a[i] += b[i];
      break;
    case ReduceOp::kProduct:
      for (size_t i = 0; i < n; ++i) a[i] *= b[i];
      break;
    case ReduceOp::kMin:
      for (size_t i = 0; i < n; ++i) a[i] = std::min(a[i], b[i]);
      break;
    case ReduceOp::kMax:
      for (size_t i = 0; i < n; ++i) a[i] = std::max(a[i], b[i]);
      break;
  }
}
}  // namespace

void reduce_into(void* acc, const void* b, size_t n, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::f32:
      return reduce_typed(static_cast<float*>(acc), static_cast<const float*>(b), n, op);
    case DType::f64:
      return reduce_typed(static_cast<double*>(acc), static_cast<const double*>(b), n, op);
    case DType::i32:
      return reduce_typed(static_cast<int32_t*>(acc), static_cast<const int32_t*>(b), n, op);
    case DType::i64:
      return reduce_typed(static_cast<int64_t*>(acc), static_cast<const int64_t*>(b), n, op);
    default:
      LOOM_THROW(InvalidArgument, "reduce_into: dtype ", dtype_name(dtype), " is not reduced directly");
  }
}

bool collective_dtype(DType d) {
  return d == DType::f32 || d == DType::f64 || d == DType::f16 || d == DType::bf16 || d == DType::i32 ||
         d == DType::i64;
}

}  // namespace loom::collectives::detail
