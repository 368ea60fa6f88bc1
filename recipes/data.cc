// Token sources (synthetic corpus, byte-level text, llm.c and nanoGPT .bin
// shards, read through read-only mmaps) and the data-parallel loader whose
// position is global, so it survives a change in the number of ranks.
#include "recipes/data.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "tensor/error.h"

namespace loom::recipes {

namespace {

// ---------------------------------------------------------------------------
// Synthetic corpus
// ---------------------------------------------------------------------------

constexpr int64_t kTopics = 4;                          // hidden per-block "topic": each has its own transition table
constexpr int64_t kSuccessors = 4;                      // each token is followed by one of 4 tokens (per topic)
constexpr int64_t kBlockLen = 128;                      // tokens per block; short, so a micro-batch mixes topics
constexpr int64_t kSyntheticTokens = int64_t{1} << 32;  // generated on demand, never stored
constexpr int64_t kFloorBlocks = 2048;                  // blocks sampled to measure the entropy floor (2^18 tokens)

/// splitmix64's finalizer: a bijective 64-bit mix with good avalanche.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// A counter-based random word: the same (seed, a, b, c) always gives the same value,
/// so any token of the corpus can be computed without generating what precedes its block.
uint64_t hash4(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return mix64(mix64(mix64(mix64(seed) ^ a) ^ b) ^ c);
}

double to_unit(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }  // [0, 1)

/// The corpus: blocks of kBlockLen tokens; block b has a topic k = H(b) mod kTopics and starts at a
/// uniform token; then each token is drawn from the kSuccessors successors of the previous token
/// in topic k's table. A bigram model cannot tell the topics apart (it sees up to 16 successors);
/// a model with context infers the topic from the tokens so far and reaches the lower floor.
class SyntheticSource final : public TokenSource {
 public:
  SyntheticSource(uint64_t seed, int64_t vocab) : seed_(seed), vocab_(vocab) {
    const int64_t rows = kTopics * vocab;
    next_.resize(rows * kSuccessors);
    cum_.resize(rows * kSuccessors);
    for (int64_t r = 0; r < rows; ++r) {
      double w[kSuccessors], s = 0;
      for (int64_t j = 0; j < kSuccessors; ++j) {
        next_[r * kSuccessors + j] = static_cast<int32_t>(hash4(seed, 1, r, j) % static_cast<uint64_t>(vocab));
        // Skewed weights (0.05..1.05 after squaring) so the per-state entropy varies and stays below log 4.
        double u = to_unit(hash4(seed, 2, r, j));
        w[j] = 0.05 + u * u;
        s += w[j];
      }
      double acc = 0;
      for (int64_t j = 0; j < kSuccessors; ++j) {
        acc += w[j] / s;
        cum_[r * kSuccessors + j] = acc;
      }
      cum_[r * kSuccessors + kSuccessors - 1] = 1.0;  // no rounding gap above the last successor
    }
  }

  int64_t size() const override { return kSyntheticTokens; }
  int64_t vocab_bound() const override { return vocab_; }
  std::string describe() const override {
    return detail::str_cat("synthetic corpus (seed ", seed_, ", vocab ", vocab_, ", ", kTopics, " topics x ",
                           kSuccessors, " successors, blocks of ", kBlockLen, " tokens)");
  }

  void read(int64_t pos, int64_t n, int64_t* out) const override {
    LOOM_CHECK(pos >= 0 && n >= 0 && pos + n <= kSyntheticTokens, "synthetic corpus: read [", pos, ", ", pos + n,
               ") outside [0, ", kSyntheticTokens, ")");
    int64_t done = 0;
    while (done < n) {
      const int64_t p = pos + done, block = p / kBlockLen, first = p % kBlockLen;
      const int64_t take = std::min(n - done, kBlockLen - first);
      generate_block(block, first + take, [&](int64_t t, int64_t tok, int64_t) {
        if (t >= first) out[done + t - first] = tok;
      });
      done += take;
    }
  }

