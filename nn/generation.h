// Text generation for a causal LM: a sampler (greedy, temperature, top-k, top-p, from a seeded Philox stream) and the
// loop that feeds a batch of prompts of different lengths through the model, with a KV cache (one forward per new
// token over the cached prefix) or without one (the whole sequence each step, the reference the cache is tested
// against). Inference only: no gradients are recorded.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "nn/causal_lm.h"
#include "tensor/random.h"

namespace loom::nn {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (argmax, the lowest id on a tie); otherwise logits / temperature
  int64_t top_k = 0;         // > 0: only the k most likely tokens
  double top_p = 1.0;        // < 1: only the most likely tokens whose probabilities first sum to >= top_p
  /// Throws InvalidArgument naming the field when a value is unusable.
  void validate() const;
};

/// The tokens sample() may return for one row of logits, most likely first (ties: lower id first); tokens of
/// probability zero (logit -inf) are never in it. Throws InvalidArgument when the row is NaN or all -inf.
std::vector<int64_t> allowed_tokens(const float* logits, int64_t vocab, const SamplingOptions& opts);

/// One token per row of logits (B, V) (any float dtype and device; copied to the host as f32), drawing one uniform
/// number per row from gen's Philox stream (none when greedy): the same gen state and logits give the same tokens.
/// The token is always one of allowed_tokens(row).
std::vector<int64_t> sample(const Tensor& logits, const SamplingOptions& opts, Generator& gen);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  uint64_t seed = 1337;  // the sampler's Philox stream
  bool use_cache = true;
  /// A sequence that emits this token stops (the token is kept); the loop ends when every sequence has stopped.
  std::optional<int64_t> stop_token;
  /// Applied to the next-token logits (B, V') before sampling, e.g. an all-gather of tensor-parallel vocabulary
  /// shards into (B, V). Empty: none.
  std::function<Tensor(const Tensor&)> gather_logits;
  /// Called with each step's next-token logits (B, V) before sampling (after gather_logits); e.g. to check them.
  std::function<void(const Tensor&)> on_logits;
  /// Throws InvalidArgument naming the field when a value is unusable.
  void validate() const;
};

/// Called after each step with the token chosen for every sequence (B) and which sequences were still running (a
/// stopped sequence's entry is meaningless).
using TokenCallback = std::function<void(const std::vector<int64_t>& tokens, const std::vector<bool>& running)>;

/// Continues each prompt (token ids, non-empty, each < the model's vocabulary) by up to max_new_tokens tokens and
/// returns the new tokens of each. Puts the model in eval mode for the call (restoring its mode after) and runs on the
/// device of its parameters. With the cache: one prefill forward over the right-padded prompts, then one forward of
/// one token per step; without: a forward over every whole sequence per step. Every rank of a sharded (FSDP/TP) model
/// must call it with the same prompts and options (the forwards are collective). Throws InvalidArgument for an empty
/// prompt or batch, or when the longest prompt plus max_new_tokens exceeds the model's context.
std::vector<std::vector<int64_t>> generate(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opts, const TokenCallback& on_step = {});

}  // namespace loom::nn
