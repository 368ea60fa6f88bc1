// Tokenizer tests: exactness against tiktoken and Hugging Face tokenizers on a >= 5 MB corpus (reference ids made by
// tests/data/tokenizer_reference.py into the build directory, once), round trips, special tokens, bad files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "data/tokenizer.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using loom::data::Tokenizer;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_all(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

/// The generated test data (tokenizers, corpus, reference ids), made once per build directory and script version;
/// concurrent test processes wait on a lock while one makes it.
fs::path test_data_dir() {
  static fs::path dir = [] {
    const fs::path out = fs::path(LOOM_BINARY_DIR) / "tokenizer_testdata";
    const fs::path src = LOOM_SOURCE_DIR;
    const fs::path python = src / ".venv" / "bin" / "python";
    if (!fs::exists(python)) {
      ADD_FAILURE() << python << " is missing: run scripts/setup.sh (it makes .venv with tiktoken and tokenizers)";
      return fs::path();
    }
    const fs::path scripts[] = {src / "scripts" / "make_test_tokenizers.py",
                                src / "tests" / "data" / "tokenizer_reference.py"};
    std::string stamp = "v1";
    for (const auto& s : scripts) stamp += " " + std::to_string(std::hash<std::string>{}(read_all(s)));
    fs::create_directories(out.parent_path());
    const std::string lock_path = out.string() + ".lock";
    const int fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR, 0644);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) {
      ADD_FAILURE() << "cannot lock " << lock_path;
      return fs::path();
    }
    if (!fs::exists(out / "stamp") || read_all(out / "stamp") != stamp) {
      fs::remove_all(out);
      const std::string cmd = python.string() + " " + scripts[1].string() + " --out " + out.string();
      std::fprintf(stderr, "making tokenizer test data: %s\n", cmd.c_str());
      const int rc = std::system(cmd.c_str());
      if (rc != 0) {
        ADD_FAILURE() << cmd << " failed (" << rc << ")";
        ::close(fd);
        return fs::path();
      }
      write_all(out / "stamp", stamp);
    }
    ::close(fd);
    return out;
  }();
  return dir;
}

struct Corpus {
  std::vector<std::string> docs;
  size_t bytes = 0;
};

const Corpus& corpus() {
  static Corpus c = [] {
    Corpus c;
    const std::string data = read_all(test_data_dir() / "corpus.bin");
    size_t pos = 0;
    auto u32 = [&] {
      uint32_t v;
      std::memcpy(&v, data.data() + pos, 4);
      pos += 4;
      return v;
    };
    if (data.size() < 4) return c;
    const uint32_t n = u32();
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t len = u32();
      c.docs.emplace_back(data.substr(pos, len));
      pos += len;
      c.bytes += len;
    }
    return c;
  }();
  return c;
}

std::vector<std::vector<int32_t>> read_ids(const fs::path& p) {
  const std::string data = read_all(p);
  std::vector<std::vector<int32_t>> out;
  size_t pos = 0;
  while (pos + 4 <= data.size()) {
    uint32_t n;
    std::memcpy(&n, data.data() + pos, 4);
    pos += 4;
    std::vector<int32_t> ids(n);
    std::memcpy(ids.data(), data.data() + pos, 4ull * n);
    pos += 4ull * n;
    out.push_back(std::move(ids));
  }
  return out;
}

struct Config {
  std::string name, file, pattern;
};
// So that test names and CTest's list show the config's name, not its bytes.
void PrintTo(const Config& c, std::ostream* os) { *os << c.name; }

