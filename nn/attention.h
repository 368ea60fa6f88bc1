// Causal multi-head self-attention with grouped-query heads (n_kv_head divides
// n_head) and optional rotary position embeddings, on the fused
// loom::scaled_dot_product_attention. Parameter names follow Hugging Face:
// GPT-2's fused `c_attn` + `c_proj`, or Llama's `q_proj k_proj v_proj o_proj`.
#pragma once

#include <array>
#include <vector>

#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/module.h"

namespace loom::nn {

/// One attention layer's keys and values for a batch of sequences, kept across forwards so that generation computes
/// each token once. Inference only: nothing flowing through it records gradients.
struct KVCache {
  Tensor k, v;           // (B, Hkv, capacity, D) in the layer's compute dtype; allocated by its first cached forward
  int64_t capacity = 0;  // positions each sequence may hold
};

/// The caches of every attention layer of a model for one batch, and how many tokens of each sequence they hold.
/// Batched prompts of different lengths go in right-padded: a forward over new tokens idx (B, T) writes sequence b's
/// keys and values at slots lengths[b] .. lengths[b] + T - 1 (its positions too), and query t of sequence b attends to
/// slots 0 .. lengths[b] + t only; the caller then advances lengths[b] by the number of real (non-padding) tokens of
/// row b, so the padding slots are masked out until the next tokens overwrite them.
struct InferenceCache {
  /// Empty caches for n_layers layers and `batch` sequences of at most `capacity` positions each.
  InferenceCache(int64_t n_layers, int64_t batch, int64_t capacity);
  int64_t batch() const { return static_cast<int64_t>(lengths.size()); }
  int64_t capacity() const { return capacity_; }
  std::vector<KVCache> layers;
  std::vector<int64_t> lengths;  // (B) tokens each sequence holds

 private:
  int64_t capacity_;
};

struct AttentionOptions {
  int64_t n_embd = 768;
  int64_t n_head = 12;
  int64_t n_kv_head = 0;  // 0: n_head (plain multi-head attention)
  bool bias = true;       // biases on the projections (GPT-2 yes, Llama no)
  bool fused_qkv = true;  // true: c_attn (C -> (H + 2 Hkv) D) and c_proj; false: q/k/v/o_proj
  bool rope = false;      // rotary embeddings on q and k (Llama)
  double rope_theta = 10000.0;
  int64_t max_seq_len = 1024;  // length of the rotary tables
  double dropout = 0.0;        // on the attention probabilities and on the output (GPT-2's attn/resid pdrop)
  double init_std = 0.02;
  double out_init_std = 0.02;  // output projection (GPT-2 scales it by 1/sqrt(2 n_layer))
  DType dtype = DType::f32;
};

class CausalSelfAttention : public Module {
 public:
  explicit CausalSelfAttention(const AttentionOptions& opts, Generator& gen = default_generator(),
                               std::string type_name = "CausalSelfAttention");
  /// x (B, T, C) -> (B, T, C). Throws when C != n_embd or T > max_seq_len with rope.
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  /// Inference over new tokens only: x (B, T, C) holds each sequence's next T tokens (right-padded), past[b] the tokens
  /// of sequence b already in cache (its positions: RoPE angles past[b] + t). Appends their keys and values to cache
  /// and attends over the cached prefix with grouped-query heads. Returns (B, T, C). No gradients are recorded. Throws
  /// InvalidArgument when past has not B entries, past[b] + T exceeds the cache's capacity (or max_seq_len with rope),
  /// or the cache was filled for another batch size.
  Tensor forward_cached(const Tensor& x, KVCache& cache, const std::vector<int64_t>& past);
  /// forward_cached through this module's hooks (FSDP gathers here).
  Tensor operator()(const Tensor& x, KVCache& cache, const std::vector<int64_t>& past) {
    return call_hooks([&] { return forward_cached(x, cache, past); });
  }

  int64_t n_head() const { return opts_.n_head; }
  int64_t n_kv_head() const { return opts_.n_kv_head; }
  /// Runs forward on a slice of the heads (tensor parallelism): the projections then produce local_heads query
  /// heads and local_kv_heads key/value heads (a fused c_attn: q|k|v of those widths) and the output projection
  /// takes local_heads * head_dim inputs. Throws InvalidArgument unless 0 < local_kv_heads <= n_kv_head, 0 <
  /// local_heads <= n_head and local_heads / local_kv_heads == n_head / n_kv_head (each query head keeps its kv head).
  void set_head_partition(int64_t local_heads, int64_t local_kv_heads);
  /// Heads this module computes: n_head() unless set_head_partition split them.
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  const AttentionOptions& options() const { return opts_; }

  std::shared_ptr<Linear> c_attn, c_proj;                  // fused_qkv
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;  // !fused_qkv
  std::shared_ptr<Dropout> resid_dropout;

 private:
  /// q (B, H, T, D), k and v (B, Hkv, T, D) of x (B, T, C), before rotary embeddings.
  std::array<Tensor, 3> project_heads(const Tensor& x);
  AttentionOptions opts_;
  int64_t head_dim_;
  int64_t local_heads_, local_kv_heads_;  // == n_head, n_kv_head unless set_head_partition
  Tensor rope_cos_, rope_sin_;            // (max_seq_len, D/2) non-persistent buffers
};

/// Rotary tables as Hugging Face's Llama computes them (f32): inv_freq[i] =
/// 1/theta^(2i/D), angle[t][i] = t * inv_freq[i]. Returns (cos, sin), each (T, D/2).
std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t head_dim, double theta);

}  // namespace loom::nn