  /// The mean over positions of the entropy (nats) of the next token given the previous token
  /// and the block's topic, measured over the first kFloorBlocks blocks: the loss of a model that
  /// knows the chain. The first token of a block is uniform (log V).
  double entropy_floor() const {
    const int64_t rows = kTopics * vocab_;
    std::vector<double> h(rows, 0.0);
    std::vector<std::pair<int32_t, double>> merged;
    for (int64_t r = 0; r < rows; ++r) {
      // Duplicate successors merge into one outcome.
      merged.clear();
      double prev = 0;
      for (int64_t j = 0; j < kSuccessors; ++j) {
        double p = cum_[r * kSuccessors + j] - prev;
        prev = cum_[r * kSuccessors + j];
        auto it =
            std::find_if(merged.begin(), merged.end(), [&](auto& m) { return m.first == next_[r * kSuccessors + j]; });
        if (it == merged.end()) {
          merged.emplace_back(next_[r * kSuccessors + j], p);
        } else {
          it->second += p;
        }
      }
      for (auto& [tok, p] : merged)
        if (p > 0) h[r] -= p * std::log(p);
    }
    double total = 0;
    for (int64_t b = 0; b < kFloorBlocks; ++b) {
      generate_block(b, kBlockLen, [&](int64_t t, int64_t tok, int64_t topic) {
        // The entropy of the token after this one.
        if (t + 1 < kBlockLen) total += h[topic * vocab_ + tok];
      });
      total += std::log(static_cast<double>(vocab_));  // the block's uniform first token
    }
    return total / static_cast<double>(kFloorBlocks * kBlockLen);
  }

 private:
  /// Calls emit(t, token, topic) for t in [0, len) of block `block`.
  template <typename Emit>
  void generate_block(int64_t block, int64_t len, Emit&& emit) const {
    const uint64_t b = static_cast<uint64_t>(block);
    const int64_t topic = static_cast<int64_t>(hash4(seed_, 3, b, 0) % kTopics);
    int64_t cur = static_cast<int64_t>(hash4(seed_, 4, b, 0) % static_cast<uint64_t>(vocab_));
    for (int64_t t = 0; t < len; ++t) {
      emit(t, cur, topic);
      const double u = to_unit(hash4(seed_, 5, b, static_cast<uint64_t>(t)));
      const int64_t row = (topic * vocab_ + cur) * kSuccessors;
      int64_t j = 0;
      while (j < kSuccessors - 1 && u >= cum_[row + j]) ++j;
      cur = next_[row + j];
    }
  }

