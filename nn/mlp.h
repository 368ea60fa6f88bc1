// Transformer feed-forward blocks: GPT-2's GELU MLP (c_fc, tanh GELU, c_proj)
// and Llama's SwiGLU MLP (down_proj(silu(gate_proj(x)) * up_proj(x))).
#pragma once

#include "nn/activation.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/module.h"

namespace loom::nn {

struct MLPOptions {
  int64_t n_embd = 768;
  int64_t hidden = 0;  // 0: 4 * n_embd
  bool bias = true;
  double dropout = 0.0;  // after the output projection (GelUMLP only)
  double init_std = 0.02;
  double out_init_std = 0.02;  // c_proj / down_proj
  DType dtype = DType::f32;
};

/// GPT-2: x -> c_proj(gelu_tanh(c_fc(x))) [-> dropout].
class GeluMLP : public Module {
 public:
  explicit GeluMLP(const MLPOptions& opts, Generator& gen = default_generator(), std::string type_name = "GeluMLP");
  /// x (..., C) -> (..., C).
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }

  std::shared_ptr<Linear> c_fc, c_proj;
  std::shared_ptr<GELU> act;
  std::shared_ptr<Dropout> dropout;  // null when opts.dropout == 0
};

/// Llama: x -> down_proj(silu(gate_proj(x)) * up_proj(x)), no biases by default.
class SwiGLUMLP : public Module {
 public:
  explicit SwiGLUMLP(const MLPOptions& opts, Generator& gen = default_generator(), std::string type_name = "SwiGLUMLP");
  /// x (..., C) -> (..., C).
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }

  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
  std::shared_ptr<SiLU> act_fn;
};

}  // namespace loom::nn
