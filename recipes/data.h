// Token data for pretraining: a built-in synthetic corpus (learnable, no files),
// any text file through a byte-level tokenizer (vocabulary 256), and pre-tokenized
// shards in llm.c's .bin format (256 int32 header: magic 20240520, version 1,
// token count; then uint16 tokens) or nanoGPT's raw uint16 .bin. Each
// data-parallel rank reads its own part of every global batch; the position is
// a small state saved in checkpoints so a resume neither skips nor repeats.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "recipes/config.h"
#include "tensor/tensor.h"

namespace loom::recipes {

/// A read-only sequence of token ids.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t size() const = 0;
  /// Copies tokens [pos, pos + n) into out. Throws IoError naming the file on a short read.
  virtual void read(int64_t pos, int64_t n, int64_t* out) const = 0;
  /// The largest token id + 1 the source can produce (256 for bytes; for .bin shards the
  /// caller's vocabulary, checked while reading: a larger id is an error naming file and offset).
  virtual int64_t vocab_bound() const = 0;
  virtual std::string describe() const = 0;  // "llm.c shards data/train_*.bin: 3 files, 300000000 tokens"
};

/// Opens the training (split="train") or held-out (split="val") tokens of cfg.
/// Missing or malformed files are IoError/ConfigError naming the file and what was expected
/// (e.g. "data/x.bin: bad magic 1234, expected 20240520 (llm.c) — for nanoGPT files set data.source: nanogpt").
/// Sources: "synthetic" (generated on demand from cfg.seed; see synthetic_entropy_floor), "text" (bytes of
/// the file(s), needs vocab_size >= 256), "llmc" (magic 20240520 version 1 with uint16 tokens, or llm.c's
/// Llama 3 format: magic 20240801 version 7 with uint32 tokens), "nanogpt" (raw uint16). train_path and
/// val_path may be globs; the matching files are read in sorted order as one stream, through read-only mmaps.
/// Without val_path, "val" is the last val_fraction of the training tokens and "train" the rest.
std::shared_ptr<TokenSource> open_tokens(const DataConfig& cfg, const std::string& split, int64_t vocab_size);

/// The synthetic corpus's entropy floor in nats/token: the mean loss of a model that knows the chain
/// and each block's topic (measured over the first 2^18 tokens). A bigram model stays above it, since
/// it cannot tell the 4 topics apart; log(vocab_size) is the loss of a uniform guess.
double synthetic_entropy_floor(uint64_t seed, int64_t vocab_size);

struct Batch {
  Tensor idx, targets;  // (B, T) i64
};

/// Sequential batches of (seq_len + 1)-token windows. Global batch g of a step holds
/// dp_size * micro_batch * accum sequences; rank r takes its micro_batch rows of each
/// micro-step. Wraps around at the end of the source (an epoch counter goes up).
class DataLoader {
 public:
  DataLoader(std::shared_ptr<TokenSource> src, int64_t seq_len, int64_t micro_batch, int dp_rank, int dp_size);
  /// The next micro-batch of this rank.
  Batch next();
  /// Position as global keys (independent of the dp size, so it carries over to another
  /// number of ranks): {"sequences_consumed": n, "epoch": e}.
  std::map<std::string, int64_t> state() const;
  /// Restores a position written by state() (by any dp_size). Throws InvalidArgument on a missing key or a
  /// position beyond this source's sequences per epoch (the data or seq_len changed).
  void load_state(const std::map<std::string, int64_t>& s);
  /// Whole (seq_len + 1)-token windows at stride seq_len in one pass over the source.
  int64_t sequences_per_epoch() const;

 private:
  std::shared_ptr<TokenSource> src_;
  int64_t seq_len_, micro_batch_;
  int dp_rank_, dp_size_;
  int64_t sequences_consumed_ = 0;  // global, over all dp ranks
  int64_t epoch_ = 0;
};

/// The part of the evaluation set one data-parallel rank reads: sequences [begin, end) of the held-out split.
struct EvalPart {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

/// Splits the first `count` sequences of a split into `dp_size` contiguous parts whose sizes differ by at most one
/// (rank r: [count r / dp_size, count (r + 1) / dp_size)); together they cover [0, count) once, whatever dp_size is.
/// Throws InvalidArgument on count < 0 or a rank outside [0, dp_size).
EvalPart eval_part(int64_t count, int dp_rank, int dp_size);

/// Sequences [begin, end) of src as one batch of end - begin rows: the (seq_len + 1)-token windows at stride seq_len
/// that DataLoader reads (sequence i starts at token i * seq_len). Throws InvalidArgument when the range is empty or
/// reaches past the source's whole windows.
Batch read_sequences(const TokenSource& src, int64_t seq_len, int64_t begin, int64_t end);

}  // namespace loom::recipes
