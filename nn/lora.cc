#include "nn/lora.h"

#include <algorithm>

#include "autograd/functions.h"
#include "nn/init.h"

namespace loom::nn {

namespace {
Generator& scratch_generator() {
  static thread_local Generator gen(0);
  return gen;
}
}  // namespace

LoRALinear::LoRALinear(const Linear& base, LoRAOptions opts, Generator& gen)
    : Linear(base.in_features, base.out_features, LinearOptions{false, 0.0, base.weight.dtype()}, scratch_generator()),
      opts_(opts) {
  LOOM_CHECK(opts.rank >= 1 && opts.rank <= std::min(base.in_features, base.out_features), "LoRALinear: rank ",
             opts.rank, " must be in [1, ", std::min(base.in_features, base.out_features), "] for a Linear(",
             base.in_features, ", ", base.out_features, ")");
  LOOM_CHECK(opts.alpha > 0.0, "LoRALinear: alpha must be positive, got ", opts.alpha);
  // The base's own tensors, frozen: whoever else holds them (a tied head, an optimizer) sees the same ones.
  weight = register_parameter("weight", base.weight, false);
  weight.set_requires_grad(false);
  if (base.bias.defined()) {
    bias = register_parameter("bias", base.bias, false);
    bias.set_requires_grad(false);
  }
  const DType dt = base.weight.dtype();
  lora_A = register_module(
      "lora_A", std::make_shared<Linear>(in_features, opts.rank, LinearOptions{false, opts.init_std, dt}, gen));
  lora_B = register_module(
      "lora_B", std::make_shared<Linear>(opts.rank, out_features, LinearOptions{false, opts.init_std, dt}, gen));
  if (opts.zero_init_b) init::zeros_(lora_B->weight);
  lora_A->to(base.weight.device());
  lora_B->to(base.weight.device());
}

Tensor LoRALinear::forward(const Tensor& x) {
  Tensor y = Linear::forward(x);       // (..., out), frozen
  Tensor u = (*lora_B)((*lora_A)(x));  // (..., out) through (..., r)
  return add(y, mul(u, scaling()));
}

std::string LoRALinear::extra_repr() const {
  return Linear::extra_repr() + ", r=" + std::to_string(opts_.rank) + ", alpha=" + std::to_string(opts_.alpha);
}

}  // namespace loom::nn
