// Linear: y = x @ W^T + b with W stored (out_features, in_features) like
// torch.nn.Linear. (Hugging Face's GPT-2 Conv1D stores the transpose, (in, out);
// the safetensors exporter transposes those weights, not this layer.)
#pragma once

#include "nn/module.h"
#include "tensor/random.h"

namespace loom::nn {

struct LinearOptions {
  bool bias = true;
  double init_std = 0.02;  // weight ~ normal(0, init_std); bias zero
  DType dtype = DType::f32;
};

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, LinearOptions opts = {}, Generator& gen = default_generator());
  /// x (..., in) -> (..., out). Throws naming both shapes when x's last dim is not in_features.
  /// Virtual so tensor-parallel layers (parallel/tensor_parallel.h) can stand in for a Linear a model holds.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  /// Replaces the weight with `w` (same shape), e.g. to tie an output head to an embedding.
  void tie_weight(const Tensor& w);

  int64_t in_features, out_features;
  Tensor weight;  // (out, in)
  Tensor bias;    // (out) or undefined
};

}  // namespace loom::nn
