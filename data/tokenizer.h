// Byte-level BPE tokenizer (GPT-2, Llama 3, cl100k): loads tiktoken ranks files, Hugging Face tokenizer.json and
// vocab.json + merges.txt; encodes exactly like tiktoken / tokenizers (PCRE2-JIT pre-tokenisation, lowest-rank
// merging) and decodes to raw bytes. Immutable after loading: one Tokenizer may encode from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace loom::data {

namespace detail {
struct TokenizerImpl;
}

/// A byte-level BPE tokenizer. Copies share the (immutable) vocabulary.
///
/// Text that is not valid UTF-8 is encoded as Python's `bytes.decode("utf-8", "replace")` of it: each maximal
/// ill-formed subsequence becomes U+FFFD (tiktoken and tokenizers take only Unicode strings, so this is the input
/// they would see), so decode(encode(x)) == x exactly when x is valid UTF-8.
class Tokenizer {
 public:
  /// Loads a tokenizer, detecting the format:
  /// - a directory: its tokenizer.json, else vocab.json (+ merges.txt), else tokenizer.model / the one *.tiktoken;
  /// - `*.json` with a "model" key: Hugging Face tokenizer.json (model.type BPE, byte-level; added_tokens are the
  ///   special tokens; pre_tokenizer ByteLevel, Split with a regex, or a Sequence of them);
  /// - other `*.json`: vocab.json, with merges.txt in the same directory (GPT-2 layout; "<|endoftext|>" special);
  /// - anything else: a tiktoken ranks file (`*.tiktoken`, Llama 3's `tokenizer.model`): base64 token, space,
  ///   rank, per line.
  /// `pattern` is the pre-tokenisation regex: "gpt2", "cl100k", "llama3", "o200k" or a literal PCRE2 pattern; empty
  /// means the file's own (tokenizer.json), "llama3" for a file named tokenizer.model, else "gpt2". For ranks files
  /// it also fixes the special tokens: gpt2 and literal patterns add <|endoftext|> = n (n = largest rank + 1);
  /// cl100k adds cl100k_base's (<|endoftext|> = n + 1, fim prefix/middle/suffix n+2..n+4, <|endofprompt|> n+20);
  /// o200k adds o200k_base's (<|endoftext|> = n + 1, <|endofprompt|> = n + 20);
  /// llama3 adds Llama 3.1's 256 (<|begin_of_text|> = n, <|end_of_text|> = n + 1, header and eot tokens, ...).
  /// Throws IoError (unreadable file), ConfigError (malformed file: names the file and line or key) or Unsupported
  /// (a tokenizer that is not byte-level BPE, such as a SentencePiece model).
  static Tokenizer from_file(const std::string& path, const std::string& pattern = "");

  /// Token ids of `text`; special-token strings in it are encoded as ordinary text (tiktoken's encode_ordinary).
  std::vector<int32_t> encode(std::string_view text) const;
  /// Token ids of `text`, with every special-token string in it (leftmost, longest first) mapped to its id
  /// (tiktoken's encode(allowed_special="all"), tokenizers' encode without a post-processor).
  std::vector<int32_t> encode_with_special(std::string_view text) const;
  /// Appends the ids of `text` to `out` (no allocation when `out` has room); `with_special` as above.
  void encode_append(std::string_view text, bool with_special, std::vector<int32_t>& out) const;
  /// The bytes that `ids` stand for, concatenated (special tokens as their text). Throws InvalidArgument naming an
  /// id that is not in the vocabulary.
  std::string decode(std::span<const int32_t> ids) const;
  /// The bytes of one token; throws InvalidArgument for an id not in the vocabulary.
  std::string_view token_bytes(int32_t id) const;

  /// Largest id + 1, special tokens included (tiktoken's n_vocab).
  int64_t vocab_size() const;
  /// The end-of-text token: <|endoftext|> (GPT-2, cl100k) or <|end_of_text|> (Llama 3), if the tokenizer has one.
  std::optional<int32_t> eot_id() const;
  /// Id of the special token spelled `name` (for example "<|eot_id|>"), if any.
  std::optional<int32_t> special_id(std::string_view name) const;
  /// The special tokens, as (text, id) pairs.
  std::vector<std::pair<std::string, int32_t>> special_tokens() const;
  /// The pre-tokenisation regex (for a tokenizer.json with several, the first) and the file it was loaded from.
  const std::string& pattern() const;
  const std::string& source() const;

  /// The regex of a named pattern ("gpt2", "cl100k", "llama3", "o200k"), or nullopt for another name.
  static std::optional<std::string> named_pattern(std::string_view name);

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const detail::TokenizerImpl> impl_;
};

}  // namespace loom::data
