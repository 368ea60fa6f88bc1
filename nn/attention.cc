#include "nn/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/functions.h"

namespace loom::nn {

InferenceCache::InferenceCache(int64_t n_layers, int64_t batch, int64_t capacity) : capacity_(capacity) {
  LOOM_CHECK(n_layers > 0 && batch > 0 && capacity > 0, "InferenceCache: n_layers (", n_layers, "), batch (", batch,
             ") and capacity (", capacity, ") must be positive");
  layers.resize(static_cast<size_t>(n_layers));
  for (auto& l : layers) l.capacity = capacity;
  lengths.assign(static_cast<size_t>(batch), 0);
}

std::pair<Tensor, Tensor> rope_tables(int64_t T, int64_t D, double theta) {
  LOOM_CHECK(D > 0 && D % 2 == 0, "rope_tables: head_dim must be even and positive, got ", D);
  const int64_t half = D / 2;
  Tensor cos_t = empty({T, half}, DType::f32), sin_t = empty({T, half}, DType::f32);
  float* c = cos_t.data<float>();
  float* s = sin_t.data<float>();
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      float a = static_cast<float>(t) * inv_freq[i];
      c[t * half + i] = std::cos(a);
      s[t * half + i] = std::sin(a);
    }
  return {cos_t, sin_t};
}

CausalSelfAttention::CausalSelfAttention(const AttentionOptions& o, Generator& gen, std::string type_name)
    : Module(std::move(type_name)), opts_(o) {
  if (opts_.n_kv_head == 0) opts_.n_kv_head = opts_.n_head;
  const int64_t C = opts_.n_embd, H = opts_.n_head, Hkv = opts_.n_kv_head;
  LOOM_CHECK(C > 0 && H > 0 && C % H == 0, "CausalSelfAttention: n_embd (", C,
             ") must be a positive multiple of n_head (", H, ")");
  LOOM_CHECK(Hkv > 0 && H % Hkv == 0, "CausalSelfAttention: n_head (", H, ") must be a multiple of n_kv_head (", Hkv,
             ")");
  head_dim_ = C / H;
  local_heads_ = H;
  local_kv_heads_ = Hkv;
  const int64_t D = head_dim_;
  LinearOptions in_opts{opts_.bias, opts_.init_std, opts_.dtype};
  LinearOptions out_opts{opts_.bias, opts_.out_init_std, opts_.dtype};
  if (opts_.fused_qkv) {
    c_attn = register_module("c_attn", std::make_shared<Linear>(C, (H + 2 * Hkv) * D, in_opts, gen));
    c_proj = register_module("c_proj", std::make_shared<Linear>(H * D, C, out_opts, gen));
  } else {
    q_proj = register_module("q_proj", std::make_shared<Linear>(C, H * D, in_opts, gen));
    k_proj = register_module("k_proj", std::make_shared<Linear>(C, Hkv * D, in_opts, gen));
    v_proj = register_module("v_proj", std::make_shared<Linear>(C, Hkv * D, in_opts, gen));
    o_proj = register_module("o_proj", std::make_shared<Linear>(H * D, C, out_opts, gen));
  }
  if (opts_.dropout > 0.0)
    resid_dropout = register_module("resid_dropout", std::make_shared<Dropout>(opts_.dropout, gen));
  if (opts_.rope) {
    LOOM_CHECK(D % 2 == 0, "CausalSelfAttention: rotary embeddings need an even head_dim, got ", D);
    auto [c, s] = rope_tables(opts_.max_seq_len, D, opts_.rope_theta);
    if (opts_.dtype != DType::f32) {
      c = ops::to(c, opts_.dtype);
      s = ops::to(s, opts_.dtype);
    }
    rope_cos_ = register_buffer("rope_cos", c, /*persistent=*/false);
    rope_sin_ = register_buffer("rope_sin", s, /*persistent=*/false);
  }
}

