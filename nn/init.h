// Parameter initialisation used by the layers and the reference models
// (GPT-2/Llama: normal(0, 0.02) weights, zero biases, unit norm weights).
#pragma once

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace loom::nn::init {

/// Fills t in place with normal(mean, std) draws from gen, without recording a gradient.
void normal_(const Tensor& t, double mean, double std, Generator& gen = default_generator());
/// Fills t in place with uniform draws in [low, high).
void uniform_(const Tensor& t, double low, double high, Generator& gen = default_generator());
void zeros_(const Tensor& t);
void ones_(const Tensor& t);

}  // namespace loom::nn::init