  uint64_t seed_;
  int64_t vocab_;
  std::vector<int32_t> next_;  // (kTopics * V, kSuccessors) successor ids
  std::vector<double> cum_;    // (kTopics * V, kSuccessors) cumulative probabilities
};

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// A whole file mapped read-only; the kernel pages it in on demand, so a 10 GB shard costs no memory up front.
class MappedFile {
 public:
  MappedFile(const std::string& path, const std::string& expected) : path_(path) {
    // O_NONBLOCK: a FIFO named by mistake must be reported below, not hang the open.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) {
      LOOM_THROW(IoError, path, ": cannot open (", std::strerror(errno), "); expected ", expected);
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      LOOM_THROW(IoError, path, ": not a regular file; expected ", expected);
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd_);
        LOOM_THROW(IoError, path, ": cannot mmap ", size_, " bytes (", std::strerror(err), ")");
      }
      data_ = static_cast<const uint8_t*>(p);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

/// One file's tokens: `count` little-endian unsigned ints of `width` bytes from byte `offset`.
struct Shard {
  std::shared_ptr<MappedFile> file;
  int64_t offset = 0, count = 0, width = 2;
};

/// Shards read as one stream in the given order. Ids are checked against the vocabulary as they
/// are read (scanning billions of tokens at start would cost minutes).
class ShardSource final : public TokenSource {
 public:
  ShardSource(std::vector<Shard> shards, int64_t vocab_bound, std::string what, std::string pattern)
      : shards_(std::move(shards)), vocab_(vocab_bound), what_(std::move(what)), pattern_(std::move(pattern)) {
    starts_.push_back(0);
    for (auto& s : shards_) starts_.push_back(starts_.back() + s.count);
  }
  int64_t size() const override { return starts_.back(); }
  int64_t vocab_bound() const override { return vocab_; }
  std::string describe() const override {
    return detail::str_cat(what_, " ", pattern_, ": ", shards_.size(), shards_.size() == 1 ? " file, " : " files, ",
                           size(), " tokens");
  }
  void read(int64_t pos, int64_t n, int64_t* out) const override {
    LOOM_CHECK(pos >= 0 && n >= 0 && pos + n <= size(), describe(), ": read [", pos, ", ", pos + n, ") outside [0, ",
               size(), ")");
    int64_t done = 0;
    while (done < n) {
      const int64_t p = pos + done;
      const size_t i = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), p) - starts_.begin() - 1);
      const Shard& s = shards_[i];
      const int64_t first = p - starts_[i], take = std::min(n - done, s.count - first);
      const uint8_t* base = s.file->data() + s.offset + first * s.width;
      for (int64_t t = 0; t < take; ++t) {
        uint64_t v = 0;
        std::memcpy(&v, base + t * s.width, static_cast<size_t>(s.width));  // little-endian host
        if (static_cast<int64_t>(v) >= vocab_) {
          LOOM_THROW(IoError, s.file->path(), ": token ", v, " at token offset ", first + t, " (byte ",
                     s.offset + (first + t) * s.width, ") is >= model.vocab_size ", vocab_,
                     "; the data was tokenized for a larger vocabulary — raise model.vocab_size or re-tokenize");
        }
        out[done + t] = static_cast<int64_t>(v);
      }
      done += take;
    }
  }

 private:
  std::vector<Shard> shards_;
  std::vector<int64_t> starts_;  // (shards + 1) token index where each shard begins
  int64_t vocab_;
  std::string what_, pattern_;
};

/// Tokens [begin, end) of another source: the train / held-out split of one corpus.
class SliceSource final : public TokenSource {
 public:
  SliceSource(std::shared_ptr<TokenSource> base, int64_t begin, int64_t end, std::string name)
      : base_(std::move(base)), begin_(begin), end_(end), name_(std::move(name)) {}
  int64_t size() const override { return end_ - begin_; }
  int64_t vocab_bound() const override { return base_->vocab_bound(); }
  std::string describe() const override {
    return detail::str_cat(base_->describe(), " [", name_, ": tokens ", begin_, "..", end_, ")");
  }
  void read(int64_t pos, int64_t n, int64_t* out) const override {
    LOOM_CHECK(pos >= 0 && n >= 0 && pos + n <= size(), describe(), ": read [", pos, ", ", pos + n, ") outside [0, ",
               size(), ")");
    base_->read(begin_ + pos, n, out);
  }

 private:
  std::shared_ptr<TokenSource> base_;
  int64_t begin_, end_;
  std::string name_;
};

