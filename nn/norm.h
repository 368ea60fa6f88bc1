// Normalisation layers over the last dim: LayerNorm (GPT-2) and RMSNorm (Llama).
#pragma once

#include "nn/module.h"

namespace loom::nn {

class LayerNorm : public Module {
 public:
  /// weight ones, bias zeros (no bias when bias=false).
  explicit LayerNorm(int64_t normalized_shape, double eps = 1e-5, bool bias = true, DType dtype = DType::f32);
  /// x (..., C) -> (..., C).
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;

  int64_t normalized_shape;
  double eps;
  Tensor weight;  // (C)
  Tensor bias;    // (C) or undefined
};

class RMSNorm : public Module {
 public:
  /// weight ones.
  explicit RMSNorm(int64_t normalized_shape, double eps = 1e-6, DType dtype = DType::f32);
  /// x (..., C) -> x / rms(x) * weight.
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;

  int64_t normalized_shape;
  double eps;
  Tensor weight;  // (C)
};

}  // namespace loom::nn
