// Byte-level BPE: loaders (tiktoken ranks, tokenizer.json, vocab.json + merges.txt), PCRE2-JIT pre-tokenisation,
// lowest-rank pair merging (tiktoken's byte_pair_merge / tokenizers' Word::merge_all) and decoding.
#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "tensor/error.h"

namespace loom::data {
namespace detail {
namespace {

constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();

// ---------------------------------------------------------------------------------------------------------------
// Hash maps: token bytes -> id, and (left id, right id) -> (merge rank, merged id). Open addressing, linear probing.

inline uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
  }
  return mix(h);
}

class BytesMap {
 public:
  /// Id of `key`, or -1.
  int32_t find(const char* p, size_t n) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(p, n);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (s.hash == h && s.len == n && std::memcmp(arena_.data() + s.off, p, n) == 0) return s.id;
    }
  }
  int32_t find(std::string_view k) const { return find(k.data(), k.size()); }
  /// find() with h = hash_bytes(p, n) already computed.
  int32_t find_hashed(const char* p, size_t n, uint64_t h) const {
    if (slots_.empty()) return -1;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (s.hash == h && s.len == n && std::memcmp(arena_.data() + s.off, p, n) == 0) return s.id;
    }
  }
  /// Inserts key -> id; returns the id already there (and changes nothing) or -1 when new.
  int32_t insert(std::string_view k, int32_t id) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    const uint64_t h = hash_bytes(k.data(), k.size());
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.id < 0) {
        s = Slot{h, static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(k.size()), id};
        arena_.append(k);
        ++size_;
        return -1;
      }
      if (s.hash == h && s.len == k.size() && std::memcmp(arena_.data() + s.off, k.data(), k.size()) == 0) return s.id;
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t off = 0;
    uint32_t len = 0;
    int32_t id = -1;
  };
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(std::max<size_t>(64, old.size() * 2), Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.id < 0) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].id >= 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

class PairMap {
 public:
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = kNoRank;
    int32_t id = -1;
  };
  const Slot* find(int32_t l, int32_t r) const {
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s;
      if (s.key == kEmpty) return nullptr;
    }
  }
  /// Sets (l, r) -> (rank, id), replacing an earlier entry for the same pair.
  void set(int32_t l, int32_t r, int32_t rank, int32_t id) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == kEmpty) ++size_;
      if (s.key == kEmpty || s.key == key) {
        s = Slot{key, rank, id};
        return;
      }
    }
  }
  PairMap() { slots_.assign(64, Slot{}), mask_ = 63; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t i = mix(s.key) & mask_;
      while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// UTF-8: validation and CPython's "replace" error handler (one U+FFFD per maximal ill-formed subsequence).

/// Length of the well-formed UTF-8 sequence at p[0..n), or 0 when p starts an ill-formed one; `bad` gets the length
/// of its maximal subpart then (the bytes one U+FFFD replaces).
inline size_t utf8_seq(const unsigned char* p, size_t n, size_t& bad) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    bad = 1;
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    if (k >= n) {
      bad = k;
      return 0;
    }
    const unsigned char b = p[k];
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      bad = k;
      return 0;
    }
  }
  return len;
}

/// Whether s is valid UTF-8 (fast path for ASCII).
bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t v;
      std::memcpy(&v, p + i, 8);
      if ((v & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    size_t bad = 0;
    const size_t len = utf8_seq(p + i, n - i, bad);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

/// s with each maximal ill-formed subsequence replaced by U+FFFD, as Python's bytes.decode("utf-8", "replace").
std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 16);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    size_t bad = 0;
    const size_t len = utf8_seq(p + i, n - i, bad);
    if (len > 0) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      i += bad;
    }
  }
  return out;
}

/// Decodes one code point of valid UTF-8 at s[i], advancing i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

/// GPT-2's bytes_to_unicode, inverted: code point -> byte, -1 for a code point that no byte maps to.
const std::vector<int>& unicode_to_byte() {
  static const std::vector<int> table = [] {
    std::vector<int> t(324, -1);
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    int extra = 0;
    for (int b = 0; b < 256; ++b) t[printable[b] ? b : 256 + extra++] = b;
    return t;
  }();
  return table;
}

// ---------------------------------------------------------------------------------------------------------------
// PCRE2: compiled regexes and per-thread match state.

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

constexpr size_t kCachePieceBytes = 26;
constexpr size_t kCachePieceIds = 6;
constexpr size_t kCacheEntries = 8192;
std::atomic<uint32_t> next_uid{1};

struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* stack = nullptr;
  // BPE scratch
  struct Part {
    int32_t id;
    int32_t rank;    // rank of the pair (this, next part)
    int32_t merged;  // id the pair merges into
  };
  std::vector<Part> parts;
  struct Cand {
    int32_t rank, pos, left, right, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Cand> heap;
  std::vector<int32_t> ids, next, prev;
  // Per-thread cache of short pieces that needed merging (direct-mapped; owner = TokenizerImpl::uid).
  struct CacheEntry {
    uint64_t hash;
    uint32_t owner;
    uint8_t len, n_ids;
    char bytes[kCachePieceBytes];
    int32_t ids[kCachePieceIds];
  };
  std::vector<CacheEntry> cache;

  MatchState() {
    md = pcre2_match_data_create(16, nullptr);
    mc = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (md == nullptr || mc == nullptr || stack == nullptr) throw std::bad_alloc();
    pcre2_jit_stack_assign(mc, nullptr, stack);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(stack);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

class Regex {
 public:
  /// Compiles `pattern` (UTF, Unicode properties, JIT); `where` names it in errors. `multiline`: $ before any
  /// newline, as Oniguruma's Ruby syntax (tokenizers' engine) has it; otherwise $ only at the end (tiktoken's).
  Regex(const std::string& pattern, const std::string& where, bool multiline, bool literal = false)
      : pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (multiline ? PCRE2_MULTILINE : PCRE2_DOLLAR_ENDONLY);
    if (literal) opts |= PCRE2_LITERAL;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off, nullptr);
    if (code_ == nullptr) {
      LOOM_THROW(ConfigError, where, ": pre-tokenisation regex does not compile (PCRE2: ", pcre2_message(err),
                 " at offset ", off, "): ", pattern);
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// Finds the first match in s[0..n) at or after `start`; false if none.
  bool find(const char* s, size_t n, size_t start, size_t& ms, size_t& me, MatchState& st) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s);
    int rc;
    if (jit_) {
      rc = pcre2_jit_match(code_, subject, n, start, 0, st.md, st.mc);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match(code_, subject, n, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.md, nullptr);
      }
    } else {
      rc = pcre2_match(code_, subject, n, start, PCRE2_NO_UTF_CHECK, st.md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      LOOM_THROW(Error, "tokenizer: pre-tokenisation regex failed at byte ", start, " of a ", n,
                 "-byte piece (PCRE2: ", pcre2_message(rc), "): ", pattern_);
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    ms = ov[0];
    me = ov[1];
    return true;
  }
  const std::string& pattern() const { return pattern_; }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
  std::string pattern_;
};

// Named patterns: tiktoken's (tiktoken_ext/openai_public.py) and Meta's Llama 3 (llama/tokenizer.py).
const char* const kGpt2Pattern = R"('(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s)";
// tokenizers' ByteLevel pre-tokenizer (use_regex): the original GPT-2 pattern.
const char* const kByteLevelPattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kCl100kPattern =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kO200kPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Trie of the special tokens, for leftmost-longest matching.
struct SpecialTrie {
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    int32_t id = -1;
  };
  std::vector<Node> nodes = std::vector<Node>(1);
  bool first[256] = {};
  int n_first = 0;
  unsigned char only_first = 0;

  void add(std::string_view s, int32_t id) {
    int32_t at = 0;
    for (char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      int32_t next = -1;
      for (auto& [k, v] : nodes[at].kids) {
        if (k == c) next = v;
      }
      if (next < 0) {
        next = static_cast<int32_t>(nodes.size());
        nodes[at].kids.emplace_back(c, next);
        nodes.emplace_back();
      }
      at = next;
    }
    nodes[at].id = id;
    const auto c0 = static_cast<unsigned char>(s[0]);
    if (!first[c0]) ++n_first, only_first = c0;
    first[c0] = true;
  }
  /// Longest special token starting at s[i]: its length (0 if none) and id.
  size_t match_at(const char* s, size_t n, size_t i, int32_t& id) const {
    int32_t at = 0;
    size_t best = 0;
    for (size_t j = i; j < n; ++j) {
      const auto c = static_cast<unsigned char>(s[j]);
      int32_t next = -1;
      for (const auto& [k, v] : nodes[at].kids) {
        if (k == c) {
          next = v;
          break;
        }
      }
      if (next < 0) break;
      at = next;
      if (nodes[at].id >= 0) best = j + 1 - i, id = nodes[at].id;
    }
    return best;
  }
  /// Leftmost (then longest) special token in s[from..n): its start (n if none), length and id.
  size_t find(const char* s, size_t n, size_t from, size_t& len, int32_t& id) const {
    if (n_first == 0) return n;
    size_t i = from;
    while (i < n) {
      if (n_first == 1) {
        const void* p = std::memchr(s + i, only_first, n - i);
        if (p == nullptr) return n;
        i = static_cast<const char*>(p) - s;
      } else if (!first[static_cast<unsigned char>(s[i])]) {
        ++i;
        continue;
      }
      len = match_at(s, n, i, id);
      if (len > 0) return i;
      ++i;
    }
    return n;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

struct TokenizerImpl {
  const uint32_t uid = next_uid.fetch_add(1);  // tells per-thread caches apart
  std::string source;
  std::string pattern;
  std::vector<std::string> id_bytes;  // by id; special tokens as their text
  std::vector<uint8_t> has_id;
  BytesMap tokens;  // mergeable tokens' bytes -> id
  PairMap pairs;
  int32_t byte_id[256];
  bool all_bytes = false;
  bool whole_piece_lookup = false;  // tiktoken always; tokenizers with model.ignore_merges
  bool keep_gaps = false;           // tokenizers' Split "Isolated" keeps text between matches; tiktoken drops it
  struct Step {
    std::unique_ptr<Regex> regex;  // null: the piece passes whole
    bool add_prefix_space = false;
  };
  std::vector<Step> steps;
  std::vector<std::pair<std::string, int32_t>> specials;
  SpecialTrie special_trie;

  void set_token(int32_t id, std::string bytes) {
    if (static_cast<size_t>(id) >= id_bytes.size()) {
      id_bytes.resize(id + 1);
      has_id.resize(id + 1, 0);
    }
    id_bytes[id] = std::move(bytes);
    has_id[id] = 1;
  }
  void add_special(const std::string& text, int32_t id) {
    if (text.empty()) LOOM_THROW(ConfigError, source, ": special token ", id, " has empty text");
    specials.emplace_back(text, id);
    special_trie.add(text, id);
    set_token(id, text);
  }
  void finish() {
    all_bytes = true;
    for (int b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      byte_id[b] = tokens.find(&c, 1);
      if (byte_id[b] < 0) all_bytes = false;
    }
  }

  [[noreturn]] void missing_byte(unsigned char b) const {
    LOOM_THROW(InvalidArgument, "tokenizer ", source, ": byte 0x", std::hex, static_cast<int>(b),
               " has no token in the vocabulary (a byte-level BPE vocabulary has all 256), so it cannot be encoded");
  }

  // BPE of one pre-token: lowest merge rank first, leftmost among equal ranks.
  void bpe(const char* p, size_t n, std::vector<int32_t>& out, MatchState& st) const {
    if (n == 0) return;
    const uint64_t h = hash_bytes(p, n);
    if (whole_piece_lookup || n == 1) {
      const int32_t id = tokens.find_hashed(p, n, h);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    MatchState::CacheEntry* entry = nullptr;
    if (n <= kCachePieceBytes) {
      if (st.cache.empty()) st.cache.resize(kCacheEntries, MatchState::CacheEntry{0, 0, 0, 0, {}, {}});
      entry = &st.cache[h & (kCacheEntries - 1)];
      if (entry->owner == uid && entry->hash == h && entry->len == n && std::memcmp(entry->bytes, p, n) == 0) {
        out.insert(out.end(), entry->ids, entry->ids + entry->n_ids);
        return;
      }
    }
    const size_t first = out.size();
    bpe_merge(p, n, out, st);
    if (entry != nullptr && out.size() - first <= kCachePieceIds) {
      entry->owner = uid;
      entry->hash = h;
      entry->len = static_cast<uint8_t>(n);
      entry->n_ids = static_cast<uint8_t>(out.size() - first);
      std::memcpy(entry->bytes, p, n);
      std::copy(out.begin() + first, out.end(), entry->ids);
    }
  }

  void bpe_merge(const char* p, size_t n, std::vector<int32_t>& out, MatchState& st) const {
    if (!all_bytes) {
      for (size_t i = 0; i < n; ++i) {
        if (byte_id[static_cast<unsigned char>(p[i])] < 0) missing_byte(static_cast<unsigned char>(p[i]));
      }
    }
    if (n > 256) return bpe_long(p, n, out, st);
    auto& parts = st.parts;
    parts.resize(n);
    for (size_t i = 0; i < n; ++i) parts[i].id = byte_id[static_cast<unsigned char>(p[i])];
    auto rank_pair = [&](size_t i) {
      const PairMap::Slot* s = pairs.find(parts[i].id, parts[i + 1].id);
      if (s != nullptr) {
        parts[i].rank = s->rank;
        parts[i].merged = s->id;
      } else {
        parts[i].rank = kNoRank;
      }
    };
    size_t m = n;
    for (size_t i = 0; i + 1 < m; ++i) rank_pair(i);
    parts[m - 1].rank = kNoRank;
    while (m > 1) {
      size_t best = 0;
      int32_t best_rank = parts[0].rank;
      for (size_t i = 1; i + 1 < m; ++i) {
        if (parts[i].rank < best_rank) best_rank = parts[i].rank, best = i;
      }
      if (best_rank == kNoRank) break;
      parts[best].id = parts[best].merged;
      std::memmove(&parts[best + 1], &parts[best + 2], (m - best - 2) * sizeof(parts[0]));
      --m;
      if (best + 1 < m) {
        rank_pair(best);
      } else {
        parts[best].rank = kNoRank;
      }
      if (best > 0) rank_pair(best - 1);
    }
    for (size_t i = 0; i < m; ++i) out.push_back(parts[i].id);
  }

  // The same merge order with a heap and a linked list: O(n log n) for long pieces (runs of symbols, base64 blobs).
  void bpe_long(const char* p, size_t n, std::vector<int32_t>& out, MatchState& st) const {
    auto& ids = st.ids;
    auto& next = st.next;
    auto& prev = st.prev;
    auto& heap = st.heap;
    ids.resize(n);
    next.resize(n);
    prev.resize(n);
    heap.clear();
    const auto greater = [](const MatchState::Cand& a, const MatchState::Cand& b) { return a > b; };
    auto push = [&](int32_t l) {
      const int32_t r = next[l];
      if (l < 0 || r < 0) return;
      const PairMap::Slot* s = pairs.find(ids[l], ids[r]);
      if (s == nullptr) return;
      heap.push_back({s->rank, l, ids[l], ids[r], s->id});
      std::push_heap(heap.begin(), heap.end(), greater);
    };
    for (size_t i = 0; i < n; ++i) {
      ids[i] = byte_id[static_cast<unsigned char>(p[i])];
      next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
      prev[i] = static_cast<int32_t>(i) - 1;
    }
    for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), greater);
      const MatchState::Cand c = heap.back();
      heap.pop_back();
      if (ids[c.pos] != c.left) continue;
      const int32_t r = next[c.pos];
      if (r < 0 || ids[r] != c.right) continue;
      ids[c.pos] = c.merged;
      ids[r] = -1;
      next[c.pos] = next[r];
      if (next[r] >= 0) prev[next[r]] = c.pos;
      push(prev[c.pos]);
      push(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(ids[i]);
  }

  // Pre-tokenises s[0..n) with steps[level..] and encodes every piece.
  void encode_pieces(size_t level, const char* s, size_t n, std::vector<int32_t>& out, MatchState& st) const {
    if (level == steps.size()) return bpe(s, n, out, st);
    const Step& step = steps[level];
    if (step.add_prefix_space && n > 0 && s[0] != ' ') {
      std::string spaced(" ");
      spaced.append(s, n);
      return encode_pieces(level, spaced.data(), spaced.size(), out, st);
    }
    if (!step.regex) return encode_pieces(level + 1, s, n, out, st);
    size_t gap = 0, pos = 0;
    while (pos < n) {
      size_t ms = 0, me = 0;
      if (!step.regex->find(s, n, pos, ms, me, st)) break;
      if (me == ms) {  // an empty match: step over one character, which stays in the gap
        size_t bad = 0;
        const size_t len = utf8_seq(reinterpret_cast<const unsigned char*>(s) + ms, n - ms, bad);
        pos = ms + std::max<size_t>(len, 1);
        continue;
      }
      if (keep_gaps && ms > gap) encode_pieces(level + 1, s + gap, ms - gap, out, st);
      encode_pieces(level + 1, s + ms, me - ms, out, st);
      gap = pos = me;
    }
    if (keep_gaps && gap < n) encode_pieces(level + 1, s + gap, n - gap, out, st);
  }

  void encode_append(std::string_view text, bool with_special, std::vector<int32_t>& out) const {
    std::string cleaned;
    if (!valid_utf8(text)) {
      cleaned = replace_invalid_utf8(text);
      text = cleaned;
    }
    MatchState& st = match_state();
    if (!with_special || specials.empty()) return encode_pieces(0, text.data(), text.size(), out, st);
    size_t pos = 0;
    while (pos <= text.size()) {
      size_t len = 0;
      int32_t id = -1;
      const size_t at = special_trie.find(text.data(), text.size(), pos, len, id);
      if (at > pos) encode_pieces(0, text.data() + pos, at - pos, out, st);
      if (at == text.size()) break;
      out.push_back(id);
      pos = at + len;
    }
  }
};

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) LOOM_THROW(IoError, "tokenizer: cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) LOOM_THROW(IoError, "tokenizer: error reading ", path);
  return ss.str();
}

/// s for an error message: control bytes (NUL included) as \xNN, at most 80 bytes.
std::string escaped(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 80)) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (s.size() > 80) out += "...";
  return out;
}

