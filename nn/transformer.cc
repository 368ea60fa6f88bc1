#include "nn/transformer.h"

#include "autograd/functions.h"

namespace loom::nn {

namespace {
/// The input check LayerNorm/RMSNorm.forward make, for the fused path that bypasses them.
void check_norm_input(const char* op, const Tensor& x, int64_t C) {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == C, op, ": input of shape ", shape_str(x.sizes()),
             " does not end in normalized_shape=", C);
}
}  // namespace

TransformerBlock::TransformerBlock(const BlockOptions& o, Generator& gen)
    : Module(o.style == BlockStyle::kGPT2 ? "GPT2Block" : "LlamaDecoderLayer"), style_(o.style) {
  const int64_t C = o.attn.n_embd;
  LOOM_CHECK(o.mlp.n_embd == C, "TransformerBlock: attention n_embd (", C, ") and MLP n_embd (", o.mlp.n_embd,
             ") differ");
  if (style_ == BlockStyle::kGPT2) {
    norm_1 = register_module("ln_1", std::make_shared<LayerNorm>(C, o.norm_eps, true, o.attn.dtype));
    attn = register_module("attn", std::make_shared<CausalSelfAttention>(o.attn, gen, "GPT2Attention"));
    norm_2 = register_module("ln_2", std::make_shared<LayerNorm>(C, o.norm_eps, true, o.attn.dtype));
    mlp = register_module("mlp", std::make_shared<GeluMLP>(o.mlp, gen, "GPT2MLP"));
  } else {
    // Hugging Face's LlamaDecoderLayer registers attention and MLP before the norms;
    // the same order gives the same named_parameters()/state_dict() order.
    attn = register_module("self_attn", std::make_shared<CausalSelfAttention>(o.attn, gen, "LlamaAttention"));
    mlp = register_module("mlp", std::make_shared<SwiGLUMLP>(o.mlp, gen, "LlamaMLP"));
    norm_1 = register_module("input_layernorm", std::make_shared<RMSNorm>(C, o.norm_eps, o.attn.dtype));
    norm_2 = register_module("post_attention_layernorm", std::make_shared<RMSNorm>(C, o.norm_eps, o.attn.dtype));
  }
}

Tensor TransformerBlock::apply_norm(Module& norm, const Tensor& x) {
  if (style_ == BlockStyle::kGPT2) return static_cast<LayerNorm&>(norm)(x);
  return static_cast<RMSNorm&>(norm)(x);
}

std::pair<Tensor, Tensor> TransformerBlock::add_and_norm(Module& norm, const Tensor& x, const Tensor& residual) {
  if (norm.has_hooks()) {  // the fused op would skip the norm's hooks
    Tensor h = loom::add(x, residual);
    return {h, apply_norm(norm, h)};
  }
  if (style_ == BlockStyle::kGPT2) {
    auto& ln = static_cast<LayerNorm&>(norm);
    check_norm_input("LayerNorm.forward", x, ln.normalized_shape);
    return add_layer_norm(x, residual, ln.weight, ln.bias, ln.eps);
  }
  auto& rms = static_cast<RMSNorm&>(norm);
  check_norm_input("RMSNorm.forward", x, rms.normalized_shape);
  return add_rms_norm(x, residual, rms.weight, rms.eps);
}

Tensor TransformerBlock::forward(const Tensor& x) { return finish(x, (*attn)(apply_norm(*norm_1, x))); }

Tensor TransformerBlock::forward_cached(const Tensor& x, KVCache& cache, const std::vector<int64_t>& past) {
  autograd::NoGradGuard no_grad;
  return finish(x, (*attn)(apply_norm(*norm_1, x), cache, past));
}

Tensor TransformerBlock::finish(const Tensor& x, const Tensor& attn_out) {
  // The attention residual add and ln_2 / post_attention_layernorm as one op (one kernel
  // on CUDA, the same bits on CPU). The MLP's residual add is left to the next block or
  // the final norm, which sit behind a module (and FSDP unit) boundary.
  auto [h, n] = add_and_norm(*norm_2, x, attn_out);
  Tensor m = style_ == BlockStyle::kGPT2 ? (*std::static_pointer_cast<GeluMLP>(mlp))(n)
                                         : (*std::static_pointer_cast<SwiGLUMLP>(mlp))(n);
  return loom::add(h, m);
}

}  // namespace loom::nn
