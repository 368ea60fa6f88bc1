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

/// While alive on this thread, every Dropout forward takes its input as rows [row_begin, row_begin + rows) of a global
/// batch of global_rows rows and draws for them the mask bits that a forward of the whole global batch would draw
/// (the generator is counter-based), then advances the generator as that forward would. Data-parallel training then
/// drops the same activations as one rank training on the whole batch. The mask of a row starting at an element index
/// that is not a multiple of 4 (Philox block) cannot be matched: those draws start at the block below instead.
class DropoutRowShard {
 public:
  DropoutRowShard(int64_t row_begin, int64_t global_rows);
  ~DropoutRowShard();
  DropoutRowShard(const DropoutRowShard&) = delete;
  DropoutRowShard& operator=(const DropoutRowShard&) = delete;
  int64_t row_begin, global_rows;

 private:
  DropoutRowShard* outer_;
};

}  // namespace loom::nn