std::vector<Config> configs() {
  // The configurations tokenizer_reference.py writes (kept here so the test names exist before the data does).
  return {{"tt_gpt2", "gpt2/gpt2.tiktoken", ""},
          {"tt_cl100k", "gpt2/gpt2.tiktoken", "cl100k"},
          {"tt_gpt2_llama3", "gpt2/gpt2.tiktoken", "llama3"},
          {"tt_gpt2_o200k", "gpt2/gpt2.tiktoken", "o200k"},
          {"tt_llama3", "llama3/tokenizer.model", ""},
          {"hf_gpt2", "gpt2/tokenizer.json", ""},
          {"hf_gpt2_strmerges", "gpt2/tokenizer_strmerges.json", ""},
          {"hf_gpt2_prefix", "gpt2/tokenizer_prefix.json", ""},
          {"hf_llama3", "llama3/tokenizer.json", ""},
          {"hf_llama3_strmerges", "llama3/tokenizer_strmerges.json", ""},
          {"hf_gpt2_vocab", "gpt2/vocab.json", ""}};
}

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80                   ? 1
                 : (c >= 0xC2 && c <= 0xDF) ? 2
                 : (c >= 0xE0 && c <= 0xEF) ? 3
                 : (c >= 0xF0 && c <= 0xF4) ? 4
                                            : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += len;
  }
  return true;
}

class TokenizerExact : public ::testing::TestWithParam<Config> {};

// Zero differences against the reference on every document, in both modes; and decode(encode(x)) == x for valid
// UTF-8 (else the references' U+FFFD-replaced text). Configs: tt_* are tiktoken Encodings from the ranks file with
// the GPT-2, cl100k or Llama 3 pattern; hf_* are tokenizers from tokenizer.json (merges as arrays or "a b" strings,
// ByteLevel with add_prefix_space) or vocab.json + merges.txt.
TEST_P(TokenizerExact, MatchesReferenceAndRoundTrips) {
  const Config& cfg = GetParam();
  const fs::path dir = test_data_dir();
  ASSERT_FALSE(dir.empty());
  const Corpus& c = corpus();
  ASSERT_GE(c.bytes, 5'000'000u) << "the corpus must have at least 5 MB";
  const Tokenizer tok = Tokenizer::from_file((dir / cfg.file).string(), cfg.pattern);
  for (const char* mode : {"ordinary", "special"}) {
    const auto ref = read_ids(dir / "ref" / (cfg.name + "." + mode + ".bin"));
    ASSERT_EQ(ref.size(), c.docs.size()) << cfg.name << " " << mode;
    size_t bad_docs = 0, tokens = 0, roundtrip_bad = 0;
    for (size_t d = 0; d < c.docs.size(); ++d) {
      const std::string& doc = c.docs[d];
      const std::vector<int32_t> ids = std::string(mode) == "special" ? tok.encode_with_special(doc) : tok.encode(doc);
      tokens += ids.size();
      if (ids != ref[d]) {
        if (++bad_docs <= 5) {
          size_t k = 0;
          while (k < ids.size() && k < ref[d].size() && ids[k] == ref[d][k]) ++k;
          std::string ctx, got, want;
          for (size_t j = k >= 3 ? k - 3 : 0; j < k; ++j) ctx += tok.token_bytes(ids[j]);
          for (size_t j = k; j < std::min(ids.size(), k + 4); ++j)
            got.append("[").append(tok.token_bytes(ids[j])).append("]");
          for (size_t j = k; j < std::min(ref[d].size(), k + 4); ++j)
            want.append("[").append(tok.token_bytes(ref[d][j])).append("]");
          ADD_FAILURE() << cfg.name << " " << mode << ": document " << d << " differs at token " << k << " of "
                        << ref[d].size() << " after '" << printable(ctx) << "': loom " << printable(got)
                        << " reference " << printable(want);
        }
      }
      const std::string back = tok.decode(ids);
      // add_prefix_space adds a space to each piece of text: there the round trip is the reference's decoding.
      const bool prefix = cfg.name.find("prefix") != std::string::npos;
      const std::string expect = is_valid_utf8(doc) && !prefix ? doc : tok.decode(ref[d]);
      if (back != expect && ++roundtrip_bad <= 3) {
        ADD_FAILURE() << cfg.name << " " << mode << ": decode(encode(doc " << d << ")) differs";
      }
    }
    EXPECT_EQ(bad_docs, 0u) << cfg.name << " " << mode << ": documents that differ from the reference, of "
                            << c.docs.size();
    EXPECT_EQ(roundtrip_bad, 0u);
    std::printf("%s %s: %zu documents, %.2f MB, %zu tokens, %zu differ\n", cfg.name.c_str(), mode, c.docs.size(),
                c.bytes / 1e6, tokens, bad_docs);
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, TokenizerExact, ::testing::ValuesIn(configs()),
                         [](const ::testing::TestParamInfo<Config>& info) { return info.param.name; });

Tokenizer load(const std::string& rel, const std::string& pattern = "") {
  return Tokenizer::from_file((test_data_dir() / rel).string(), pattern);
}

TEST(Tokenizer, SpecialTokensGpt2) {
  ASSERT_FALSE(test_data_dir().empty());
  for (const char* file : {"gpt2/gpt2.tiktoken", "gpt2/tokenizer.json", "gpt2/vocab.json"}) {
    SCOPED_TRACE(file);
    const Tokenizer t = load(file);
    ASSERT_TRUE(t.eot_id().has_value());
    const int32_t eot = *t.eot_id();
    EXPECT_EQ(eot, 10256);
    EXPECT_EQ(t.vocab_size(), 10257);
    EXPECT_EQ(t.special_id("<|endoftext|>"), eot);
    EXPECT_FALSE(t.special_id("<|eot_id|>").has_value());
    const std::string text = "one<|endoftext|>two <|endoftext|><|endoftext";
    const auto plain = t.encode(text);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), eot), 0);
    const auto with = t.encode_with_special(text);
    EXPECT_EQ(std::count(with.begin(), with.end(), eot), 2);
    EXPECT_EQ(t.decode(with), text);
    EXPECT_EQ(t.decode(plain), text);
    // Text around a special token is encoded on its own, as tiktoken and tokenizers do.
    auto a = t.encode("one"), b = t.encode("two <|endoftext");
    std::vector<int32_t> expect = a;
    expect.push_back(eot);
    expect.insert(expect.end(), b.begin(), b.end());
    EXPECT_EQ(t.encode_with_special("one<|endoftext|>two <|endoftext"), expect);
  }
}

