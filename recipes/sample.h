// The pretraining recipe's samples (logging.sample_*): a few tokens drawn from the model every N steps, printed on
// rank 0 so a user sees the model learn (as llm.c does).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "nn/causal_lm.h"
#include "recipes/config.h"

namespace loom::data {
class Tokenizer;
}

namespace loom::recipes {

class TrainingSampler {
 public:
  /// Loads logging.sample_tokenizer and encodes logging.sample_prompt. Throws ConfigError naming the key when the
  /// tokenizer cannot be read, the prompt needs a tokenizer, or the prompt leaves no room in the model's context.
  TrainingSampler(const LoggingConfig& cfg, int64_t vocab_size, int64_t context);
  ~TrainingSampler();
  /// Draws logging.sample_tokens tokens (temperature 1, top-k 50, seed `seed`) and returns the text (the prompt, then
  /// the sample; token ids without a tokenizer). Every rank of the model's layout must call it: the forwards gather
  /// FSDP shards, and with tp the vocabulary-parallel logits are all-gathered over tp.
  std::string sample(nn::CausalLM& model, uint64_t seed, const std::shared_ptr<collectives::ProcessGroup>& tp);

 private:
  std::unique_ptr<data::Tokenizer> tok_;
  std::vector<int64_t> prompt_;
  int64_t tokens_;
};

}  // namespace loom::recipes
