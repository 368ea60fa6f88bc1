// The interface the training recipes and parallel wrappers see for a decoder-only
// language model: forward to logits, the loss, the transformer blocks (FSDP's
// default wrapping units) and the FLOPs per token (for MFU).
#pragma once

#include <memory>
#include <vector>

#include "nn/module.h"
#include "nn/transformer.h"

namespace loom::nn {

class CausalLM : public Module {
 public:
  using Module::Module;
  /// idx (B, T) i64 token ids -> logits (B, T, vocab_size).
  virtual Tensor forward(const Tensor& idx) = 0;
  Tensor operator()(const Tensor& idx) {
    return call([&] { return forward(idx); });
  }
  /// Mean cross-entropy of forward(idx) against targets (B, T) i64, over the
  /// flattened (B*T, V) logits; targets equal to -100 are ignored.
  Tensor loss(const Tensor& idx, const Tensor& targets);
  /// The transformer blocks in order.
  virtual std::vector<std::shared_ptr<TransformerBlock>> blocks() const = 0;
  virtual int64_t vocab_size() const = 0;
  /// Training FLOPs per token at sequence length seq_len: 6 N (forward and
  /// backward matmuls over the N non-position-embedding parameters) plus the
  /// attention term 12 * n_layer * n_embd * seq_len (PaLM appendix B, nanoGPT).
  virtual double flops_per_token(int64_t seq_len) const = 0;
};

}  // namespace loom::nn