/// The files a path or glob names, sorted (shard order is the name order, as in llm.c).
std::vector<std::string> expand(const std::string& key, const std::string& pattern, const std::string& expected) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &g);
  std::vector<std::string> paths;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  if (paths.empty()) {
    LOOM_THROW(IoError, key, " '", pattern, "': no such file",
               pattern.find_first_of("*?[") != std::string::npos ? " matches" : "", "; expected ", expected);
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

constexpr int32_t kLlmcMagicGpt2 = 20240520;    // llm.c dev/data/data_common.py "gpt-2": version 1, uint16
constexpr int32_t kLlmcMagicLlama3 = 20240801;  // "llama-3": version 7, uint32
constexpr int64_t kLlmcHeaderBytes = 256 * 4;
const char* const kLlmcExpected =
    "llm.c .bin shards (256 int32 header: magic 20240520, version 1, token count; then uint16 tokens)";

Shard open_llmc(const std::string& path) {
  auto f = std::make_shared<MappedFile>(path, kLlmcExpected);
  const int64_t bytes = static_cast<int64_t>(f->size());
  if (bytes < kLlmcHeaderBytes) {
    LOOM_THROW(IoError, path, ": truncated: ", bytes, " bytes, shorter than the 1024-byte llm.c header; expected ",
               kLlmcExpected);
  }
  int32_t header[3];
  std::memcpy(header, f->data(), sizeof(header));
  int64_t width = 0;
  if (header[0] == kLlmcMagicGpt2) {
    if (header[1] != 1)
      LOOM_THROW(IoError, path, ": llm.c version ", header[1],
                 " with magic 20240520; expected version 1 (uint16 tokens)");
    width = 2;
  } else if (header[0] == kLlmcMagicLlama3) {
    if (header[1] != 7)
      LOOM_THROW(IoError, path, ": llm.c version ", header[1],
                 " with magic 20240801; expected version 7 (uint32 tokens)");
    width = 4;
  } else {
    LOOM_THROW(IoError, path, ": bad magic ", header[0],
               ", expected 20240520 (llm.c GPT-2, uint16) or 20240801 "
               "(llm.c Llama 3, uint32) — for nanoGPT's raw uint16 files set data.source: nanogpt");
  }
  const int64_t count = header[2];
  if (count < 0) LOOM_THROW(IoError, path, ": negative token count ", count, " in the llm.c header");
  if (bytes != kLlmcHeaderBytes + width * count) {
    const bool longer = bytes > kLlmcHeaderBytes + width * count;
    LOOM_THROW(IoError, path, longer ? ": size mismatch" : ": truncated", ": header says ", count,
               " tokens, file holds ", (bytes - kLlmcHeaderBytes) / width, " (", bytes, " bytes; expected ",
               kLlmcHeaderBytes + width * count, " = 1024-byte header + ", width, " bytes per token)");
  }
  return Shard{f, kLlmcHeaderBytes, count, width};
}

Shard open_raw(const std::string& path, int64_t width, const char* expected) {
  auto f = std::make_shared<MappedFile>(path, expected);
  const int64_t bytes = static_cast<int64_t>(f->size());
  if (bytes % width != 0) {
    LOOM_THROW(IoError, path, ": ", bytes, " bytes is not a whole number of ", width, "-byte tokens; expected ",
               expected);
  }
  return Shard{f, 0, bytes / width, width};
}

/// All files of one path/glob as one source.
std::shared_ptr<TokenSource> open_files(const DataConfig& cfg, const std::string& key, const std::string& pattern,
                                        int64_t vocab_size) {
  std::vector<Shard> shards;
  std::string what;
  int64_t bound = vocab_size;
  if (cfg.source == "llmc") {
    for (auto& p : expand(key, pattern, kLlmcExpected)) shards.push_back(open_llmc(p));
    what = "llm.c shards";
  } else if (cfg.source == "nanogpt") {
    const char* expected = "nanoGPT raw uint16 tokens (train.bin / val.bin, an even number of bytes)";
    for (auto& p : expand(key, pattern, expected)) shards.push_back(open_raw(p, 2, expected));
    what = "nanoGPT tokens";
  } else {  // text
    const char* expected = "a text file (read as bytes 0..255)";
    for (auto& p : expand(key, pattern, expected)) shards.push_back(open_raw(p, 1, expected));
    what = "text bytes";
    bound = 256;
  }
  auto src = std::make_shared<ShardSource>(std::move(shards), bound, what, pattern);
  if (src->size() == 0) LOOM_THROW(IoError, key, " '", pattern, "': holds no tokens");
  return src;
}

}  // namespace

double synthetic_entropy_floor(uint64_t seed, int64_t vocab_size) {
  LOOM_CHECK_T(ConfigError, vocab_size >= 2, "model.vocab_size: ", vocab_size, " < 2");
  return SyntheticSource(seed, vocab_size).entropy_floor();
}

