// GPT-2 (Hugging Face's GPT2LMHeadModel layout and parameter names):
// transformer.{wte, wpe, h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
// mlp.c_proj}, ln_f} and lm_head (tied to wte by default).
#pragma once

#include "nn/causal_lm.h"
#include "nn/dropout.h"
#include "nn/embedding.h"
#include "nn/norm.h"

namespace loom::nn {

struct GPT2Config {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  double dropout = 0.0;  // embedding, attention and residual dropout
  double layer_norm_epsilon = 1e-5;
  bool tie_word_embeddings = true;
  double initializer_range = 0.02;
  DType dtype = DType::f32;
  /// Throws InvalidArgument naming the field when a value is unusable.
  void validate() const;
};

/// transformer.* : the embeddings, blocks and final norm (HF's GPT2Model).
class GPT2Model : public Module {
 public:
  GPT2Model(const GPT2Config& cfg, Generator& gen);
  /// idx (B, T) -> hidden states (B, T, C) after ln_f.
  Tensor forward(const Tensor& idx);
  /// Inference over new tokens idx (B, T) at positions cache.lengths[b] + t, appending their keys and values to
  /// cache (see InferenceCache) -> hidden states (B, T, C).
  Tensor forward_cached(const Tensor& idx, InferenceCache& cache);
  Tensor operator()(const Tensor& idx) {
    return call(idx, [this](const Tensor& in) { return forward(in); });
  }

  std::shared_ptr<Embedding> wte, wpe;
  std::shared_ptr<Dropout> drop;
  std::shared_ptr<ModuleList> h;
  std::shared_ptr<LayerNorm> ln_f;
  std::vector<std::shared_ptr<TransformerBlock>> blocks;

 private:
  GPT2Config cfg_;
};

class GPT2 : public CausalLM {
 public:
  /// Initialises as GPT-2: normal(0, 0.02) weights and embeddings, zero biases,
  /// unit LayerNorm weights, residual projections (attn.c_proj, mlp.c_proj)
  /// normal(0, 0.02/sqrt(2 n_layer)), all drawn from gen.
  explicit GPT2(const GPT2Config& cfg, Generator& gen = default_generator());
  Tensor forward(const Tensor& idx) override;
  std::vector<std::shared_ptr<TransformerBlock>> blocks() const override { return transformer->blocks; }
  int64_t vocab_size() const override { return cfg_.vocab_size; }
  double flops_per_token(int64_t seq_len) const override;
  int64_t max_positions() const override { return cfg_.n_positions; }
  Tensor hidden_states(const Tensor& idx, InferenceCache* cache) override;
  Tensor head(const Tensor& h) override { return (*lm_head)(h); }
  const GPT2Config& config() const { return cfg_; }

  std::shared_ptr<GPT2Model> transformer;
  std::shared_ptr<Linear> lm_head;  // weight (V, C), the same tensor as wte when tied

 private:
  GPT2Config cfg_;
};

}  // namespace loom::nn
