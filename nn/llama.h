// Llama (Hugging Face's LlamaForCausalLM layout and parameter names):
// model.{embed_tokens, layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate,up,down}_proj}, norm} and lm_head
// (untied by default). RMSNorm, grouped-query attention, RoPE, SwiGLU, no biases.
#pragma once

#include "nn/causal_lm.h"
#include "nn/embedding.h"
#include "nn/norm.h"

namespace loom::nn {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t max_seq_len = 2048;
  int64_t n_embd = 4096;
  int64_t n_layer = 32;
  int64_t n_head = 32;
  int64_t n_kv_head = 32;
  int64_t intermediate_size = 11008;
  double dropout = 0.0;  // attention-probability dropout (Llama uses none)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  DType dtype = DType::f32;
  /// Throws InvalidArgument naming the field when a value is unusable.
  void validate() const;
};

/// model.* : embeddings, decoder layers and the final norm (HF's LlamaModel).
class LlamaModel : public Module {
 public:
  LlamaModel(const LlamaConfig& cfg, Generator& gen);
  /// idx (B, T) -> hidden states (B, T, C) after the final norm.
  Tensor forward(const Tensor& idx);
  /// Inference over new tokens idx (B, T) at positions cache.lengths[b] + t, appending their keys and values to
  /// cache (see InferenceCache) -> hidden states (B, T, C).
  Tensor forward_cached(const Tensor& idx, InferenceCache& cache);
  Tensor operator()(const Tensor& idx) {
    return call(idx, [this](const Tensor& in) { return forward(in); });
  }

  std::shared_ptr<Embedding> embed_tokens;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<RMSNorm> norm;
  std::vector<std::shared_ptr<TransformerBlock>> blocks;

 private:
  LlamaConfig cfg_;
};

class Llama : public CausalLM {
 public:
  /// Initialises as Hugging Face's Llama: every Linear and the embeddings
  /// normal(0, initializer_range), RMSNorm weights one, drawn from gen.
  explicit Llama(const LlamaConfig& cfg, Generator& gen = default_generator());
  Tensor forward(const Tensor& idx) override;
  std::vector<std::shared_ptr<TransformerBlock>> blocks() const override { return model->blocks; }
  int64_t vocab_size() const override { return cfg_.vocab_size; }
  /// Llama has no position embeddings, so N is every parameter.
  double flops_per_token(int64_t seq_len) const override;
  int64_t max_positions() const override { return cfg_.max_seq_len; }
  Tensor hidden_states(const Tensor& idx, InferenceCache* cache) override;
  Tensor head(const Tensor& h) override { return (*lm_head)(h); }
  const LlamaConfig& config() const { return cfg_; }

  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<Linear> lm_head;

 private:
  LlamaConfig cfg_;
};

}  // namespace loom::nn
