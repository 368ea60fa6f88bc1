// gradcheck: analytical gradients of sum(f(inputs) * r), for a fixed random r,
// against central finite differences in f64.
#include <cmath>

#include "autograd/functions.h"
#include "tensor/iter.h"

namespace loom::autograd {
namespace {

/// sum(out * r) in f64 without recording.
double projected(const Tensor& out, const std::vector<double>& r) {
  std::vector<double> o = out.to_vector<double>();
  double acc = 0;
  for (size_t i = 0; i < o.size(); ++i) acc += o[i] * r[i];
  return acc;
}

}  // namespace

bool gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
               const GradcheckOptions& opts) {
  std::vector<Tensor> checked;
  std::vector<size_t> checked_index;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || !t.requires_grad()) continue;  // constants (indices, masks) pass through
    LOOM_CHECK(t.dtype() == DType::f64, "gradcheck: input ", i, " (shape ", shape_str(t.sizes()),
               ") must be float64, got ", dtype_name(t.dtype()));
    LOOM_CHECK(is_leaf(t), "gradcheck: input ", i, " (shape ", shape_str(t.sizes()), ") must be a leaf");
    LOOM_CHECK(t.device().is_cpu(), "gradcheck: input ", i, " must be on cpu, got ", t.device().str());
    checked.push_back(t);
    checked_index.push_back(i);
  }
  LOOM_CHECK(!checked.empty(), "gradcheck: no input requires grad");

  Tensor out = f(inputs);
  LOOM_CHECK(out.defined() && is_floating(out.dtype()), "gradcheck: f must return a floating tensor");
  Generator gen(20240601);
  Tensor r = ops::randn(out.sizes(), gen, DType::f64, out.device());
  std::vector<double> rv = r.to_vector<double>();
  std::vector<Tensor> analytical = grad({out}, checked, {ops::to(r, out.dtype())});

  NoGradGuard no_grad;
  for (size_t c = 0; c < checked.size(); ++c) {
    const Tensor& t = checked[c];
    std::vector<double> ana = analytical[c].to_vector<double>();
    double* base = t.data<double>();
    for (int64_t e = 0; e < t.numel(); ++e) {
      double* x = base + linear_to_offset(e, t.sizes(), t.strides());
      const double saved = *x;
      *x = saved + opts.eps;
      const double plus = projected(f(inputs), rv);
      *x = saved - opts.eps;
      const double minus = projected(f(inputs), rv);
      *x = saved;
      const double numerical = (plus - minus) / (2 * opts.eps);
      const double a = ana[static_cast<size_t>(e)];
      if (!(std::abs(a - numerical) <= opts.atol + opts.rtol * std::abs(numerical))) {
        LOOM_THROW(InvalidArgument, "gradcheck: gradient mismatch for input ", checked_index[c], " (shape ",
                   shape_str(t.sizes()), ") at element ", e, ": analytical ", a, " vs numerical ", numerical, " (atol ",
                   opts.atol, ", rtol ", opts.rtol, ")");
      }
    }
  }
  return true;
}

}  // namespace loom::autograd
