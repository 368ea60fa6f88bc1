// Dropout: inverted dropout in training mode, identity in eval mode (torch.nn.Dropout).
#pragma once

#include "nn/module.h"
#include "tensor/random.h"

namespace loom::nn {

class Dropout : public Module {
 public:
  /// p in [0, 1); draws from gen (the default generator unless given).
  explicit Dropout(double p = 0.5, Generator& gen = default_generator());
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;

  double p;

 private:
  Generator* gen_;
};

}  // namespace loom::nn
