#include "nn/linear.h"

#include "autograd/functions.h"
#include "nn/init.h"

namespace loom::nn {

Linear::Linear(int64_t in, int64_t out, LinearOptions opts, Generator& gen)
    : Module("Linear"), in_features(in), out_features(out) {
  LOOM_CHECK(in > 0 && out > 0, "Linear: in_features (", in, ") and out_features (", out, ") must be positive");
  weight = register_parameter("weight", empty({out, in}, opts.dtype));
  init::normal_(weight, 0.0, opts.init_std, gen);
  if (opts.bias) {
    bias = register_parameter("bias", empty({out}, opts.dtype));
    init::zeros_(bias);
  }
}

Tensor Linear::forward(const Tensor& x) {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear.forward: input of shape ", shape_str(x.sizes()),
             " does not end in in_features=", in_features, " (weight ", shape_str(weight.sizes()), ")");
  return linear(x, weight, bias);
}

std::string Linear::extra_repr() const {
  return "in_features=" + std::to_string(in_features) + ", out_features=" + std::to_string(out_features) +
         ", bias=" + (bias.defined() ? "True" : "False");
}

void Linear::tie_weight(const Tensor& w) {
  LOOM_CHECK(w.sizes() == weight.sizes(), "Linear.tie_weight: weight of shape ", shape_str(w.sizes()),
             " does not match this layer's ", shape_str(weight.sizes()));
  weight = register_parameter("weight", w, /*requires_grad=*/false);  // keeps w's own flag (a frozen embedding)
}

}  // namespace loom::nn
