// A pre-norm transformer block: x + attn(norm_1(x)), then + mlp(norm_2(x)).
// GPT-2 style (LayerNorm, fused attention, GELU MLP; ln_1/attn/ln_2/mlp) or
// Llama style (RMSNorm, GQA + RoPE, SwiGLU; input_layernorm/self_attn/
// post_attention_layernorm/mlp), with Hugging Face's child names.
#pragma once

#include <utility>
#include <vector>

#include "nn/attention.h"
#include "nn/mlp.h"
#include "nn/module.h"
#include "nn/norm.h"

namespace loom::nn {

enum class BlockStyle { kGPT2, kLlama };

struct BlockOptions {
  BlockStyle style = BlockStyle::kGPT2;
  AttentionOptions attn;
  MLPOptions mlp;
  double norm_eps = 1e-5;
};

class TransformerBlock : public Module {
 public:
  explicit TransformerBlock(const BlockOptions& opts, Generator& gen = default_generator());
  /// x (B, T, C) -> (B, T, C).
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  /// Inference over new tokens with the attention layer's cache (CausalSelfAttention::forward_cached): x (B, T, C)
  /// -> (B, T, C), through this block's hooks.
  Tensor operator()(const Tensor& x, KVCache& cache, const std::vector<int64_t>& past) {
    return call_hooks([&] { return forward_cached(x, cache, past); });
  }
  Tensor forward_cached(const Tensor& x, KVCache& cache, const std::vector<int64_t>& past);
  BlockStyle style() const { return style_; }

  std::shared_ptr<Module> norm_1, norm_2;  // LayerNorm or RMSNorm
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<Module> mlp;  // GeluMLP or SwiGLUMLP

 private:
  Tensor apply_norm(Module& norm, const Tensor& x);
  /// The block after its attention: mlp(norm_2(x + attn_out)) + x + attn_out.
  Tensor finish(const Tensor& x, const Tensor& attn_out);
  /// {x + residual, norm(x + residual)}: fused unless the norm has hooks.
  std::pair<Tensor, Tensor> add_and_norm(Module& norm, const Tensor& x, const Tensor& residual);
  BlockStyle style_;
};

}  // namespace loom::nn