int base64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  if (in.size() % 4 != 0 || in.empty()) return false;
  size_t pad = 0;
  if (in.back() == '=') ++pad;
  if (in.size() >= 2 && in[in.size() - 2] == '=') ++pad;
  uint32_t acc = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const auto c = static_cast<unsigned char>(in[i]);
    int v;
    if (c == '=') {
      if (i < in.size() - pad) return false;
      v = 0;
    } else {
      v = base64_value(c);
      if (v < 0) return false;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    if (i % 4 == 3) {
      out.push_back(static_cast<char>((acc >> 16) & 0xFF));
      out.push_back(static_cast<char>((acc >> 8) & 0xFF));
      out.push_back(static_cast<char>(acc & 0xFF));
      acc = 0;
    }
  }
  out.resize(out.size() - pad);
  return true;
}

std::string resolve_pattern(const std::string& pattern) {
  if (auto p = Tokenizer::named_pattern(pattern)) return *p;
  return pattern;
}

// Every way of splitting a token into two tokens is a merge of rank = the token's rank (tiktoken's rule: the rank of
// a pair of adjacent parts is the rank of their concatenation).
void pairs_from_ranks(TokenizerImpl& t) {
  for (size_t id = 0; id < t.id_bytes.size(); ++id) {
    if (!t.has_id[id]) continue;
    const std::string& b = t.id_bytes[id];
    for (size_t k = 1; k < b.size(); ++k) {
      const int32_t l = t.tokens.find(b.data(), k);
      if (l < 0) continue;
      const int32_t r = t.tokens.find(b.data() + k, b.size() - k);
      if (r < 0) continue;
      t.pairs.set(l, r, static_cast<int32_t>(id), static_cast<int32_t>(id));
    }
  }
}

