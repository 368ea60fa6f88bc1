#include "nn/dropout.h"

#include "autograd/functions.h"

namespace loom::nn {

Dropout::Dropout(double p_, Generator& gen) : Module("Dropout"), p(p_), gen_(&gen) {
  LOOM_CHECK(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got ", p);
}

Tensor Dropout::forward(const Tensor& x) {
  if (!is_training() || p == 0.0) return x;
  return dropout(x, p, true, *gen_);
}

std::string Dropout::extra_repr() const { return "p=" + format_float(p) + ", inplace=False"; }

}  // namespace loom::nn