TEST(Tokenizer, SpecialTokensLlama3) {
  ASSERT_FALSE(test_data_dir().empty());
  for (const char* file : {"llama3/tokenizer.model", "llama3/tokenizer.json"}) {
    SCOPED_TRACE(file);
    const Tokenizer t = load(file);
    const int32_t n = 16256;
    EXPECT_EQ(t.vocab_size(), n + 256);
    EXPECT_EQ(t.special_id("<|begin_of_text|>"), n);
    EXPECT_EQ(t.eot_id(), n + 1);
    EXPECT_EQ(t.special_id("<|start_header_id|>"), n + 6);
    EXPECT_EQ(t.special_id("<|end_header_id|>"), n + 7);
    EXPECT_EQ(t.special_id("<|eot_id|>"), n + 9);
    EXPECT_EQ(t.special_id("<|reserved_special_token_247|>"), n + 255);
    const std::string chat = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>";
    const auto ids = t.encode_with_special(chat);
    ASSERT_GE(ids.size(), 6u);
    EXPECT_EQ(ids[0], n);
    EXPECT_EQ(ids[1], n + 6);
    EXPECT_EQ(ids.back(), n + 9);
    EXPECT_EQ(t.decode(ids), chat);
    const auto plain = t.encode(chat);
    for (int32_t id : plain) EXPECT_LT(id, n) << "encode() must not produce special tokens";
  }
  // cl100k's special tokens on the same ranks.
  const Tokenizer c = load("gpt2/gpt2.tiktoken", "cl100k");
  EXPECT_EQ(c.eot_id(), 10256 + 1);
  EXPECT_EQ(c.special_id("<|endofprompt|>"), 10256 + 20);
  EXPECT_EQ(c.vocab_size(), 10256 + 21);
}