std::shared_ptr<TokenizerImpl> load_ranks(const std::string& path, std::string pattern) {
  const std::string data = read_file(path);
  auto t = std::make_shared<TokenizerImpl>();
  t->source = path;
  const bool is_model = std::filesystem::path(path).filename() == "tokenizer.model";
  if (pattern.empty()) pattern = is_model ? "llama3" : "gpt2";
  std::unordered_map<int32_t, size_t> rank_line;
  size_t line_no = 0, pos = 0;
  int64_t max_rank = -1;
  std::string token;
  while (pos < data.size()) {
    size_t end = data.find_first_of("\r\n", pos);
    if (end == std::string::npos) end = data.size();
    std::string_view line(data.data() + pos, end - pos);
    ++line_no;
    pos = end + 1;
    if (end < data.size() && data[end] == '\r' && pos < data.size() && data[pos] == '\n') ++pos;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    const auto bad = [&](const std::string& what) {
      std::string hint;
      if (max_rank < 0) {
        hint = is_model
                   ? " (this tokenizer.model is not Llama 3's tiktoken format; a SentencePiece model, as Llama 1/2 "
                     "ship, is not byte-level BPE and is not supported)"
                   : " (is this a tiktoken ranks file?)";
      }
      LOOM_THROW(ConfigError, path, ":", line_no, ": ", what,
                 "; a tiktoken ranks file has '<base64 token> <rank>' on every line", hint);
    };
    if (sp == std::string_view::npos) bad("no space between token and rank");
    std::string_view b64 = line.substr(0, sp), num = line.substr(sp + 1);
    while (!num.empty() && num.back() == ' ') num.remove_suffix(1);
    if (!base64_decode(b64, token)) bad("'" + escaped(b64) + "' is not base64");
    if (num.empty() || num.size() > 10 || num.find_first_not_of("0123456789") != std::string_view::npos)
      bad("rank '" + escaped(num) + "' is not a non-negative integer");
    const int64_t rank = std::stoll(std::string(num));
    if (rank >= std::numeric_limits<int32_t>::max() - 1024) bad("rank " + std::string(num) + " is too large");
    const auto r = static_cast<int32_t>(rank);
    if (auto it = rank_line.find(r); it != rank_line.end()) {
      bad("rank " + std::to_string(r) + " again (first on line " + std::to_string(it->second) + ")");
    }
    const int32_t old = t->tokens.insert(token, r);
    if (old >= 0) bad("token again (first on line " + std::to_string(rank_line[old]) + ")");
    rank_line[r] = line_no;
    t->set_token(r, token);
    max_rank = std::max(max_rank, rank);
  }
  if (max_rank < 0)
    LOOM_THROW(ConfigError, path, ": no tokens (a tiktoken ranks file has '<base64 token> <rank>' lines)");
  const auto n = static_cast<int32_t>(max_rank + 1);
  t->pattern = resolve_pattern(pattern);
  t->steps.push_back({std::make_unique<Regex>(t->pattern, path + " (pattern '" + pattern + "')", false), false});
  t->whole_piece_lookup = true;
  t->keep_gaps = false;
  if (pattern == "cl100k") {
    t->add_special("<|endoftext|>", n + 1);
    t->add_special("<|fim_prefix|>", n + 2);
    t->add_special("<|fim_middle|>", n + 3);
    t->add_special("<|fim_suffix|>", n + 4);
    t->add_special("<|endofprompt|>", n + 20);
  } else if (pattern == "o200k") {  // o200k_base: ranks 0..199997, <|endoftext|> 199999, <|endofprompt|> 200018
    t->add_special("<|endoftext|>", n + 1);
    t->add_special("<|endofprompt|>", n + 20);
  } else if (pattern == "llama3") {
    const char* named[] = {"<|begin_of_text|>",
                           "<|end_of_text|>",
                           "<|reserved_special_token_0|>",
                           "<|reserved_special_token_1|>",
                           "<|finetune_right_pad_id|>",
                           "<|reserved_special_token_2|>",
                           "<|start_header_id|>",
                           "<|end_header_id|>",
                           "<|eom_id|>",
                           "<|eot_id|>",
                           "<|python_tag|>"};
    int32_t k = 0;
    for (const char* s : named) t->add_special(s, n + k++);
    for (int i = 3; k < 256; ++i) t->add_special("<|reserved_special_token_" + std::to_string(i) + "|>", n + k++);
  } else {
    t->add_special("<|endoftext|>", n);
  }
  pairs_from_ranks(*t);
  t->finish();
  return t;
}

