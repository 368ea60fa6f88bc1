// loomdata's core (data/prepare.h): shards equal the tokenizer applied document by document, the same bytes for any
// thread count and chunking, a resumed run after an abrupt exit gives the same files, bad JSON lines are errors
// naming file:line (or counted under skip_bad), and the llm.c header of both token widths.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using loom::data::PrepareOptions;
using loom::data::PrepareSummary;
using loom::data::Tokenizer;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// A JSON string literal for text (quotes, backslashes and control characters escaped; UTF-8 kept as it is).
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// The files of a directory: name -> bytes (progress.json left out).
std::map<std::string, std::string> shard_files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename() != "progress.json") out[e.path().filename().string()] = slurp(e.path().string());
  return out;
}

std::vector<int32_t> read_split(const std::string& dir, const std::vector<std::string>& names) {
  std::vector<int32_t> all;
  for (const auto& n : names) {
    auto t = loom::data::read_llmc_shard(dir + "/" + n);
    all.insert(all.end(), t.begin(), t.end());
  }
  return all;
}

class Prepare : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(fs::temp_directory_path() / ("loom_prepare_test_" + std::to_string(::getpid())));
    fs::create_directories(*root_);
    const std::string python = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
    ASSERT_TRUE(fs::exists(python)) << python << " is missing: run scripts/setup.sh";
    const std::string cmd = python + " " + LOOM_SOURCE_DIR + "/tests/data/make_tiny_tokenizer.py " + *root_ +
                            "/tokenizer.json 400 /usr/share/common-licenses/GPL-3 " + LOOM_SOURCE_DIR + "/README.md";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  void SetUp() override {
    dir_ = *root_ + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/in");
    tok_ = std::make_unique<Tokenizer>(Tokenizer::from_file(*root_ + "/tokenizer.json"));
    // Documents: paragraphs of the GPL (prose), some code, non-ASCII text, an empty document; in a text file, a
    // JSON-lines file and a gzip-compressed JSON-lines file.
    const std::string gpl = slurp("/usr/share/common-licenses/GPL-3");
    std::vector<std::string> paras;
    for (size_t pos = 0; pos < gpl.size() && paras.size() < 60;) {
      size_t end = gpl.find("\n\n", pos);
      if (end == std::string::npos) end = gpl.size();
      paras.push_back(gpl.substr(pos, end - pos));
      pos = end + 2;
    }
    docs_.push_back(slurp(std::string(LOOM_SOURCE_DIR) + "/data/prepare.h"));  // a text file: one document
    spit(dir_ + "/in/a.txt", docs_.back());
    std::string jl;
    for (size_t i = 0; i < 30; ++i) {
      docs_.push_back(i == 7    ? std::string()
                      : i == 11 ? "naïve café — ünïcödé 日本語 🙂\ttab \"quoted\""
                                : paras[i]);
      jl += "{\"id\": " + std::to_string(i) + ", \"text\": " + json_string(docs_.back()) + "}\n";
      if (i == 5) jl += "\n";  // a blank line is no document
    }
    spit(dir_ + "/in/b.jsonl", jl);
    std::string jl2;
    for (size_t i = 30; i < paras.size(); ++i) {
      docs_.push_back(paras[i]);
      jl2 += "{\"text\": " + json_string(docs_.back()) + ", \"meta\": {\"n\": " + std::to_string(i) + "}}\n";
    }
    spit(dir_ + "/in/c.jsonl", jl2);
    ASSERT_EQ(std::system(("gzip -n -f " + dir_ + "/in/c.jsonl").c_str()), 0);
    inputs_ = {dir_ + "/in/a.txt", dir_ + "/in/b.jsonl", dir_ + "/in/c.jsonl.gz"};
  }

  PrepareOptions options(const std::string& out) const {
    PrepareOptions o;
    o.inputs = inputs_;
    o.out_dir = dir_ + "/" + out;
    o.tokenizer_id = *root_ + "/tokenizer.json";
    o.shard_tokens = 700;
    o.val_fraction = 0.25;
    o.threads = 2;
    o.chunk_bytes = 1500;  // several chunks per round, several rounds
    return o;
  }

  static std::string* root_;
  std::string dir_;
  std::unique_ptr<Tokenizer> tok_;
  std::vector<std::string> docs_;
  std::vector<std::string> inputs_;
};
std::string* Prepare::root_ = nullptr;