// Invalid UTF-8 is encoded as Python's bytes.decode("utf-8", "replace") of it: one U+FFFD per maximal ill-formed
// subsequence.
TEST(Tokenizer, InvalidUtf8IsReplacedLikePython) {
  ASSERT_FALSE(test_data_dir().empty());
  const Tokenizer t = load("gpt2/gpt2.tiktoken");
  const std::string r = "\xEF\xBF\xBD";
  const std::pair<std::string, std::string> cases[] = {
      {"a\xff"
       "b",
       "a" + r + "b"},
      {"\xe2\x82 x", r + " x"},                           // truncated 3-byte sequence: one replacement
      {"\xed\xa0\x80", r + r + r},                        // a UTF-16 surrogate: each byte
      {"\xc0\xaf", r + r},                                // overlong
      {"\xf0\x9f\x98", r},                                // truncated emoji
      {"\xf4\x90\x80\x80", r + r + r + r},                // above U+10FFFF
      {"ok \xe2\x28\xa1", "ok " + r + "(" + r},           // bad second byte
      {"\xf0\x9f\x98\x80\x80", "\xf0\x9f\x98\x80" + r}};  // stray continuation byte
  for (const auto& [bad, replaced] : cases) {
    EXPECT_EQ(t.encode(bad), t.encode(replaced)) << printable(bad);
    EXPECT_EQ(t.decode(t.encode(bad)), replaced) << printable(bad);
  }
}

TEST(Tokenizer, ConcurrentEncodeIsDeterministic) {
  ASSERT_FALSE(test_data_dir().empty());
  const Tokenizer t = load("llama3/tokenizer.json");
  const Corpus& c = corpus();
  std::vector<std::vector<int32_t>> serial;
  for (size_t d = 0; d < 200 && d < c.docs.size(); ++d) serial.push_back(t.encode(c.docs[d]));
  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (size_t d = 0; d < serial.size(); ++d) bad[k] += t.encode(c.docs[d]) != serial[d];
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(bad[k], 0) << "thread " << k;
}

// Two tokenizers used in turn on one thread (each thread caches merged pieces) give what each gives alone.
TEST(Tokenizer, TokenizersOnOneThreadDoNotShareCachedPieces) {
  ASSERT_FALSE(test_data_dir().empty());
  const Corpus& c = corpus();
  std::vector<std::vector<int32_t>> alone_gpt2, alone_llama3;
  std::thread([&] {
    const Tokenizer g = load("gpt2/tokenizer.json");
    for (size_t d = 0; d < 100 && d < c.docs.size(); ++d) alone_gpt2.push_back(g.encode(c.docs[d]));
  }).join();
  std::thread([&] {
    const Tokenizer l = load("llama3/tokenizer.json");
    for (size_t d = 0; d < 100 && d < c.docs.size(); ++d) alone_llama3.push_back(l.encode(c.docs[d]));
  }).join();
  const Tokenizer g = load("gpt2/tokenizer.json"), l = load("llama3/tokenizer.json");
  size_t bad = 0;
  for (size_t d = 0; d < alone_gpt2.size(); ++d) {
    bad += g.encode(c.docs[d]) != alone_gpt2[d];
    bad += l.encode(c.docs[d]) != alone_llama3[d];
  }
  EXPECT_EQ(bad, 0u);
}

TEST(Tokenizer, DirectoryAndNamedPatterns) {
  ASSERT_FALSE(test_data_dir().empty());
  EXPECT_EQ(Tokenizer::from_file((test_data_dir() / "gpt2").string()).source(),
            (test_data_dir() / "gpt2" / "tokenizer.json").string());
  EXPECT_TRUE(Tokenizer::named_pattern("llama3").has_value());
  EXPECT_FALSE(Tokenizer::named_pattern("nope").has_value());
  EXPECT_THROW(load("gpt2/gpt2.tiktoken").decode(std::vector<int32_t>{5, 999999}), loom::InvalidArgument);
  EXPECT_THROW(load("gpt2/gpt2.tiktoken").decode(std::vector<int32_t>{-1}), loom::InvalidArgument);
}