// Byte-level token text (GPT-2's bytes_to_unicode alphabet) -> bytes; throws naming `where` for another character.
std::string byte_level_decode(const std::string& s, const std::string& source, const std::string& where) {
  const auto& table = unicode_to_byte();
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const uint32_t cp = next_code_point(s, i);
    if (cp >= table.size() || table[cp] < 0) {
      LOOM_THROW(Unsupported, source, ": ", where, " has the character U+", std::hex, cp,
                 " that is not in byte-level BPE's alphabet (GPT-2's bytes_to_unicode): not a byte-level BPE "
                 "vocabulary (SentencePiece-style vocabularies are not supported)");
    }
    out.push_back(static_cast<char>(table[cp]));
  }
  return out;
}

using nlohmann::json;

json parse_json(const std::string& path) {
  const std::string data = read_file(path);
  try {
    return json::parse(data);
  } catch (const json::exception& e) {
    LOOM_THROW(ConfigError, path, ": not valid JSON: ", e.what());
  }
}

// vocab (token text -> id) and merges ((left, right) text pairs, in priority order) -> tokens, pairs.
void load_vocab_merges(TokenizerImpl& t, const json& vocab, const std::string& vocab_key,
                       const std::vector<std::pair<std::string, std::string>>& merges,
                       const std::vector<std::string>& merge_where) {
  if (!vocab.is_object()) LOOM_THROW(ConfigError, t.source, ": ", vocab_key, " is not an object of token: id");
  std::unordered_map<std::string, int32_t> text_id;
  text_id.reserve(vocab.size());
  for (const auto& [text, idv] : vocab.items()) {
    const std::string where = vocab_key + "[\"" + text + "\"]";
    if (!idv.is_number_integer() || idv.get<int64_t>() < 0 || idv.get<int64_t>() >= (1ll << 30)) {
      LOOM_THROW(ConfigError, t.source, ": ", where, " is not a token id (a non-negative integer)");
    }
    const auto id = idv.get<int32_t>();
    std::string bytes = byte_level_decode(text, t.source, where);
    const int32_t old = t.tokens.insert(bytes, id);
    if (old >= 0) LOOM_THROW(ConfigError, t.source, ": ", where, ": the same bytes as token ", old);
    if (static_cast<size_t>(id) < t.has_id.size() && t.has_id[id]) {
      LOOM_THROW(ConfigError, t.source, ": ", where, ": id ", id, " is taken by another token");
    }
    t.set_token(id, std::move(bytes));
    text_id.emplace(text, id);
  }
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [a, b] = merges[i];
    const auto ia = text_id.find(a), ib = text_id.find(b), iab = text_id.find(a + b);
    if (ia == text_id.end() || ib == text_id.end() || iab == text_id.end()) {
      const std::string& missing = ia == text_id.end() ? a : ib == text_id.end() ? b : a + b;
      LOOM_THROW(ConfigError, t.source, ": ", merge_where[i], " ('", a, " ", b, "'): '", missing, "' is not in ",
                 vocab_key);
    }
    t.pairs.set(ia->second, ib->second, static_cast<int32_t>(i), iab->second);
  }
}