void CausalSelfAttention::set_head_partition(int64_t local_heads, int64_t local_kv_heads) {
  const int64_t H = opts_.n_head, Hkv = opts_.n_kv_head;
  LOOM_CHECK(local_heads > 0 && local_heads <= H && local_kv_heads > 0 && local_kv_heads <= Hkv &&
                 local_heads % local_kv_heads == 0 && local_heads / local_kv_heads == H / Hkv,
             type_name(), ".set_head_partition: ", local_heads, " query and ", local_kv_heads,
             " key/value heads are not a slice of n_head=", H, ", n_kv_head=", Hkv,
             " that keeps n_head / n_kv_head query heads per key/value head");
  local_heads_ = local_heads;
  local_kv_heads_ = local_kv_heads;
}

std::array<Tensor, 3> CausalSelfAttention::project_heads(const Tensor& x) {
  // H, Hkv: the heads this rank computes (all of them unless set_head_partition split them).
  const int64_t C = opts_.n_embd, H = local_heads_, Hkv = local_kv_heads_, D = head_dim_;
  LOOM_CHECK(x.dim() == 3 && x.size(2) == C, type_name(), ".forward: expected x of shape (B, T, ", C, "), got ",
             shape_str(x.sizes()));
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q, k, v;  // (B, T, H*D), (B, T, Hkv*D) x2
  if (opts_.fused_qkv) {
    Tensor qkv = (*c_attn)(x);  // (B, T, (H + 2 Hkv) D)
    auto parts = loom::split_with_sizes(qkv, {H * D, Hkv * D, Hkv * D}, 2);
    q = parts[0];
    k = parts[1];
    v = parts[2];
  } else {
    q = (*q_proj)(x);
    k = (*k_proj)(x);
    v = (*v_proj)(x);
  }
  auto heads = [&](const Tensor& t, int64_t n) {  // (B, T, n*D) -> (B, n, T, D)
    return loom::contiguous(loom::transpose(loom::reshape(t, {B, T, n, D}), 1, 2));
  };
  return {heads(q, H), heads(k, Hkv), heads(v, Hkv)};
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  const int64_t H = local_heads_, D = head_dim_;
  auto [q, k, v] = project_heads(x);
  const int64_t B = x.size(0), T = x.size(1);
  if (opts_.rope) {
    LOOM_CHECK(T <= opts_.max_seq_len, type_name(), ".forward: sequence length ", T, " exceeds max_seq_len ",
               opts_.max_seq_len);
    Tensor cos_t = ops::narrow(rope_cos_, 0, 0, T), sin_t = ops::narrow(rope_sin_, 0, 0, T);
    q = loom::rope(q, cos_t, sin_t);
    k = loom::rope(k, cos_t, sin_t);
  }
  Tensor y = loom::scaled_dot_product_attention(q, k, v, /*is_causal=*/true, opts_.dropout, is_training());
  y = loom::reshape(loom::contiguous(loom::transpose(y, 1, 2)), {B, T, H * D});  // (B, T, C), C/tp under TP
  y = opts_.fused_qkv ? (*c_proj)(y) : (*o_proj)(y);
  if (resid_dropout) y = (*resid_dropout)(y);
  return y;
}