TEST_F(Prepare, ShardsEqualTheTokenizerAppliedDocumentByDocument) {
  const PrepareSummary s = loom::data::prepare_shards(*tok_, options("out"));
  const int32_t eot = *tok_->eot_id();
  std::vector<int32_t> train, val;
  int64_t n_val = 0;
  for (size_t i = 0; i < docs_.size(); ++i) {
    const bool is_val = loom::data::document_is_val(static_cast<int64_t>(i), 0.25);
    std::vector<int32_t>& dst = is_val ? val : train;
    n_val += is_val;
    dst.push_back(eot);
    const auto ids = tok_->encode(docs_[i]);
    dst.insert(dst.end(), ids.begin(), ids.end());
  }
  ASSERT_GT(n_val, 0);
  ASSERT_LT(n_val, static_cast<int64_t>(docs_.size()));
  EXPECT_EQ(s.documents, static_cast<int64_t>(docs_.size()));
  EXPECT_EQ(s.val_documents, n_val);
  EXPECT_EQ(s.train_tokens, static_cast<int64_t>(train.size()));
  EXPECT_EQ(s.val_tokens, static_cast<int64_t>(val.size()));
  EXPECT_EQ(read_split(dir_ + "/out", s.train_shards), train);
  EXPECT_EQ(read_split(dir_ + "/out", s.val_shards), val);
  // Every shard but the last of a split holds exactly shard_tokens tokens, in the uint16 format.
  ASSERT_GE(s.train_shards.size(), 3u);
  EXPECT_EQ(s.train_shards.front(), "train_000000.bin");
  for (size_t i = 0; i + 1 < s.train_shards.size(); ++i)
    EXPECT_EQ(fs::file_size(dir_ + "/out/" + s.train_shards[i]), 1024u + 2 * 700) << s.train_shards[i];
  const std::string first = slurp(dir_ + "/out/train_000000.bin");
  int32_t header[3];
  std::memcpy(header, first.data(), sizeof header);
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 700);
  // Nothing but the shards and progress.json is left behind.
  for (const auto& e : fs::directory_iterator(dir_ + "/out")) EXPECT_NE(e.path().extension(), ".tmp") << e.path();
  // A second run over a finished directory does nothing and reports the same.
  const PrepareSummary again = loom::data::prepare_shards(*tok_, options("out"));
  EXPECT_TRUE(again.already_complete);
  EXPECT_EQ(again.train_shards, s.train_shards);
  EXPECT_EQ(again.documents, s.documents);
}

TEST_F(Prepare, SameBytesForAnyThreadCountAndChunkSize) {
  PrepareOptions one = options("one");
  one.threads = 1;
  loom::data::prepare_shards(*tok_, one);
  PrepareOptions two = options("two");
  two.threads = 2;
  loom::data::prepare_shards(*tok_, two);
  PrepareOptions many = options("many");
  many.threads = 5;
  many.chunk_bytes = 100;
  loom::data::prepare_shards(*tok_, many);
  const auto a = shard_files(dir_ + "/one");
  ASSERT_GE(a.size(), 4u);
  EXPECT_EQ(a, shard_files(dir_ + "/two"));
  EXPECT_EQ(a, shard_files(dir_ + "/many"));
}

// Runs prepare_shards in a child process that exits abruptly (std::_Exit, as a kill would) at the given point.
void run_and_die(const Tokenizer& tok, PrepareOptions o) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      loom::data::prepare_shards(tok, o);
    } catch (...) {
      std::_Exit(3);
    }
    std::_Exit(0);  // finished without reaching the abort point
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 137) << "the child did not stop at the abort point";
}

