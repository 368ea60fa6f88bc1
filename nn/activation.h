// Activation modules, so they appear in a model's printed summary like PyTorch's.
#pragma once

#include "nn/module.h"
#include "tensor/ops.h"

namespace loom::nn {

class GELU : public Module {
 public:
  /// approximate: kNone (erf) or kTanh (GPT-2's "gelu_new").
  explicit GELU(ops::GeluApprox approximate = ops::GeluApprox::kNone);
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;

  ops::GeluApprox approximate;
};

class SiLU : public Module {
 public:
  SiLU() : Module("SiLU") {}
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
};

}  // namespace loom::nn