// tokenizers' pre_tokenizer -> steps (Split with a regex, ByteLevel).
void add_pre_tokenizer(TokenizerImpl& t, const json& p, const std::string& key, bool& byte_level) {
  if (!p.is_object() || !p.contains("type")) {
    LOOM_THROW(Unsupported, t.source, ": ", key, " must be ByteLevel, Split or a Sequence of them for byte-level BPE");
  }
  const std::string type = p["type"].get<std::string>();
  if (type == "Sequence") {
    const json& list = p.value("pretokenizers", json::array());
    for (size_t i = 0; i < list.size(); ++i) {
      add_pre_tokenizer(t, list[i], key + ".pretokenizers[" + std::to_string(i) + "]", byte_level);
    }
  } else if (type == "ByteLevel") {
    byte_level = true;
    TokenizerImpl::Step step;
    step.add_prefix_space = p.value("add_prefix_space", true);
    if (p.value("use_regex", true)) {
      step.regex = std::make_unique<Regex>(kByteLevelPattern, t.source + ": " + key, true);
    }
    t.steps.push_back(std::move(step));
  } else if (type == "Split") {
    const std::string behavior = p.value("behavior", "");
    if (behavior != "Isolated" || p.value("invert", false)) {
      LOOM_THROW(Unsupported, t.source, ": ", key, ": Split with behavior '", behavior, "'",
                 p.value("invert", false) ? " and invert" : "", " is not supported (only Isolated, not inverted)");
    }
    const json& pat = p.value("pattern", json::object());
    TokenizerImpl::Step step;
    if (pat.contains("Regex")) {
      step.regex = std::make_unique<Regex>(pat["Regex"].get<std::string>(), t.source + ": " + key + ".pattern", true);
    } else if (pat.contains("String")) {
      step.regex = std::make_unique<Regex>(pat["String"].get<std::string>(), t.source + ": " + key, true, true);
    } else {
      LOOM_THROW(ConfigError, t.source, ": ", key, ".pattern has neither Regex nor String");
    }
    t.steps.push_back(std::move(step));
  } else {
    LOOM_THROW(Unsupported, t.source, ": ", key, ".type '", type,
               "' is not supported (byte-level BPE uses ByteLevel, Split or Sequence)");
  }
}

