#include "nn/clip_grad.h"

#include <cmath>

#include "autograd/autograd.h"
#include "tensor/ops.h"

namespace loom::nn {

namespace {

/// Sum of squares (norm_type 2) or max |g| (inf) of one gradient, in f64.
template <typename T>
double reduce_host(const T* g, int64_t n, bool inf) {
  double acc = 0.0;
  if (inf) {
#pragma omp parallel for reduction(max : acc) schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) acc = std::max(acc, std::fabs(static_cast<double>(g[i])));
  } else {
#pragma omp parallel for reduction(+ : acc) schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  }
  return acc;
}

double reduce_one(const Tensor& g, bool inf) {
  if (g.device().is_cpu() && g.is_contiguous() && g.dtype() == DType::f32)
    return reduce_host(g.data<float>(), g.numel(), inf);
  if (g.device().is_cpu() && g.is_contiguous() && g.dtype() == DType::f64)
    return reduce_host(g.data<double>(), g.numel(), inf);
  if (inf) return ops::max(ops::abs(g)).item();
  const double n = ops::norm(g).item();  // accumulated in f64 by the op
  return n * n;
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params, double norm_type) {
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  LOOM_CHECK(inf || norm_type == 2.0, "clip_grad_norm_: norm_type must be 2 or infinity, got ", norm_type);
  double total = 0.0;
  for (const auto& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const double r = reduce_one(g, inf);
    total = inf ? std::max(total, r) : total + r;
  }
  return inf ? total : std::sqrt(total);
}

void clip_grads_with_norm_(const std::vector<Tensor>& params, double max_norm, double total_norm) {
  const double coef = max_norm / (total_norm + 1e-6);
  if (coef >= 1.0) return;
  autograd::NoGradGuard no_grad;
  for (const auto& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (g.device().is_cpu() && g.is_contiguous() && g.dtype() == DType::f32) {
      float* d = g.data<float>();
      const float c = static_cast<float>(coef);
      const int64_t n = g.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 15))
      for (int64_t i = 0; i < n; ++i) d[i] *= c;
    } else {
      ops::mul_(g, coef);
    }
    g.bump_version();
  }
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  LOOM_CHECK(max_norm >= 0.0, "clip_grad_norm_: max_norm must be non-negative, got ", max_norm);
  const double total = grad_norm(params, norm_type);
  clip_grads_with_norm_(params, max_norm, total);
  return total;
}

}  // namespace loom::nn