// ---- bad files: errors name the file and the line or key ------------------------------------------------------

class TokenizerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("loom_tok_bad_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  /// The message of the error that loading `name` (written with `content`) throws, checking its type.
  template <typename E>
  std::string error_of(const std::string& name, const std::string& content, const std::string& pattern = "") {
    const fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    write_all(p, content);
    try {
      Tokenizer::from_file(p.string(), pattern);
    } catch (const E& e) {
      return e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << name << ": wrong error type: " << e.what();
      return "";
    }
    ADD_FAILURE() << name << ": no error";
    return "";
  }
  fs::path dir_;
};

std::string ranks_text(int n) {
  // Single bytes 'a'..: base64 of one byte, rank = index.
  static const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string s;
  for (int i = 0; i < n; ++i) {
    const int b = 'a' + i;
    s += std::string(1, b64[b >> 2]) + b64[(b & 3) << 4] + "== " + std::to_string(i) + "\n";
  }
  return s;
}

TEST_F(TokenizerFiles, RanksFileErrors) {
  const std::string good = ranks_text(3);  // YQ== 0, Yg== 1, Yw== 2
  std::string m = error_of<loom::ConfigError>("a.tiktoken", good + "!!notbase64 3\n");
  EXPECT_NE(m.find("a.tiktoken:4"), std::string::npos) << m;
  EXPECT_NE(m.find("base64"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("b.tiktoken", good + "YWI= x7\n");
  EXPECT_NE(m.find("b.tiktoken:4"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("c.tiktoken", good + "YWI= 1\n");
  EXPECT_NE(m.find("c.tiktoken:4"), std::string::npos) << m;
  EXPECT_NE(m.find("rank 1 again (first on line 2)"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("d.tiktoken", good + "YQ== 7\n");
  EXPECT_NE(m.find("d.tiktoken:4: token again (first on line 1)"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("e.tiktoken", "YWI=\n");
  EXPECT_NE(m.find("e.tiktoken:1"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("sp/tokenizer.model", std::string("\x0a\x0b\x00\x01\x02 binary", 12));
  EXPECT_NE(m.find("SentencePiece"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("empty.tiktoken", "");
  EXPECT_NE(m.find("empty.tiktoken: no tokens"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("f.tiktoken", good, "(unclosed");
  EXPECT_NE(m.find("does not compile"), std::string::npos) << m;
  EXPECT_THROW(Tokenizer::from_file((dir_ / "missing.tiktoken").string()), loom::IoError);
  // A ranks file without every byte loads, but encoding a byte it lacks is an error naming the byte.
  const fs::path small = dir_ / "small.tiktoken";
  write_all(small, good);
  const Tokenizer t = Tokenizer::from_file(small.string());
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{0, 1, 2}));
  try {
    t.encode("abz");
    ADD_FAILURE() << "no error for a byte without a token";
  } catch (const loom::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("0x7a"), std::string::npos) << e.what();
  }
}

TEST_F(TokenizerFiles, TokenizerJsonErrors) {
  const std::string pre = R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})";
  std::string m = error_of<loom::ConfigError>("x/tokenizer.json", "{\"model\": {");
  EXPECT_NE(m.find("x/tokenizer.json: not valid JSON"), std::string::npos) << m;
  m = error_of<loom::Unsupported>("u/tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
  EXPECT_NE(m.find("u/tokenizer.json: model.type is 'Unigram'"), std::string::npos) << m;
  m = error_of<loom::ConfigError>(
      "m/tokenizer.json",
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "a c"]}, )" + pre + "}");
  EXPECT_NE(m.find("m/tokenizer.json: model.merges[1] ('a c'): 'c' is not in model.vocab"), std::string::npos) << m;
  m = error_of<loom::ConfigError>(
      "n/tokenizer.json",
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"], "ab"]}, )" + pre + "}");
  EXPECT_NE(m.find("model.merges[1]"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("v/tokenizer.json",
                                  R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}, )" + pre + "}");
  EXPECT_NE(m.find("model.vocab[\"a\"]"), std::string::npos) << m;
  m = error_of<loom::Unsupported>("s/tokenizer.json",
                                  R"({"model": {"type": "BPE", "vocab": {"▁a": 0}, "merges": []}, )" + pre + "}");
  EXPECT_NE(m.find("model.vocab[\"▁a\"]"), std::string::npos) << m;
  m = error_of<loom::Unsupported>(
      "w/tokenizer.json",
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"}})");
  EXPECT_NE(m.find("pre_tokenizer.type 'Whitespace'"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("r/tokenizer.json",
                                  R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": )"
                                  R"({"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"}})");
  EXPECT_NE(m.find("r/tokenizer.json: pre_tokenizer.pattern"), std::string::npos) << m;
  m = error_of<loom::ConfigError>("k/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}, )" + pre + "}");
  EXPECT_NE(m.find("k/tokenizer.json: no list model.merges"), std::string::npos) << m;
}

TEST_F(TokenizerFiles, VocabJsonMergesTxtErrors) {
  std::string m = error_of<loom::IoError>("a/vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  EXPECT_NE(m.find("merges.txt"), std::string::npos) << m;
  write_all(dir_ / "b" / "merges.txt", "#version: 0.2\na b\nab\n");
  fs::create_directories(dir_ / "b");
  write_all(dir_ / "b" / "merges.txt", "#version: 0.2\na b\nab\n");
  m = error_of<loom::ConfigError>("b/vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  EXPECT_NE(m.find("merges.txt:3"), std::string::npos) << m;
  fs::create_directories(dir_ / "c");
  write_all(dir_ / "c" / "merges.txt", "#version: 0.2\na b\nb c\n");
  m = error_of<loom::ConfigError>("c/vocab.json", R"({"a": 0, "b": 1, "ab": 2})");
  EXPECT_NE(m.find("merges.txt:3 ('b c'): 'c' is not in vocab"), std::string::npos) << m;
}

// A token that no merge reaches: tiktoken looks every piece up whole first (so "abc" is one token), tokenizers only
// with model.ignore_merges. Expected ids are those of tiktoken 0.14 and tokenizers 0.23 on the same files.
TEST_F(TokenizerFiles, WholePieceLookupAsTheReferences) {
  // a b c abc bc xyz x y z
  write_all(dir_ / "w.tiktoken", "YQ== 0\nYg== 1\nYw== 2\nYWJj 3\nYmM= 4\neHl6 5\neA== 6\neQ== 7\neg== 8\n");
  const Tokenizer tt = Tokenizer::from_file((dir_ / "w.tiktoken").string());
  EXPECT_EQ(tt.encode("abc"), (std::vector<int32_t>{3}));
  EXPECT_EQ(tt.encode("abcabc"), (std::vector<int32_t>{3, 3}));
  EXPECT_EQ(tt.encode("cab"), (std::vector<int32_t>{2, 0, 1}));
  EXPECT_EQ(tt.encode("xyz"), (std::vector<int32_t>{5}));
  EXPECT_EQ(tt.encode("xyzx"), (std::vector<int32_t>{6, 7, 8, 6}));
  for (const bool ignore_merges : {true, false}) {
    const fs::path p = dir_ / (ignore_merges ? "im1.json" : "im0.json");
    write_all(p, std::string(R"({"model": {"type": "BPE", "ignore_merges": )") + (ignore_merges ? "true" : "false") +
                     R"(, "vocab": {"a": 0, "b": 1, "c": 2, "abc": 3, "bc": 4}, "merges": [["b", "c"]]},
                     "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}})");
    const Tokenizer hf = Tokenizer::from_file(p.string());
    EXPECT_EQ(hf.encode("abc"), (ignore_merges ? std::vector<int32_t>{3} : std::vector<int32_t>{0, 4}));
    EXPECT_EQ(hf.encode("abcabc"), (std::vector<int32_t>{0, 4, 0, 4}));
  }
}

}  // namespace
