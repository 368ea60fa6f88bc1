#include "recipes/sample.h"

#include <algorithm>

#include "data/tokenizer.h"
#include "nn/generation.h"
#include "tensor/ops.h"

namespace loom::recipes {

TrainingSampler::TrainingSampler(const LoggingConfig& cfg, int64_t vocab_size, int64_t context)
    : tokens_(cfg.sample_tokens) {
  if (!cfg.sample_tokenizer.empty()) {
    try {
      tok_ = std::make_unique<data::Tokenizer>(data::Tokenizer::from_file(cfg.sample_tokenizer));
    } catch (const Error& e) {
      throw ConfigError(std::string("logging.sample_tokenizer: ") + e.what());
    }
    for (int32_t id : tok_->encode_with_special(cfg.sample_prompt)) prompt_.push_back(id);
    if (prompt_.empty()) prompt_.push_back(tok_->eot_id().value_or(0));
  } else if (!cfg.sample_prompt.empty()) {
    throw ConfigError("logging.sample_prompt needs logging.sample_tokenizer (a tokenizer file) to encode it");
  } else {
    prompt_.push_back(vocab_size > 50256 ? 50256 : 0);  // GPT-2's <|endoftext|> when the vocabulary has it
  }
  for (int64_t id : prompt_)
    if (id >= vocab_size)
      throw ConfigError("logging.sample_prompt: token " + std::to_string(id) +
                        " is outside the model's vocabulary of " + std::to_string(vocab_size) +
                        " (logging.sample_tokenizer does not match model.vocab_size)");
  const int64_t room = context - static_cast<int64_t>(prompt_.size());
  if (room < 1)
    throw ConfigError("logging.sample_prompt: " + std::to_string(prompt_.size()) +
                      " tokens leave no room in model.seq_len = " + std::to_string(context));
  tokens_ = std::min(tokens_, room);
}

TrainingSampler::~TrainingSampler() = default;

std::string TrainingSampler::sample(nn::CausalLM& model, uint64_t seed,
                                    const std::shared_ptr<collectives::ProcessGroup>& tp) {
  nn::GenerateOptions o;
  o.max_new_tokens = tokens_;
  o.sampling.temperature = 1.0;
  o.sampling.top_k = 50;
  o.seed = seed;
  if (tp && tp->size() > 1)
    o.gather_logits = [&tp](const Tensor& local) {  // (B, V/tp) per rank, vocabulary shards in rank order
      std::vector<Tensor> parts;
      for (int r = 0; r < tp->size(); ++r) parts.push_back(ops::empty_like(local));
      tp->all_gather(parts, ops::contiguous(local))->wait();
      return ops::cat(parts, 1);
    };
  const auto out = nn::generate(model, {prompt_}, o)[0];
  if (!tok_) {
    std::string s = std::to_string(prompt_[0]);
    s += " |";
    for (int64_t id : out) {
      s += ' ';
      s += std::to_string(id);
    }
    return s;
  }
  std::vector<int32_t> ids(prompt_.begin(), prompt_.end());
  for (int64_t id : out)
    if (id < tok_->vocab_size()) ids.push_back(static_cast<int32_t>(id));
  return tok_->decode(ids);
}

}  // namespace loom::recipes
