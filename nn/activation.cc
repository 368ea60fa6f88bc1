#include "nn/activation.h"

#include "autograd/functions.h"

namespace loom::nn {

GELU::GELU(ops::GeluApprox a) : Module("GELU"), approximate(a) {}

Tensor GELU::forward(const Tensor& x) { return loom::gelu(x, approximate); }

std::string GELU::extra_repr() const {
  return approximate == ops::GeluApprox::kTanh ? "approximate='tanh'" : "approximate='none'";
}

Tensor SiLU::forward(const Tensor& x) { return silu(x); }

}  // namespace loom::nn