void override_pattern(TokenizerImpl& t, const std::string& pattern) {
  t.steps.clear();
  t.pattern = resolve_pattern(pattern);
  t.steps.push_back({std::make_unique<Regex>(t.pattern, t.source + " (pattern '" + pattern + "')", false), false});
}

std::shared_ptr<TokenizerImpl> load_tokenizer_json(const std::string& path, const json& j, const std::string& pattern) {
  auto t = std::make_shared<TokenizerImpl>();
  t->source = path;
  const json& model = j["model"];
  if (!model.is_object()) LOOM_THROW(ConfigError, path, ": key 'model' is not an object");
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (type != "BPE") {
    LOOM_THROW(Unsupported, path, ": model.type is '", type, "'; only byte-level BPE tokenizers are supported");
  }
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() &&
        !(model[key].is_string() && model[key].get<std::string>().empty()))
      LOOM_THROW(Unsupported, path, ": model.", key, " is set; byte-level BPE as GPT-2 and Llama 3 use it has none");
  }
  if (model.value("byte_fallback", false)) {
    LOOM_THROW(Unsupported, path, ": model.byte_fallback is true (a SentencePiece-style BPE, not byte-level)");
  }
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& nm = j["normalizer"];
    const bool empty_seq = nm.value("type", "") == "Sequence" && nm.value("normalizers", json::array()).empty();
    if (!empty_seq) {
      LOOM_THROW(Unsupported, path, ": normalizer '", nm.value("type", "?"),
                 "' is not supported (GPT-2 and Llama 3 have none)");
    }
  }
  if (!model.contains("vocab")) LOOM_THROW(ConfigError, path, ": no key model.vocab");
  if (!model.contains("merges") || !model["merges"].is_array()) {
    LOOM_THROW(ConfigError, path, ": no list model.merges");
  }
  const json& mj = model["merges"];
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> where;
  merges.reserve(mj.size());
  where.reserve(mj.size());
  for (size_t i = 0; i < mj.size(); ++i) {
    where.push_back("model.merges[" + std::to_string(i) + "]");
    const json& m = mj[i];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        LOOM_THROW(ConfigError, path, ": ", where.back(), " '", s, "' is not two tokens separated by one space");
      }
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      LOOM_THROW(ConfigError, path, ": ", where.back(), " is neither \"a b\" nor [\"a\", \"b\"]");
    }
  }
  load_vocab_merges(*t, model["vocab"], "model.vocab", merges, where);
  t->whole_piece_lookup = model.value("ignore_merges", false);
  t->keep_gaps = true;
  if (j.contains("added_tokens")) {
    const json& added = j["added_tokens"];
    for (size_t i = 0; i < added.size(); ++i) {
      const json& a = added[i];
      if (!a.contains("id") || !a.contains("content") || !a["id"].is_number_integer() || !a["content"].is_string()) {
        LOOM_THROW(ConfigError, path, ": added_tokens[", i, "] needs an integer 'id' and a string 'content'");
      }
      t->add_special(a["content"].get<std::string>(), a["id"].get<int32_t>());
    }
  }
  bool byte_level = false;
  if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null()) {
    LOOM_THROW(Unsupported, path, ": pre_tokenizer is null; byte-level BPE needs a ByteLevel pre_tokenizer");
  }
  add_pre_tokenizer(*t, j["pre_tokenizer"], "pre_tokenizer", byte_level);
  if (!byte_level) {
    LOOM_THROW(Unsupported, path, ": pre_tokenizer has no ByteLevel step: not a byte-level BPE tokenizer");
  }
  for (const auto& s : t->steps) {
    if (s.regex) {
      t->pattern = s.regex->pattern();
      break;
    }
  }
  if (!pattern.empty()) override_pattern(*t, pattern);
  t->finish();
  return t;
}

