// generate: text from a trained GPT-2 or Llama. Loads a loom checkpoint (the model config stored in it) or a
// safetensors file with Hugging Face names (config.json beside it), encodes the prompts with a byte-level BPE
// tokenizer, samples with a KV cache, streams the text to stdout as it comes and reports tokens/s on stderr.
//
// Usage: generate (--checkpoint DIR | --safetensors FILE [--config FILE]) --tokenizer FILE
//                 (--prompt TEXT | --prompt-file F)... [--max-new-tokens N] [--temperature T] [--top-k K]
//                 [--top-p P] [--seed S] [--num-samples M] [--no-cache] [--ids]
//
// Exit codes: 0 done, 1 a runtime failure (unreadable files, a model that does not fit), 2 a usage error.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "nn/generation.h"
#include "recipes/model.h"
#include "tensor/ops.h"

using namespace loom;

namespace {

/// Holds back the bytes of a UTF-8 character that is not complete yet, so streamed text never prints half a
/// character (a token may end inside one: byte-level BPE splits characters across tokens).
class Utf8Stream {
 public:
  /// Appends bytes; returns what can be printed now.
  std::string push(const std::string& bytes) {
    pending_ += bytes;
    size_t keep = 0;  // trailing bytes of an unfinished character
    const size_t n = pending_.size();
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
      const auto c = static_cast<unsigned char>(pending_[n - back]);
      if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
      const size_t len = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF8 ? 4 : 1;  // 0xF8+: never a lead
      if (len > back) keep = back;  // the lead byte's character needs more bytes than have come
      break;
    }
    std::string out = pending_.substr(0, n - keep);
    pending_.erase(0, n - keep);
    return out;
  }
  /// Whatever is left (an incomplete character at the very end is printed as it is).
  std::string flush() { return std::exchange(pending_, std::string()); }

 private:
  std::string pending_;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("--prompt-file " + path + ": cannot read it");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Args {
  std::string checkpoint, safetensors, config, tokenizer;
  std::vector<std::string> prompts, prompt_files;
  int64_t max_new_tokens = 128;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 1337;
  int64_t num_samples = 1;
  bool no_cache = false, ids = false;
  std::string dump_logits;  // tests: every step's logits (B, V) appended as raw little-endian f32
};

int run(const Args& a) {
  recipes::LoadedModel lm = !a.checkpoint.empty() ? recipes::load_checkpoint_model(a.checkpoint)
                                                  : recipes::load_safetensors_model(a.safetensors, a.config);
  const data::Tokenizer tok = data::Tokenizer::from_file(a.tokenizer);
  nn::CausalLM& model = *lm.model;
  if (tok.vocab_size() > model.vocab_size())
    throw InvalidArgument("the tokenizer " + a.tokenizer + " has " + std::to_string(tok.vocab_size()) +
                          " tokens but the model only " + std::to_string(model.vocab_size()) +
                          "; use the tokenizer the model was trained with");
  std::fprintf(stderr, "generate: %s, %s model, %lld parameters, context %lld; tokenizer %s (%lld tokens)\n",
               lm.description.c_str(), lm.config.family.c_str(), static_cast<long long>(model.num_parameters()),
               static_cast<long long>(model.max_positions()), a.tokenizer.c_str(),
               static_cast<long long>(tok.vocab_size()));

  std::vector<std::string> texts = a.prompts;
  for (const auto& f : a.prompt_files) texts.push_back(read_file(f));
  std::vector<std::vector<int64_t>> batch;
  std::vector<size_t> prompt_of;  // batch row -> prompt
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids32 = tok.encode_with_special(texts[i]);
    std::vector<int64_t> ids(ids32.begin(), ids32.end());
    if (ids.empty()) {
      if (!tok.eot_id())
        throw InvalidArgument("prompt " + std::to_string(i + 1) +
                              " is empty and the tokenizer has no end-of-text token to start from; give some text");
      ids.push_back(*tok.eot_id());  // an empty prompt starts a fresh document, as llm.c samples
    }
    for (int64_t s = 0; s < a.num_samples; ++s) {
      batch.push_back(ids);
      prompt_of.push_back(i);
    }
  }

