#include "nn/llama.h"

#include "autograd/functions.h"

namespace loom::nn {

void LlamaConfig::validate() const {
  LOOM_CHECK(vocab_size > 0, "LlamaConfig: vocab_size must be positive, got ", vocab_size);
  LOOM_CHECK(max_seq_len > 0, "LlamaConfig: max_seq_len must be positive, got ", max_seq_len);
  LOOM_CHECK(n_layer > 0, "LlamaConfig: n_layer must be positive, got ", n_layer);
  LOOM_CHECK(n_head > 0 && n_embd > 0 && n_embd % n_head == 0, "LlamaConfig: n_embd (", n_embd,
             ") must be a positive multiple of n_head (", n_head, ")");
  LOOM_CHECK(n_kv_head > 0 && n_head % n_kv_head == 0, "LlamaConfig: n_head (", n_head,
             ") must be a multiple of n_kv_head (", n_kv_head, ")");
  LOOM_CHECK((n_embd / n_head) % 2 == 0, "LlamaConfig: head_dim (", n_embd / n_head, ") must be even for RoPE");
  LOOM_CHECK(intermediate_size > 0, "LlamaConfig: intermediate_size must be positive, got ", intermediate_size);
}

LlamaModel::LlamaModel(const LlamaConfig& cfg, Generator& gen) : Module("LlamaModel"), cfg_(cfg) {
  const double std = cfg.initializer_range;
  embed_tokens =
      register_module("embed_tokens", std::make_shared<Embedding>(cfg.vocab_size, cfg.n_embd, std, cfg.dtype, gen));
  layers = register_module("layers", std::make_shared<ModuleList>());
  BlockOptions bo;
  bo.style = BlockStyle::kLlama;
  bo.norm_eps = cfg.rms_norm_eps;
  bo.attn = AttentionOptions{cfg.n_embd,    cfg.n_head,     cfg.n_kv_head,   /*bias=*/false, /*fused_qkv=*/false,
                             /*rope=*/true, cfg.rope_theta, cfg.max_seq_len, cfg.dropout,    std,
                             std,           cfg.dtype};
  bo.mlp = MLPOptions{cfg.n_embd, cfg.intermediate_size, /*bias=*/false, 0.0, std, std, cfg.dtype};
  for (int64_t i = 0; i < cfg.n_layer; ++i)
    blocks.push_back(layers->push_back(std::make_shared<TransformerBlock>(bo, gen)));
  norm = register_module("norm", std::make_shared<RMSNorm>(cfg.n_embd, cfg.rms_norm_eps, cfg.dtype));
}

Tensor LlamaModel::forward(const Tensor& idx) {
  LOOM_CHECK(idx.dim() == 2, "Llama.forward: expected idx of shape (B, T), got ", shape_str(idx.sizes()));
  LOOM_CHECK(idx.size(1) <= cfg_.max_seq_len, "Llama.forward: sequence length ", idx.size(1), " exceeds max_seq_len ",
             cfg_.max_seq_len);
  Tensor x = (*embed_tokens)(idx);  // (B, T, C)
  for (auto& block : blocks) x = (*block)(x);
  return (*norm)(x);
}

Tensor LlamaModel::forward_cached(const Tensor& idx, InferenceCache& cache) {
  LOOM_CHECK(idx.dim() == 2, "Llama.forward_cached: expected idx of shape (B, T), got ", shape_str(idx.sizes()));
  LOOM_CHECK(cache.batch() == idx.size(0) && cache.layers.size() == blocks.size(),
             "Llama.forward_cached: the cache is for ", cache.batch(), " sequences and ", cache.layers.size(),
             " layers, idx has ", idx.size(0), " and the model ", blocks.size());
  Tensor x = (*embed_tokens)(idx);  // (B, T, C); positions enter through RoPE in attention
  for (size_t i = 0; i < blocks.size(); ++i) x = (*blocks[i])(x, cache.layers[i], cache.lengths);
  return (*norm)(x);
}

Llama::Llama(const LlamaConfig& cfg, Generator& gen) : CausalLM("LlamaForCausalLM"), cfg_(cfg) {
  cfg.validate();
  model = register_module("model", std::make_shared<LlamaModel>(cfg, gen));
  lm_head =
      std::make_shared<Linear>(cfg.n_embd, cfg.vocab_size, LinearOptions{false, cfg.initializer_range, cfg.dtype}, gen);
  if (cfg.tie_word_embeddings) lm_head->tie_weight(model->embed_tokens->weight);
  register_module("lm_head", lm_head);
}

Tensor Llama::forward(const Tensor& idx) { return (*lm_head)((*model)(idx)); }

Tensor Llama::hidden_states(const Tensor& idx, InferenceCache* cache) {
  return cache ? model->forward_cached(idx, *cache) : (*model)(idx);
}

double Llama::flops_per_token(int64_t seq_len) const {
  return 6.0 * static_cast<double>(num_parameters()) + 12.0 * static_cast<double>(cfg_.n_layer * cfg_.n_embd * seq_len);
}

}  // namespace loom::nn
