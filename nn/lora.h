// LoRA (Hu et al., 2021): a frozen Linear beside a small trainable low-rank update, y = W x + b + (alpha / r) B (A x)
// with A (r, in) and B (out, r), as Hugging Face PEFT's LoraLayer. The frozen weight and bias keep the Linear's names
// (`c_attn.weight`), so a pretrained checkpoint loads unchanged; the adapters are `c_attn.lora_A.weight` and
// `c_attn.lora_B.weight`.
#pragma once

#include <memory>
#include <string>

#include "nn/linear.h"

namespace loom::nn {

struct LoRAOptions {
  int64_t rank = 8;        // r
  double alpha = 16.0;     // the update is scaled by alpha / r
  double init_std = 0.02;  // A ~ normal(0, init_std)
  /// true (PEFT's default): B starts at zero, so the wrapped layer computes what the base did until B moves; false: B
  /// ~ normal(0, init_std) too (tests use it so both adapters get gradients from the first step).
  bool zero_init_b = true;
};

class LoRALinear : public Linear {
 public:
  /// Wraps base's weight and bias (the same tensors, which get requires_grad = false: they are frozen) and creates the
  /// adapters (base's dtype and device; A drawn from gen). Throws InvalidArgument when opts.rank is not in [1,
  /// min(in_features, out_features)] or opts.alpha is not positive.
  explicit LoRALinear(const Linear& base, LoRAOptions opts = {}, Generator& gen = default_generator());
  /// x (..., in) -> (..., out): base(x) + scaling() * lora_B(lora_A(x)).
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  /// alpha / rank.
  double scaling() const { return opts_.alpha / static_cast<double>(opts_.rank); }

  std::shared_ptr<Linear> lora_A;  // in -> r, no bias
  std::shared_ptr<Linear> lora_B;  // r -> out, no bias

 private:
  LoRAOptions opts_;
};

}  // namespace loom::nn