  nn::GenerateOptions o;
  o.max_new_tokens = a.max_new_tokens;
  o.sampling.temperature = a.temperature;
  o.sampling.top_k = a.top_k;
  o.sampling.top_p = a.top_p;
  o.seed = a.seed;
  o.use_cache = !a.no_cache;
  if (tok.eot_id()) o.stop_token = *tok.eot_id();
  std::FILE* dump = nullptr;
  if (!a.dump_logits.empty()) {
    dump = std::fopen(a.dump_logits.c_str(), "wb");
    if (!dump) throw IoError("--dump-logits " + a.dump_logits + ": cannot open it for writing");
    o.on_logits = [dump](const Tensor& l) {
      Tensor h = ops::contiguous(ops::to(ops::to(l, kCPU), DType::f32));
      std::fwrite(h.data<float>(), sizeof(float), static_cast<size_t>(h.numel()), dump);
    };
  }
  const bool stream = batch.size() == 1;
  Utf8Stream out;
  if (stream) {
    std::fputs(texts[0].c_str(), stdout);
    std::fflush(stdout);
  }
  auto decode = [&](int64_t id) {
    if (o.stop_token && id == *o.stop_token) return std::string();  // the end, not text
    if (id >= tok.vocab_size()) return std::string();               // a padded vocabulary's unused rows
    const int32_t i32 = static_cast<int32_t>(id);
    return tok.decode(std::span<const int32_t>(&i32, 1));
  };
  int64_t produced = 0;
  double first_token_s = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const auto result = nn::generate(model, batch, o, [&](const std::vector<int64_t>& t, const std::vector<bool>& run) {
    if (produced == 0) first_token_s = seconds_since(t0);
    for (bool r : run) produced += r ? 1 : 0;
    if (stream && run[0]) {
      std::fputs(out.push(decode(t[0])).c_str(), stdout);
      std::fflush(stdout);
    }
  });
  const double secs = seconds_since(t0);
  if (dump) std::fclose(dump);
  if (stream) {
    std::fputs(out.flush().c_str(), stdout);
    std::fputs("\n", stdout);
  } else {
    for (size_t b = 0; b < result.size(); ++b) {
      std::string text;
      for (int64_t id : result[b]) text += decode(id);
      std::printf("=== sample %zu (prompt %zu) ===\n%s%s\n", b + 1, prompt_of[b] + 1, texts[prompt_of[b]].c_str(),
                  text.c_str());
    }
  }
  std::fflush(stdout);
  if (a.ids)
    for (size_t b = 0; b < result.size(); ++b) {
      std::string line = "ids " + std::to_string(b) + ":";
      for (int64_t id : batch[b]) line += " " + std::to_string(id);
      line += " |";
      for (int64_t id : result[b]) line += " " + std::to_string(id);
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  const double decode_s = secs - first_token_s;
  std::fprintf(stderr,
               "generate: %lld tokens in %.3f s: %.1f tokens/s (%zu sequence%s; first token after %.3f s, then "
               "%.1f tokens/s; KV cache %s)\n",
               static_cast<long long>(produced), secs, secs > 0 ? static_cast<double>(produced) / secs : 0.0,
               batch.size(), batch.size() == 1 ? "" : "s", first_token_s,
               decode_s > 0 ? static_cast<double>(produced - static_cast<int64_t>(batch.size())) / decode_s : 0.0,
               o.use_cache ? "on" : "off");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Generates text with a trained GPT-2 or Llama (a loom checkpoint, or a safetensors file with Hugging "
      "Face names), streaming it to stdout; tokens/s go to stderr.",
      "generate"};
  Args a;
  auto* ck = app.add_option("--checkpoint", a.checkpoint,
                            "a loom checkpoint: a step directory, or a run directory (its latest checkpoint)");
  auto* st = app.add_option("--safetensors", a.safetensors,
                            "a safetensors file with Hugging Face names (loomckpt export, or Hugging Face's own)");
  ck->excludes(st);
  app.add_option("--config", a.config,
                 "with --safetensors: the model's config.json or a loom recipe YAML (default: config.json beside it)")
      ->needs(st)
      ->check(CLI::ExistingFile);
  app.add_option("--tokenizer", a.tokenizer,
                 "the tokenizer: tokenizer.json, vocab.json (+ merges.txt), a .tiktoken ranks file or a directory")
      ->required()
      ->check(CLI::ExistingPath);
  app.add_option("--prompt", a.prompts, "a prompt (repeatable: a batch of prompts); empty: the end-of-text token");
  app.add_option("--prompt-file", a.prompt_files, "a file whose whole text is one prompt (repeatable)")
      ->check(CLI::ExistingFile);
  app.add_option("--max-new-tokens", a.max_new_tokens, "tokens to generate per sample")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--temperature", a.temperature, "softmax temperature; 0: greedy (argmax)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--top-k", a.top_k, "sample among the k most likely tokens; 0: all")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app.add_option("--top-p", a.top_p, "sample among the most likely tokens whose probabilities sum to p; 1: all")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  app.add_option("--seed", a.seed, "the sampler's random seed")->capture_default_str();
  app.add_option("--num-samples", a.num_samples, "samples per prompt (one batch)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_flag("--no-cache", a.no_cache, "run the whole sequence every step (no KV cache; for comparison)");
  app.add_flag("--ids", a.ids, "also print each sequence's token ids (prompt | generated) to stderr");
  app.add_option("--dump-logits", a.dump_logits, "write every step's logits (B, V) as raw f32 to FILE (for tests)")
      ->group("");  // hidden from --help
  try {
    app.parse(argc, argv);
    if (a.checkpoint.empty() && a.safetensors.empty())
      throw CLI::ValidationError("--checkpoint or --safetensors", "give one: the model to generate with");
    if (a.prompts.empty() && a.prompt_files.empty())
      throw CLI::ValidationError("--prompt or --prompt-file",
                                 "give at least one prompt (--prompt '' starts from "
                                 "the end-of-text token)");
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    return run(a);
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
}