TEST_F(Prepare, ResumeAfterAnAbruptExitGivesIdenticalFiles) {
  loom::data::prepare_shards(*tok_, options("whole"));
  const auto want = shard_files(dir_ + "/whole");
  // Killed right after a shard was renamed into place (before the progress file knew), twice in a row, then right
  // after a progress save; each time the rerun continues and the end result is the same bytes.
  PrepareOptions o = options("resumed");
  o.test_abort_after_shards = 2;
  run_and_die(*tok_, o);
  // Under the final names there are only whole shards.
  for (const auto& e : fs::directory_iterator(o.out_dir))
    if (e.path().extension() == ".bin") {
      EXPECT_NO_THROW(loom::data::read_llmc_shard(e.path().string()));
    }
  o.test_abort_after_shards = 0;
  o.test_abort_after_rounds = 1;
  o.threads = 1;
  run_and_die(*tok_, o);
  o.test_abort_after_rounds = 0;
  o.test_abort_after_shards = 3;
  o.threads = 3;
  run_and_die(*tok_, o);
  o.test_abort_after_shards = 0;
  const PrepareSummary s = loom::data::prepare_shards(*tok_, o);
  EXPECT_TRUE(s.resumed);
  EXPECT_EQ(shard_files(o.out_dir), want);
  const PrepareSummary whole = loom::data::prepare_shards(*tok_, options("whole"));
  EXPECT_EQ(s.documents, whole.documents);
  EXPECT_EQ(s.train_tokens, whole.train_tokens);
  EXPECT_EQ(s.val_tokens, whole.val_tokens);
  EXPECT_EQ(s.text_bytes, whole.text_bytes);
}

TEST_F(Prepare, ResumeWithOtherOptionsIsRefused) {
  PrepareOptions o = options("out");
  o.test_abort_after_shards = 1;
  run_and_die(*tok_, o);
  o.test_abort_after_shards = 0;
  o.shard_tokens = 900;
  try {
    loom::data::prepare_shards(*tok_, o);
    FAIL() << "expected a refusal";
  } catch (const loom::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("shard_tokens"), std::string::npos) << e.what();
  }
}

