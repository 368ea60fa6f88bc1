// Causal multi-head self-attention with grouped-query heads (n_kv_head divides
// n_head) and optional rotary position embeddings, on the fused
// loom::scaled_dot_product_attention. Parameter names follow Hugging Face:
// GPT-2's fused `c_attn` + `c_proj`, or Llama's `q_proj k_proj v_proj o_proj`.
#pragma once

#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/module.h"

namespace loom::nn {

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
  AttentionOptions opts_;
  int64_t head_dim_;
  int64_t local_heads_, local_kv_heads_;  // == n_head, n_kv_head unless set_head_partition
  Tensor rope_cos_, rope_sin_;            // (max_seq_len, D/2) non-persistent buffers
};

/// Rotary tables as Hugging Face's Llama computes them (f32): inv_freq[i] =
/// 1/theta^(2i/D), angle[t][i] = t * inv_freq[i]. Returns (cos, sin), each (T, D/2).
std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t head_dim, double theta);

}  // namespace loom::nn