std::shared_ptr<TokenSource> open_tokens(const DataConfig& cfg, const std::string& split, int64_t vocab_size) {
  LOOM_CHECK(split == "train" || split == "val", "open_tokens: split must be \"train\" or \"val\", got \"", split,
             "\"");
  LOOM_CHECK_T(ConfigError, vocab_size >= 2, "model.vocab_size: ", vocab_size, " < 2");
  const bool synthetic = cfg.source == "synthetic";
  if (!synthetic && cfg.source != "text" && cfg.source != "llmc" && cfg.source != "nanogpt") {
    LOOM_THROW(ConfigError, "data.source: unknown source \"", cfg.source,
               "\"; expected synthetic, text, llmc or nanogpt");
  }
  if (cfg.source == "text" && vocab_size < 256) {
    LOOM_THROW(ConfigError, "data.source: text is byte-level (ids 0..255) but model.vocab_size is ", vocab_size,
               "; set model.vocab_size >= 256");
  }
  if (!synthetic && cfg.train_path.empty()) {
    LOOM_THROW(ConfigError, "data.train_path: required when data.source is ", cfg.source);
  }
  if (synthetic && !cfg.val_path.empty()) {
    LOOM_THROW(ConfigError, "data.val_path: set, but data.source is synthetic (its held-out part is the last ",
               "data.val_fraction of the corpus); remove data.val_path");
  }
  if (!cfg.val_path.empty()) {
    return split == "train" ? open_files(cfg, "data.train_path", cfg.train_path, vocab_size)
                            : open_files(cfg, "data.val_path", cfg.val_path, vocab_size);
  }
  if (!(cfg.val_fraction > 0 && cfg.val_fraction <= 0.5)) {
    LOOM_THROW(ConfigError, "data.val_fraction: ", cfg.val_fraction, " outside (0, 0.5]");
  }
  std::shared_ptr<TokenSource> all = synthetic ? std::make_shared<SyntheticSource>(cfg.seed, vocab_size)
                                               : open_files(cfg, "data.train_path", cfg.train_path, vocab_size);
  const int64_t n = all->size();
  // At least one token each side; the loader checks that a split holds a whole sequence.
  int64_t n_val = std::clamp<int64_t>(static_cast<int64_t>(std::llround(static_cast<double>(n) * cfg.val_fraction)), 1,
                                      std::max<int64_t>(1, n - 1));
  // The synthetic corpus starts a topic every kBlockLen tokens (n is a multiple of it): the held-out part starts on a
  // block boundary too, so its windows are aligned like the training windows and eval measures the same task.
  if (synthetic) n_val = (n_val + kBlockLen - 1) / kBlockLen * kBlockLen;
  if (n < 2) LOOM_THROW(IoError, all->describe(), ": ", n, " token(s), too few to split into train and val");
  return split == "train" ? std::make_shared<SliceSource>(all, 0, n - n_val, "train")
                          : std::make_shared<SliceSource>(all, n - n_val, n, "val");
}

// ---------------------------------------------------------------------------
// DataLoader
// ---------------------------------------------------------------------------

DataLoader::DataLoader(std::shared_ptr<TokenSource> src, int64_t seq_len, int64_t micro_batch, int dp_rank, int dp_size)
    : src_(std::move(src)), seq_len_(seq_len), micro_batch_(micro_batch), dp_rank_(dp_rank), dp_size_(dp_size) {
  LOOM_CHECK(src_ != nullptr, "DataLoader: null token source");
  LOOM_CHECK(seq_len_ >= 1, "DataLoader: seq_len must be >= 1, got ", seq_len_);
  LOOM_CHECK(micro_batch_ >= 1, "DataLoader: micro_batch must be >= 1, got ", micro_batch_);
  LOOM_CHECK(dp_size_ >= 1 && dp_rank_ >= 0 && dp_rank_ < dp_size_, "DataLoader: dp_rank ", dp_rank_,
             " outside [0, dp_size ", dp_size_, ")");
  LOOM_CHECK(src_->size() >= seq_len_ + 1, "DataLoader: ", src_->describe(), " holds ", src_->size(),
             " tokens, fewer than one sequence of seq_len + 1 = ", seq_len_ + 1,
             "; use more data, a larger split (data.val_fraction) or a shorter model.seq_len");
}