TEST_F(Prepare, BadJsonLineIsAnErrorNamingFileAndLineUnlessSkipped) {
  spit(dir_ + "/in/bad.jsonl",
       "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"\n{\"title\": \"no text\"}\n{\"text\": "
       "\"five\"}\n");
  PrepareOptions o = options("bad");
  o.inputs = {dir_ + "/in/bad.jsonl"};
  o.val_fraction = 0;
  try {
    loom::data::prepare_shards(*tok_, o);
    FAIL() << "expected an error";
  } catch (const loom::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:3"), std::string::npos) << e.what();
  }
  // The line without a text field is an error too (line 4), and --skip-bad (rerun in the same directory, which
  // continues the stopped run) counts both and keeps the rest.
  o.skip_bad = true;
  const PrepareSummary s = loom::data::prepare_shards(*tok_, o);
  EXPECT_EQ(s.bad_records, 2);
  EXPECT_EQ(s.documents, 3);
  std::vector<int32_t> want;
  for (const char* d : {"one", "two", "five"}) {
    want.push_back(*tok_->eot_id());
    const auto ids = tok_->encode(d);
    want.insert(want.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(read_split(o.out_dir, s.train_shards), want);
  EXPECT_TRUE(s.val_shards.empty());
  o.skip_bad = false;
  o.out_dir = dir_ + "/missing_field";
  spit(dir_ + "/in/bad.jsonl", "{\"text\": \"one\"}\n{\"body\": \"two\"}\n");
  try {
    loom::data::prepare_shards(*tok_, o);
    FAIL() << "expected an error";
  } catch (const loom::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"text\""), std::string::npos) << e.what();
  }
}

// A vocabulary above 65536 ids (a tiktoken ranks file whose last merge has rank 70000, so <|endoftext|> is 70001):
// the shards are llm.c's uint32 format and hold the ids above 65535 exactly.
TEST_F(Prepare, LargeVocabularyWritesUint32Shards) {
  auto b64 = [](const std::string& in) {
    static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < in.size(); i += 3) {
      uint32_t v = static_cast<uint8_t>(in[i]) << 16;
      if (i + 1 < in.size()) v |= static_cast<uint8_t>(in[i + 1]) << 8;
      if (i + 2 < in.size()) v |= static_cast<uint8_t>(in[i + 2]);
      out += k[(v >> 18) & 63];
      out += k[(v >> 12) & 63];
      out += i + 1 < in.size() ? k[(v >> 6) & 63] : '=';
      out += i + 2 < in.size() ? k[v & 63] : '=';
    }
    return out;
  };
  std::string ranks;
  for (int b = 0; b < 256; ++b) ranks += b64(std::string(1, static_cast<char>(b))) + " " + std::to_string(b) + "\n";
  ranks += b64("th") + " 70000\n";
  spit(dir_ + "/big.tiktoken", ranks);
  const Tokenizer big = Tokenizer::from_file(dir_ + "/big.tiktoken", "gpt2");
  ASSERT_GT(big.vocab_size(), 65536);
  PrepareOptions o = options("big");
  o.tokenizer_id = dir_ + "/big.tiktoken";
  o.val_fraction = 0;
  const PrepareSummary s = loom::data::prepare_shards(big, o);
  EXPECT_EQ(s.token_bytes, 4);
  std::vector<int32_t> want;
  for (const std::string& d : docs_) {
    want.push_back(*big.eot_id());
    const auto ids = big.encode(d);
    want.insert(want.end(), ids.begin(), ids.end());
  }
  EXPECT_GT(std::count(want.begin(), want.end(), 70000), 10);
  EXPECT_EQ(read_split(o.out_dir, s.train_shards), want);
  const std::string first = slurp(o.out_dir + "/train_000000.bin");
  int32_t header[2];
  std::memcpy(header, first.data(), sizeof header);
  EXPECT_EQ(header[0], 20240801);
  EXPECT_EQ(header[1], 7);
  EXPECT_EQ(first.size(), 1024u + 4 * 700);
}

TEST(LlmcShard, BothTokenWidthsRoundTripWithLlmcHeaders) {
  const std::string dir = fs::temp_directory_path() / ("loom_llmc_shard_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::vector<int32_t> small = {0, 1, 50256, 65535};
  loom::data::write_llmc_shard(dir + "/u16.bin", small, 65536);
  EXPECT_EQ(fs::file_size(dir + "/u16.bin"), 1024u + 2 * small.size());
  EXPECT_EQ(loom::data::read_llmc_shard(dir + "/u16.bin"), small);
  const std::vector<int32_t> big = {0, 65536, 128000, 128255};
  loom::data::write_llmc_shard(dir + "/u32.bin", big, 128256);
  EXPECT_EQ(fs::file_size(dir + "/u32.bin"), 1024u + 4 * big.size());
  const std::string bytes = slurp(dir + "/u32.bin");
  int32_t header[3];
  std::memcpy(header, bytes.data(), sizeof header);
  EXPECT_EQ(header[0], 20240801);  // llm.c's Llama 3 shards
  EXPECT_EQ(header[1], 7);
  EXPECT_EQ(header[2], 4);
  EXPECT_EQ(loom::data::read_llmc_shard(dir + "/u32.bin"), big);
  EXPECT_THROW(loom::data::write_llmc_shard(dir + "/x.bin", big, 65536), loom::InvalidArgument);
  EXPECT_FALSE(fs::exists(dir + "/x.bin"));
  fs::remove_all(dir);
}

TEST(DocumentSplit, ValFractionIsAboutTheShareOfDocuments) {
  int64_t n = 0;
  for (int64_t i = 0; i < 100000; ++i) n += loom::data::document_is_val(i, 0.01);
  EXPECT_GT(n, 850);
  EXPECT_LT(n, 1150);
  for (int64_t i = 0; i < 1000; ++i) EXPECT_FALSE(loom::data::document_is_val(i, 0.0));
}

}  // namespace
