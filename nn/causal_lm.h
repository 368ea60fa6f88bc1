// The interface the training recipes and parallel wrappers see for a decoder-only
// language model: forward to logits, the loss, the transformer blocks (FSDP's
// default wrapping units) and the FLOPs per token (for MFU).
#pragma once

#include <functional>
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
    return call(idx, [this](const Tensor& in) { return forward(in); });
  }
  /// Mean cross-entropy of forward(idx) against targets (B, T) i64, over the
  /// flattened (B*T, V) logits; targets equal to -100 are ignored. Computed by
  /// the loss function (loom::cross_entropy unless set_loss_function replaced it).
  Tensor loss(const Tensor& idx, const Tensor& targets);
  /// fn(logits (N, V'), targets (N)) -> scalar mean loss, where V' is the last dim forward produces.
  using LossFunction = std::function<Tensor(const Tensor& logits, const Tensor& targets)>;
  /// Replaces the loss loss() applies to the flattened logits; an empty fn restores loom::cross_entropy. Tensor
  /// parallelism sets a vocabulary-parallel cross-entropy here, since forward then yields each rank's vocab columns.
  void set_loss_function(LossFunction fn) { loss_fn_ = std::move(fn); }
  /// The transformer blocks in order.
  virtual std::vector<std::shared_ptr<TransformerBlock>> blocks() const = 0;
  virtual int64_t vocab_size() const = 0;
  /// Training FLOPs per token at sequence length seq_len: 6 N (forward and
  /// backward matmuls over the N non-position-embedding parameters) plus the
  /// attention term 12 * n_layer * n_embd * seq_len (PaLM appendix B, nanoGPT).
  virtual double flops_per_token(int64_t seq_len) const = 0;

 private:
  LossFunction loss_fn_;  // empty: loom::cross_entropy
};

}  // namespace loom::nn