std::shared_ptr<TokenizerImpl> load_vocab_json(const std::string& path, const json& vocab, const std::string& pattern) {
  auto t = std::make_shared<TokenizerImpl>();
  t->source = path;
  const std::string merges_path = (std::filesystem::path(path).parent_path() / "merges.txt").string();
  if (!std::filesystem::exists(merges_path)) {
    LOOM_THROW(IoError, "tokenizer: ", path, " is a vocab.json, which needs merges.txt beside it: ", merges_path,
               " not found");
  }
  const std::string data = read_file(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> where;
  size_t pos = 0, line_no = 0;
  while (pos < data.size()) {
    size_t end = data.find('\n', pos);
    if (end == std::string::npos) end = data.size();
    std::string line = data.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0) continue;
    if (line.empty() && pos >= data.size()) break;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
      LOOM_THROW(ConfigError, merges_path, ":", line_no, ": '", escaped(line),
                 "' is not two tokens separated by one space");
    }
    merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    where.push_back(merges_path + ":" + std::to_string(line_no));
  }
  // Errors about merges name merges.txt's line; those about the vocabulary name vocab.json's key.
  load_vocab_merges(*t, vocab, "vocab", merges, where);
  t->whole_piece_lookup = false;
  t->keep_gaps = true;
  const int32_t eot = t->tokens.find("<|endoftext|>");
  if (eot >= 0) {
    t->specials.emplace_back("<|endoftext|>", eot);
    t->special_trie.add("<|endoftext|>", eot);
  }
  t->pattern = pattern.empty() ? std::string(kByteLevelPattern) : resolve_pattern(pattern);
  t->steps.push_back({std::make_unique<Regex>(t->pattern, path + " (pattern)", pattern.empty()), false});
  t->finish();
  return t;
}

}  // namespace
}  // namespace detail

// -------------------------------------------------------------------------------------------------------------------

Tokenizer Tokenizer::from_file(const std::string& path_in, const std::string& pattern) {
  namespace fs = std::filesystem;
  std::string path = path_in;
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    if (fs::exists(dir / "tokenizer.json")) {
      path = (dir / "tokenizer.json").string();
    } else if (fs::exists(dir / "vocab.json")) {
      path = (dir / "vocab.json").string();
    } else if (fs::exists(dir / "tokenizer.model")) {
      path = (dir / "tokenizer.model").string();
    } else {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() == ".tiktoken") found.push_back(e.path().string());
      }
      if (found.size() != 1) {
        LOOM_THROW(IoError, "tokenizer: directory ", path,
                   " has no tokenizer.json, vocab.json, tokenizer.model or single *.tiktoken file");
      }
      path = found[0];
    }
  }
  if (!fs::exists(path)) LOOM_THROW(IoError, "tokenizer: ", path, " does not exist");
  if (fs::path(path).extension() == ".json") {
    const nlohmann::json j = detail::parse_json(path);
    try {
      if (j.is_object() && j.contains("model")) return Tokenizer(detail::load_tokenizer_json(path, j, pattern));
      if (j.is_object()) return Tokenizer(detail::load_vocab_json(path, j, pattern));
    } catch (const nlohmann::json::exception& e) {
      LOOM_THROW(ConfigError, path, ": unexpected JSON layout: ", e.what());
    }
    LOOM_THROW(ConfigError, path, ": neither a tokenizer.json (an object with 'model') nor a vocab.json (an object)");
  }
  return Tokenizer(detail::load_ranks(path, pattern));
}

std::optional<std::string> Tokenizer::named_pattern(std::string_view name) {
  if (name == "gpt2") return std::string(detail::kGpt2Pattern);
  if (name == "cl100k") return std::string(detail::kCl100kPattern);
  if (name == "llama3") return std::string(detail::kLlama3Pattern);
  if (name == "o200k") return std::string(detail::kO200kPattern);
  return std::nullopt;
}

void Tokenizer::encode_append(std::string_view text, bool with_special, std::vector<int32_t>& out) const {
  impl_->encode_append(text, with_special, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode_append(text, false, out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_special(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode_append(text, true, out);
  return out;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->has_id.size() || !impl_->has_id[id]) {
    LOOM_THROW(InvalidArgument, "tokenizer ", impl_->source, ": token id ", id, " is not in the vocabulary (size ",
               vocab_size(), ")");
  }
  return impl_->id_bytes[id];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) out.append(token_bytes(id));
  return out;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_bytes.size()); }

std::optional<int32_t> Tokenizer::special_id(std::string_view name) const {
  for (const auto& [text, id] : impl_->specials) {
    if (text == name) return id;
  }
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::eot_id() const {
  if (auto id = special_id("<|endoftext|>")) return id;
  return special_id("<|end_of_text|>");
}

std::vector<std::pair<std::string, int32_t>> Tokenizer::special_tokens() const { return impl_->specials; }
const std::string& Tokenizer::pattern() const { return impl_->pattern; }
const std::string& Tokenizer::source() const { return impl_->source; }

}  // namespace loom::data