Tensor CausalSelfAttention::forward_cached(const Tensor& x, KVCache& cache, const std::vector<int64_t>& past) {
  autograd::NoGradGuard no_grad;
  const int64_t H = local_heads_, Hkv = local_kv_heads_, D = head_dim_, G = H / Hkv;
  auto [q, k, v] = project_heads(x);  // (B, H, T, D), (B, Hkv, T, D) x2
  const int64_t B = x.size(0), T = x.size(1), cap = cache.capacity;
  LOOM_CHECK(static_cast<int64_t>(past.size()) == B, type_name(), ".forward_cached: ", past.size(),
             " cached lengths for a batch of ", B);
  int64_t S = 0;  // slots any query of the batch may see
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = past[static_cast<size_t>(b)];
    LOOM_CHECK(p >= 0 && p + T <= cap, type_name(), ".forward_cached: sequence ", b, " holds ", p, " tokens; ", T,
               " more exceed the cache's capacity of ", cap, " positions");
    LOOM_CHECK(!opts_.rope || p + T <= opts_.max_seq_len, type_name(), ".forward_cached: position ", p + T - 1,
               " of sequence ", b, " is beyond max_seq_len ", opts_.max_seq_len);
    S = std::max(S, p + T);
  }
  if (!cache.k.defined()) {
    cache.k = ops::zeros({B, Hkv, cap, D}, k.dtype(), k.device());
    cache.v = ops::zeros({B, Hkv, cap, D}, v.dtype(), v.device());
  }
  LOOM_CHECK(cache.k.size(0) == B && cache.k.size(1) == Hkv && cache.k.size(3) == D, type_name(),
             ".forward_cached: the cache holds ", shape_str(cache.k.sizes()), " but this batch needs (", B, ", ", Hkv,
             ", ", cap, ", ", D, "); use one InferenceCache per batch");
  const bool same_past = std::all_of(past.begin(), past.end(), [&](int64_t p) { return p == past[0]; });
  for (int64_t b = 0; b < B; ++b) {
    const int64_t p = past[static_cast<size_t>(b)];
    Tensor qb = ops::narrow(q, 0, b, 1), kb = ops::narrow(k, 0, b, 1);
    if (opts_.rope && !same_past) {  // each sequence at its own positions
      Tensor c = ops::narrow(rope_cos_, 0, p, T), s = ops::narrow(rope_sin_, 0, p, T);
      ops::copy_(qb, ops::rope(qb, c, s));
      kb = ops::rope(kb, c, s);
    } else if (opts_.rope) {
      Tensor c = ops::narrow(rope_cos_, 0, p, T), s = ops::narrow(rope_sin_, 0, p, T);
      if (b == 0) q = ops::rope(q, c, s);
      kb = ops::rope(kb, c, s);
    }
    ops::copy_(ops::narrow(ops::narrow(cache.k, 0, b, 1), 2, p, T), kb);
    ops::copy_(ops::narrow(ops::narrow(cache.v, 0, b, 1), 2, p, T), ops::narrow(v, 0, b, 1));
  }
  // The G query heads of a kv head as G*T rows against its cached keys: no copy of the cache per query head.
  Tensor kc = ops::narrow(cache.k, 2, 0, S), vc = ops::narrow(cache.v, 2, 0, S);  // (B, Hkv, S, D)
  Tensor qg = ops::reshape(q, {B, Hkv, G * T, D});
  if (qg.dtype() == DType::bf16 ||
      qg.dtype() == DType::f16) {  // scores and softmax in f32, as the fused attention computes them
    qg = ops::to(qg, DType::f32);
    kc = ops::to(kc, DType::f32);
    vc = ops::to(vc, DType::f32);
  }
  Tensor scores = ops::matmul(qg, ops::transpose(kc, 2, 3));  // (B, Hkv, G*T, S)
  ops::mul_(scores, 1.0 / std::sqrt(static_cast<double>(D)));
  Tensor mask = empty({B, 1, G * T, S}, DType::u8);  // 1: slot not visible to that query
  uint8_t* m = mask.data<uint8_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < G * T; ++r)
      for (int64_t s = 0; s < S; ++s) m[(b * G * T + r) * S + s] = s > past[static_cast<size_t>(b)] + r % T ? 1 : 0;
  scores = ops::masked_fill(scores, ops::to(mask, scores.device()), -std::numeric_limits<double>::infinity());
  Tensor y = ops::matmul(ops::softmax(scores, -1), vc);  // (B, Hkv, G*T, D)
  y = ops::to(y, x.dtype());
  y = ops::reshape(ops::contiguous(ops::transpose(ops::reshape(y, {B, H, T, D}), 1, 2)), {B, T, H * D});
  y = opts_.fused_qkv ? (*c_proj)(y) : (*o_proj)(y);
  if (resid_dropout) y = (*resid_dropout)(y);
  return y;
}

std::string CausalSelfAttention::extra_repr() const {
  std::string s = "n_head=" + std::to_string(opts_.n_head) + ", n_kv_head=" + std::to_string(opts_.n_kv_head) +
                  ", head_dim=" + std::to_string(head_dim_);
  if (local_heads_ != opts_.n_head)
    s += ", local_heads=" + std::to_string(local_heads_) + ", local_kv_heads=" + std::to_string(local_kv_heads_);
  if (opts_.rope) s += ", rope_theta=" + format_float(opts_.rope_theta);
  return s;
}

}  // namespace loom::nn
