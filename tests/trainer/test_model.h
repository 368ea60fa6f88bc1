// A small classifier and data set for the trainer tests: 4 features, 3 Gaussian clusters, an MLP with dropout.
#pragma once

#include <memory>

#include "autograd/functions.h"
#include "data/dataset.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "tensor/random.h"

namespace loom::trainer_test {

class TinyNet : public nn::Module {
 public:
  explicit TinyNet(Generator& gen, double dropout = 0.2) : Module("TinyNet") {
    nn::LinearOptions o;
    o.init_std = 0.4;
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(4, 32, o, gen));
    drop = register_module("drop", std::make_shared<nn::Dropout>(dropout));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(32, 3, o, gen));
  }
  /// x (B, 4) -> logits (B, 3).
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return (*fc2)((*drop)(loom::relu((*fc1)(in)))); });
  }
  std::shared_ptr<nn::Linear> fc1, fc2;
  std::shared_ptr<nn::Dropout> drop;
};

/// n rows: class i % 3 around centre (2c-2, c-1, 1-c, 0) with unit-half noise; the same for a given seed.
inline data::InMemoryDataset clusters(int64_t n, uint64_t seed) {
  Generator g(seed);
  Tensor noise = ops::randn({n, 4}, g);
  std::vector<float> x(static_cast<size_t>(n * 4));
  std::vector<int64_t> y(static_cast<size_t>(n));
  auto nv = noise.to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = i % 3;
    const float centre[4] = {2.0f * c - 2, c - 1.0f, 1.0f - c, 0};
    for (int k = 0; k < 4; ++k)
      x[static_cast<size_t>(i * 4 + k)] = centre[k] + 0.5f * nv[static_cast<size_t>(i * 4 + k)];
    y[static_cast<size_t>(i)] = c;
  }
  return data::InMemoryDataset(from_vector(x, {n, 4}), from_vector(y, {n}));
}

}  // namespace loom::trainer_test
