// The interface the training recipes and parallel wrappers see for a decoder-only
// language model: forward to logits, the loss, the transformer blocks (FSDP's
// default wrapping units), the FLOPs per token (for MFU), and inference over new
// tokens with a KV cache (next_token_logits; nn/generation.h drives it).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "nn/attention.h"
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

  // ------------------------------------------------------------ inference
  /// Positions a sequence may hold (GPT-2's n_positions, Llama's max_seq_len).
  virtual int64_t max_positions() const;
  /// Hidden states after the final norm, (B, T, C). Without a cache: the ordinary forward over whole sequences idx
  /// (B, T). With one: idx holds each sequence's next tokens (right-padded), at positions cache->lengths[b] + t, and
  /// their keys and values are written to the cache (lengths are not advanced: next_token_logits does that).
  virtual Tensor hidden_states(const Tensor& idx, InferenceCache* cache);
  /// The output head: h (..., C) -> logits (..., V') (V' = V / tp under tensor parallelism).
  virtual Tensor head(const Tensor& h);
  /// An empty cache for `batch` sequences of up to `capacity` positions. Throws InvalidArgument when capacity exceeds
  /// max_positions().
  InferenceCache make_cache(int64_t batch, int64_t capacity) const;
  /// Inference, no gradients: the logits (B, V') of the token after each sequence. idx (B, T) i64 is right-padded:
  /// row b's first n_new[b] tokens are real (1 <= n_new[b] <= T). Without a cache idx holds whole sequences; with one,
  /// the tokens that follow the cache's lengths[b], whose keys and values are appended, and lengths[b] advances by
  /// n_new[b]. Runs through this module's hooks (FSDP gathers; all ranks of a sharded model must call it alike).
  Tensor next_token_logits(const Tensor& idx, const std::vector<int64_t>& n_new, InferenceCache* cache = nullptr);

 private:
  LossFunction loss_fn_;  // empty: loom::cross_entropy
};

}  // namespace loom::nn