int64_t DataLoader::sequences_per_epoch() const { return (src_->size() - 1) / seq_len_; }

Batch DataLoader::next() {
  const int64_t T = seq_len_, B = micro_batch_, n_seq = sequences_per_epoch();
  std::vector<int64_t> x(static_cast<size_t>(B * T)), y(static_cast<size_t>(B * T)), row(static_cast<size_t>(T + 1));
  for (int64_t b = 0; b < B; ++b) {
    // This rank's rows are rows [r*B, (r+1)*B) of the micro-step's dp_size*B consecutive sequences.
    const int64_t s = (sequences_consumed_ + dp_rank_ * B + b) % n_seq;
    src_->read(s * T, T + 1, row.data());
    std::copy(row.begin(), row.end() - 1, x.begin() + b * T);
    std::copy(row.begin() + 1, row.end(), y.begin() + b * T);
  }
  sequences_consumed_ += static_cast<int64_t>(dp_size_) * B;
  epoch_ += sequences_consumed_ / n_seq;
  sequences_consumed_ %= n_seq;
  return Batch{from_vector<int64_t>(x, {B, T}), from_vector<int64_t>(y, {B, T})};
}

std::map<std::string, int64_t> DataLoader::state() const {
  return {{"sequences_consumed", sequences_consumed_}, {"epoch", epoch_}};
}

void DataLoader::load_state(const std::map<std::string, int64_t>& s) {
  auto get = [&](const char* key) {
    auto it = s.find(key);
    LOOM_CHECK(it != s.end(), "DataLoader::load_state: missing key \"", key,
               "\" (expected sequences_consumed and epoch, as state() writes)");
    LOOM_CHECK(it->second >= 0, "DataLoader::load_state: ", key, " = ", it->second, " is negative");
    return it->second;
  };
  const int64_t consumed = get("sequences_consumed"), epoch = get("epoch");
  LOOM_CHECK(consumed < sequences_per_epoch(), "DataLoader::load_state: sequences_consumed ", consumed,
             " is beyond the ", sequences_per_epoch(), " sequences of ", src_->describe(),
             " per epoch; the data or model.seq_len changed since the checkpoint was written");
  sequences_consumed_ = consumed;
  epoch_ = epoch;
}

EvalPart eval_part(int64_t count, int dp_rank, int dp_size) {
  LOOM_CHECK(count >= 0, "eval_part: count must be >= 0, got ", count);
  LOOM_CHECK(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size, "eval_part: dp_rank ", dp_rank, " outside [0, dp_size ",
             dp_size, ")");
  return EvalPart{count * dp_rank / dp_size, count * (dp_rank + 1) / dp_size};
}

Batch read_sequences(const TokenSource& src, int64_t seq_len, int64_t begin, int64_t end) {
  LOOM_CHECK(seq_len >= 1, "read_sequences: seq_len must be >= 1, got ", seq_len);
  const int64_t available = src.size() > seq_len ? (src.size() - 1) / seq_len : 0;
  LOOM_CHECK(0 <= begin && begin < end && end <= available, "read_sequences: sequences [", begin, ", ", end, ") of ",
             src.describe(), ", which holds ", available, " sequences of seq_len + 1 = ", seq_len + 1, " tokens");
  const int64_t B = end - begin, T = seq_len;
  std::vector<int64_t> x(static_cast<size_t>(B * T)), y(static_cast<size_t>(B * T)), row(static_cast<size_t>(T + 1));
  for (int64_t b = 0; b < B; ++b) {
    src.read((begin + b) * T, T + 1, row.data());
    std::copy(row.begin(), row.end() - 1, x.begin() + b * T);
    std::copy(row.begin() + 1, row.end(), y.begin() + b * T);
  }
  return Batch{from_vector<int64_t>(x, {B, T}), from_vector<int64_t>(y, {B, T})};
}

}  // namespace loom::recipes
