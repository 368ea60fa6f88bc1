#include "nn/gpt2.h"

#include <cmath>

#include "autograd/functions.h"

namespace loom::nn {

void GPT2Config::validate() const {
  LOOM_CHECK(vocab_size > 0, "GPT2Config: vocab_size must be positive, got ", vocab_size);
  LOOM_CHECK(n_positions > 0, "GPT2Config: n_positions must be positive, got ", n_positions);
  LOOM_CHECK(n_layer > 0, "GPT2Config: n_layer must be positive, got ", n_layer);
  LOOM_CHECK(n_head > 0 && n_embd > 0 && n_embd % n_head == 0, "GPT2Config: n_embd (", n_embd,
             ") must be a positive multiple of n_head (", n_head, ")");
  LOOM_CHECK(dropout >= 0.0 && dropout < 1.0, "GPT2Config: dropout must be in [0, 1), got ", dropout);
}

GPT2Model::GPT2Model(const GPT2Config& cfg, Generator& gen) : Module("GPT2Model"), cfg_(cfg) {
  const double std = cfg.initializer_range;
  wte = register_module("wte", std::make_shared<Embedding>(cfg.vocab_size, cfg.n_embd, std, cfg.dtype, gen));
  wpe = register_module("wpe", std::make_shared<Embedding>(cfg.n_positions, cfg.n_embd, std, cfg.dtype, gen));
  drop = register_module("drop", std::make_shared<Dropout>(cfg.dropout, gen));
  h = register_module("h", std::make_shared<ModuleList>());
  BlockOptions bo;
  bo.style = BlockStyle::kGPT2;
  bo.norm_eps = cfg.layer_norm_epsilon;
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(cfg.n_layer));
  bo.attn = AttentionOptions{cfg.n_embd,     cfg.n_head, cfg.n_head,      /*bias=*/true, /*fused_qkv=*/true,
                             /*rope=*/false, 10000.0,    cfg.n_positions, cfg.dropout,   std,
                             out_std,        cfg.dtype};
  bo.mlp = MLPOptions{cfg.n_embd, 4 * cfg.n_embd, /*bias=*/true, cfg.dropout, std, out_std, cfg.dtype};
  for (int64_t i = 0; i < cfg.n_layer; ++i) blocks.push_back(h->push_back(std::make_shared<TransformerBlock>(bo, gen)));
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(cfg.n_embd, cfg.layer_norm_epsilon, true, cfg.dtype));
}

Tensor GPT2Model::forward(const Tensor& idx) {
  LOOM_CHECK(idx.dim() == 2, "GPT2.forward: expected idx of shape (B, T), got ", shape_str(idx.sizes()));
  const int64_t T = idx.size(1);
  LOOM_CHECK(T <= cfg_.n_positions, "GPT2.forward: sequence length ", T, " exceeds n_positions ", cfg_.n_positions);
  Tensor pos = ops::arange(T, DType::i64, idx.device());  // (T)
  Tensor x = loom::add((*wte)(idx), (*wpe)(pos));         // (B, T, C) + (T, C)
  x = (*drop)(x);
  for (auto& block : blocks) x = (*block)(x);
  return (*ln_f)(x);
}

Tensor GPT2Model::forward_cached(const Tensor& idx, InferenceCache& cache) {
  LOOM_CHECK(idx.dim() == 2, "GPT2.forward_cached: expected idx of shape (B, T), got ", shape_str(idx.sizes()));
  const int64_t B = idx.size(0), T = idx.size(1);
  LOOM_CHECK(cache.batch() == B && cache.layers.size() == blocks.size(), "GPT2.forward_cached: the cache is for ",
             cache.batch(), " sequences and ", cache.layers.size(), " layers, idx has ", B, " and the model ",
             blocks.size());
  std::vector<int64_t> pos(static_cast<size_t>(B * T));  // (B, T): each sequence from its own length on
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = cache.lengths[static_cast<size_t>(b)];
    LOOM_CHECK(p + T <= cfg_.n_positions, "GPT2.forward_cached: position ", p + T - 1, " of sequence ", b,
               " exceeds n_positions ", cfg_.n_positions);
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(b * T + t)] = p + t;
  }
  Tensor x = loom::add((*wte)(idx), (*wpe)(ops::to(from_vector<int64_t>(pos, {B, T}), idx.device())));
  x = (*drop)(x);
  for (size_t i = 0; i < blocks.size(); ++i) x = (*blocks[i])(x, cache.layers[i], cache.lengths);
  return (*ln_f)(x);
}

GPT2::GPT2(const GPT2Config& cfg, Generator& gen) : CausalLM("GPT2LMHeadModel"), cfg_(cfg) {
  cfg.validate();
  transformer = register_module("transformer", std::make_shared<GPT2Model>(cfg, gen));
  if (cfg.tie_word_embeddings) {
    // The head's own weight is replaced by wte's: one tensor, two names.
    lm_head = std::make_shared<Linear>(cfg.n_embd, cfg.vocab_size, LinearOptions{false, 0.0, cfg.dtype}, gen);
    lm_head->tie_weight(transformer->wte->weight);
  } else {
    lm_head = std::make_shared<Linear>(cfg.n_embd, cfg.vocab_size,
                                       LinearOptions{false, cfg.initializer_range, cfg.dtype}, gen);
  }
  register_module("lm_head", lm_head);
}

Tensor GPT2::forward(const Tensor& idx) { return (*lm_head)((*transformer)(idx)); }

Tensor GPT2::hidden_states(const Tensor& idx, InferenceCache* cache) {
  return cache ? transformer->forward_cached(idx, *cache) : (*transformer)(idx);
}

double GPT2::flops_per_token(int64_t seq_len) const {
  const double N = static_cast<double>(num_parameters() - transformer->wpe->weight.numel());
  return 6.0 * N + 12.0 * static_cast<double>(cfg_.n_layer * cfg_.n_embd * seq_len);
}

}  // namespace loom::nn
