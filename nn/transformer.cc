#include "nn/transformer.h"

#include "autograd/functions.h"

namespace loom::nn {

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

Tensor TransformerBlock::forward(const Tensor& x) {
  Tensor h = loom::add(x, (*attn)(apply_norm(*norm_1, x)));
  Tensor m = style_ == BlockStyle::kGPT2 ? (*std::static_pointer_cast<GeluMLP>(mlp))(apply_norm(*norm_2, h))
                                         : (*std::static_pointer_cast<SwiGLUMLP>(mlp))(apply_norm(*norm_2, h));
  return loom::add(h, m);
}

}  // namespace loom::nn
