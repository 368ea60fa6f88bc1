// Token sources and the data-parallel loader: every format with files written
// here, each malformed file named in its error, the synthetic corpus's
// determinism and bounds, and the loader's coverage and resume across dp sizes.
#include "recipes/data.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "tensor/error.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::recipes;

namespace {

/// A fresh directory per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("loom_data_test_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const void* data, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

/// An llm.c shard: 256 int32 header (magic, version, count), then the tokens (uint16 or uint32).
template <typename Tok>
void write_llmc(const std::string& path, const std::vector<Tok>& toks, int32_t magic = 20240520, int32_t version = 1,
                int64_t header_count = -1) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = static_cast<int32_t>(header_count < 0 ? static_cast<int64_t>(toks.size()) : header_count);
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), 1024);
  f.write(reinterpret_cast<const char*>(toks.data()), static_cast<std::streamsize>(toks.size() * sizeof(Tok)));
}

std::vector<int64_t> read_all(const TokenSource& src) {
  std::vector<int64_t> out(static_cast<size_t>(src.size()));
  src.read(0, src.size(), out.data());
  return out;
}

DataConfig files_cfg(const std::string& source, const std::string& train, const std::string& val = "") {
  DataConfig c;
  c.source = source;
  c.train_path = train;
  c.val_path = val;
  return c;
}

/// The message of the error `fn` throws as E (fails the test if it throws nothing or something else).
template <typename E, typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "unexpected exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}

/// Token at position i is i: a loader's rows tell which sequence they are.
class CountingSource final : public TokenSource {
 public:
  explicit CountingSource(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  void read(int64_t pos, int64_t n, int64_t* out) const override {
    ASSERT_TRUE(pos >= 0 && pos + n <= n_);
    for (int64_t i = 0; i < n; ++i) out[i] = pos + i;
  }
  int64_t vocab_bound() const override { return n_; }
  std::string describe() const override { return "counting"; }

 private:
  int64_t n_;
};

/// Global sequence index of each row of a batch (token at position i is i, stride T), checking
/// that every row is a whole window and targets are the inputs shifted by one.
std::vector<int64_t> sequence_ids(const Batch& b, int64_t T) {
  auto x = b.idx.to_vector<int64_t>(), y = b.targets.to_vector<int64_t>();
  std::vector<int64_t> ids;
  for (size_t r = 0; r < x.size() / static_cast<size_t>(T); ++r) {
    EXPECT_EQ(x[r * T] % T, 0) << "row does not start on a sequence boundary";
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(x[r * T + t], x[r * T] + t);
      EXPECT_EQ(y[r * T + t], x[r * T + t] + 1);
    }
    ids.push_back(x[r * T] / T);
  }
  return ids;
}

/// One step of all dp ranks' loaders: the union of their rows in rank order.
std::vector<int64_t> step_all(std::vector<DataLoader>& ranks, int64_t T) {
  std::vector<int64_t> ids;
  for (auto& l : ranks) {
    auto b = l.next();
    auto r = sequence_ids(b, T);
    ids.insert(ids.end(), r.begin(), r.end());
  }
  return ids;
}

std::vector<DataLoader> make_ranks(std::shared_ptr<TokenSource> src, int64_t T, int64_t B, int dp) {
  std::vector<DataLoader> v;
  for (int r = 0; r < dp; ++r) v.emplace_back(src, T, B, r, dp);
  return v;
}

}  // namespace

// ----------------------------------------------------------------------------- synthetic

TEST(SyntheticData, DeterministicFromSeedAndRandomAccess) {
  DataConfig c;
  c.seed = 7;
  auto a = open_tokens(c, "train", 256), b = open_tokens(c, "train", 256);
  std::vector<int64_t> x(5000), y(5000);
  a->read(1000, 5000, x.data());  // crosses block boundaries at 1024, 2048, ...
  b->read(1000, 5000, y.data());
  EXPECT_EQ(x, y);
  // Piecewise reads (odd sizes, across boundaries) give the same tokens as one read.
  std::vector<int64_t> z(5000);
  for (int64_t p = 0; p < 5000; p += 37) a->read(1000 + p, std::min<int64_t>(37, 5000 - p), z.data() + p);
  EXPECT_EQ(x, z);
  c.seed = 8;
  auto d = open_tokens(c, "train", 256);
  d->read(1000, 5000, y.data());
  EXPECT_NE(x, y);
  // Far positions are as cheap as near ones (generated by position, not stored).
  a->read(a->size() - 10, 10, z.data());
}

TEST(SyntheticData, TokensBelowVocabForAnySize) {
  for (int64_t V : {2, 7, 64, 256, 1000, 50257}) {
    DataConfig c;
    auto src = open_tokens(c, "train", V);
    EXPECT_EQ(src->vocab_bound(), V);
    std::vector<int64_t> x(20000);
    src->read(123456, 20000, x.data());
    std::set<int64_t> seen;
    for (int64_t t : x) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, V);
      seen.insert(t);
    }
    EXPECT_GT(static_cast<int64_t>(seen.size()), std::min<int64_t>(V, 20) / 2) << "V=" << V;
  }
}

TEST(SyntheticData, LearnableWithEntropyFloorBelowBigram) {
  for (int64_t V : {64, 256}) {
    const double floor = synthetic_entropy_floor(1234, V);
    EXPECT_GT(floor, 0.3);
    EXPECT_LT(floor, std::log(4.0));  // 4 successors per state (and topic): well below log V
    EXPECT_EQ(floor, synthetic_entropy_floor(1234, V));
    // The empirical bigram entropy H(next | prev) over 2M tokens: what a model without context reaches.
    // It must lie between the floor (the topic helps) and log 16 (there is something to learn).
    DataConfig c;
    auto src = open_tokens(c, "train", V);
    const int64_t n = 2'000'000;
    std::vector<int64_t> x(n);
    src->read(0, n, x.data());
    std::vector<double> pair(V * V, 0), first(V, 0);
    for (int64_t i = 0; i + 1 < n; ++i) {
      pair[x[i] * V + x[i + 1]] += 1;
      first[x[i]] += 1;
    }
    double h = 0;
    for (int64_t a = 0; a < V; ++a)
      for (int64_t b = 0; b < V; ++b)
        if (pair[a * V + b] > 0) h -= pair[a * V + b] / (n - 1) * std::log(pair[a * V + b] / first[a]);
    EXPECT_GT(h, floor + 0.3) << "a bigram model should not reach the floor (topics carry information)";
    // At most 4 topics x 4 successors follow any token, far fewer than V.
    EXPECT_LT(h, std::log(16.0));
    std::printf("synthetic V=%lld: entropy floor %.4f, bigram %.4f, uniform %.4f nats/token\n",
                static_cast<long long>(V), floor, h, std::log(static_cast<double>(V)));
  }
}

TEST(SyntheticData, SplitIsDisjointTail) {
  DataConfig c;
  c.val_fraction = 0.25;
  auto tr = open_tokens(c, "train", 64), va = open_tokens(c, "val", 64);
  EXPECT_EQ(tr->size() + va->size(), int64_t{1} << 32);
  EXPECT_EQ(va->size(), (int64_t{1} << 32) / 4);
  DataConfig whole;
  whole.val_fraction = 0.5;
  auto w = open_tokens(whole, "val", 64);  // val of 0.5 starts at 2^31; train of 0.25 covers it
  std::vector<int64_t> a(100), b(100);
  w->read(0, 100, a.data());
  tr->read(int64_t{1} << 31, 100, b.data());
  EXPECT_EQ(a, b);
  c.val_path = "x.bin";
  EXPECT_NE(error_of<ConfigError>([&] { open_tokens(c, "train", 64); }).find("data.val_path"), std::string::npos);
}

// ----------------------------------------------------------------------------- text

TEST(TextData, BytesOfTheFile) {
  TempDir d;
  const std::string text = "hello, world\n\xc3\xa9";
  write_bytes(d.file("a.txt"), text.data(), text.size());
  auto src = open_tokens(files_cfg("text", d.file("a.txt"), d.file("a.txt")), "train", 300);
  auto toks = read_all(*src);
  ASSERT_EQ(toks.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) EXPECT_EQ(toks[i], static_cast<unsigned char>(text[i]));
  EXPECT_EQ(toks.back(), 0xa9);
  EXPECT_EQ(src->vocab_bound(), 256);
  EXPECT_NE(src->describe().find("a.txt"), std::string::npos);
}

TEST(TextData, VocabBelow256IsConfigError) {
  TempDir d;
  write_bytes(d.file("a.txt"), "abc", 3);
  auto msg = error_of<ConfigError>([&] { open_tokens(files_cfg("text", d.file("a.txt")), "train", 100); });
  EXPECT_NE(msg.find("data.source"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.vocab_size"), std::string::npos) << msg;
}

TEST(TextData, SplitByFraction) {
  TempDir d;
  std::string text(1000, 'a');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>('a' + i % 26);
  write_bytes(d.file("t.txt"), text.data(), text.size());
  auto c = files_cfg("text", d.file("t.txt"));
  c.val_fraction = 0.1;
  auto tr = read_all(*open_tokens(c, "train", 256)), va = read_all(*open_tokens(c, "val", 256));
  ASSERT_EQ(tr.size(), 900u);
  ASSERT_EQ(va.size(), 100u);
  for (size_t i = 0; i < 900; ++i) ASSERT_EQ(tr[i], text[i]);
  for (size_t i = 0; i < 100; ++i) ASSERT_EQ(va[i], text[900 + i]);
}

// ----------------------------------------------------------------------------- llm.c

TEST(LlmcData, ShardsGlobbedInSortedOrder) {
  TempDir d;
  std::vector<uint16_t> s0 = {1, 2, 3, 65535}, s1 = {4, 5}, s2 = {6, 7, 8};
  // Written out of order: the source must sort by name.
  write_llmc(d.file("train_002.bin"), s2);
  write_llmc(d.file("train_000.bin"), s0);
  write_llmc(d.file("train_001.bin"), s1);
  write_llmc(d.file("val_000.bin"), std::vector<uint16_t>{9, 10});
  auto c = files_cfg("llmc", d.file("train_*.bin"), d.file("val_*.bin"));
  auto tr = open_tokens(c, "train", 65536);
  EXPECT_EQ(read_all(*tr), (std::vector<int64_t>{1, 2, 3, 65535, 4, 5, 6, 7, 8}));
  EXPECT_NE(tr->describe().find("3 files, 9 tokens"), std::string::npos) << tr->describe();
  // A read across shard boundaries.
  std::vector<int64_t> mid(4);
  tr->read(3, 4, mid.data());
  EXPECT_EQ(mid, (std::vector<int64_t>{65535, 4, 5, 6}));
  EXPECT_EQ(read_all(*open_tokens(c, "val", 65536)), (std::vector<int64_t>{9, 10}));
  // Without val_path: the tail of the training tokens, excluded from train.
  c.val_path.clear();
  c.val_fraction = 0.3;
  EXPECT_EQ(read_all(*open_tokens(c, "train", 65536)), (std::vector<int64_t>{1, 2, 3, 65535, 4, 5}));
  EXPECT_EQ(read_all(*open_tokens(c, "val", 65536)), (std::vector<int64_t>{6, 7, 8}));
}

TEST(LlmcData, Llama3Uint32Format) {
  TempDir d;
  write_llmc(d.file("t.bin"), std::vector<uint32_t>{0, 128255, 70000}, 20240801, 7);
  EXPECT_EQ(read_all(*open_tokens(files_cfg("llmc", d.file("t.bin"), d.file("t.bin")), "train", 128256)),
            (std::vector<int64_t>{0, 128255, 70000}));
}

TEST(LlmcData, FileWrittenByLlmcDataCommonPy) {
  // The exact recipe of llm.c dev/data/data_common.py write_datafile (GPT-2 branch).
  TempDir d;
  const std::string path = d.file("tiny_train.bin");
  const std::string script =
      "import numpy as np, sys\n"
      "toks = [(i * 7919) % 50257 for i in range(3000)]\n"
      "header = np.zeros(256, dtype=np.int32)\n"
      "header[0] = 20240520\nheader[1] = 1\nheader[2] = len(toks)\n"
      "toks_np = np.array(toks, dtype=np.uint16)\n"
      "with open(sys.argv[1], 'wb') as f:\n    f.write(header.tobytes())\n    f.write(toks_np.tobytes())\n";
  write_bytes(d.file("w.py"), script.data(), script.size());
  const std::string cmd = "/usr/bin/python3 " + d.file("w.py") + " " + path + " 2>/dev/null";
  if (std::system(cmd.c_str()) != 0 || !fs::exists(path)) GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
  auto toks = read_all(*open_tokens(files_cfg("llmc", path, path), "train", 50257));
  ASSERT_EQ(toks.size(), 3000u);
  for (int64_t i = 0; i < 3000; ++i) ASSERT_EQ(toks[i], (i * 7919) % 50257);
}

TEST(LlmcData, BadMagicNamesFileAndFormats) {
  TempDir d;
  write_llmc(d.file("x.bin"), std::vector<uint16_t>{1, 2}, 1234);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("x.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("x.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("bad magic 1234, expected 20240520"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nanogpt"), std::string::npos) << msg;
}

TEST(LlmcData, BadVersionNamesFile) {
  TempDir d;
  write_llmc(d.file("v.bin"), std::vector<uint16_t>{1, 2}, 20240520, 2);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("v.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("v.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 2"), std::string::npos) << msg;
}

TEST(LlmcData, TruncatedNamesFileAndCounts) {
  TempDir d;
  write_llmc(d.file("t.bin"), std::vector<uint16_t>(50, 1), 20240520, 1, 100);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("t.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("t.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated: header says 100 tokens, file holds 50"), std::string::npos) << msg;
  // Longer than the header says: also an error (a wrong count would silently drop or misread tokens).
  write_llmc(d.file("l.bin"), std::vector<uint16_t>(50, 1), 20240520, 1, 20);
  msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("l.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("l.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("size mismatch: header says 20 tokens, file holds 50"), std::string::npos) << msg;
  // Shorter than the header itself.
  write_bytes(d.file("h.bin"), "abcd", 4);
  msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("h.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("h.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST(LlmcData, TokenOutOfRangeNamesFileAndOffset) {
  TempDir d;
  write_llmc(d.file("a.bin"), std::vector<uint16_t>{1, 2, 3});
  write_llmc(d.file("b.bin"), std::vector<uint16_t>{4, 5, 999, 6});
  auto src = open_tokens(files_cfg("llmc", d.file("*.bin"), d.file("a.bin")), "train", 500);
  std::vector<int64_t> ok(5);
  src->read(0, 5, ok.data());  // the bad id is not read yet
  auto msg = error_of<IoError>([&] { read_all(*src); });
  EXPECT_NE(msg.find(d.file("b.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("token 999 at token offset 2 (byte 1028)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.vocab_size 500"), std::string::npos) << msg;
}

TEST(LlmcData, MissingFileNamesPathAndFormat) {
  TempDir d;
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("nope_*.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("nope_*.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.train_path"), std::string::npos) << msg;
  EXPECT_NE(msg.find("20240520"), std::string::npos) << msg;
  write_llmc(d.file("t.bin"), std::vector<uint16_t>{1, 2});
  msg = error_of<IoError>(
      [&] { open_tokens(files_cfg("llmc", d.file("t.bin"), d.file("missing_val.bin")), "val", 100); });
  EXPECT_NE(msg.find("data.val_path"), std::string::npos) << msg;
  EXPECT_NE(msg.find(d.file("missing_val.bin")), std::string::npos) << msg;
}

TEST(LlmcData, UnreadableFileNamesPath) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads any file";
  TempDir d;
  write_llmc(d.file("t.bin"), std::vector<uint16_t>{1, 2});
  fs::permissions(d.file("t.bin"), fs::perms::none);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("t.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("t.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

TEST(LlmcData, DirectoryIsNotAShard) {
  TempDir d;
  fs::create_directories(d.file("dir.bin"));
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("dir.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("dir.bin")), std::string::npos) << msg;
}

TEST(LlmcData, FifoIsNotAShardAndDoesNotHang) {
  TempDir d;
  ASSERT_EQ(::mkfifo(d.file("pipe.bin").c_str(), 0600), 0);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("llmc", d.file("pipe.bin")), "train", 100); });
  EXPECT_NE(msg.find(d.file("pipe.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
}

TEST(LlmcData, MissingTrainPathIsConfigError) {
  auto msg = error_of<ConfigError>([&] { open_tokens(files_cfg("llmc", ""), "train", 100); });
  EXPECT_NE(msg.find("data.train_path"), std::string::npos) << msg;
  msg = error_of<ConfigError>([&] { open_tokens(files_cfg("parquet", "x"), "train", 100); });
  EXPECT_NE(msg.find("data.source"), std::string::npos) << msg;
}

// ----------------------------------------------------------------------------- nanoGPT

TEST(NanoGptData, RawUint16TrainAndVal) {
  TempDir d;
  std::vector<uint16_t> tr = {10, 20, 30, 40, 50}, va = {7, 8};
  write_bytes(d.file("train.bin"), tr.data(), tr.size() * 2);
  write_bytes(d.file("val.bin"), va.data(), va.size() * 2);
  auto c = files_cfg("nanogpt", d.file("train.bin"), d.file("val.bin"));
  EXPECT_EQ(read_all(*open_tokens(c, "train", 64)), (std::vector<int64_t>{10, 20, 30, 40, 50}));
  EXPECT_EQ(read_all(*open_tokens(c, "val", 64)), (std::vector<int64_t>{7, 8}));
}

TEST(NanoGptData, OddSizeNamesFile) {
  TempDir d;
  write_bytes(d.file("train.bin"), "abcde", 5);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("nanogpt", d.file("train.bin")), "train", 64); });
  EXPECT_NE(msg.find(d.file("train.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("5 bytes"), std::string::npos) << msg;
}

TEST(NanoGptData, EmptyFileIsError) {
  TempDir d;
  write_bytes(d.file("train.bin"), "", 0);
  auto msg = error_of<IoError>([&] { open_tokens(files_cfg("nanogpt", d.file("train.bin")), "train", 64); });
  EXPECT_NE(msg.find(d.file("train.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("no tokens"), std::string::npos) << msg;
}

// ----------------------------------------------------------------------------- loader

TEST(DataLoader, RanksCoverConsecutiveSequencesForDp124) {
  const int64_t T = 8, B = 3;
  auto src = std::make_shared<CountingSource>(T * 1000 + 1);
  for (int dp : {1, 2, 4}) {
    auto ranks = make_ranks(src, T, B, dp);
    int64_t expect = 0;
    for (int step = 0; step < 10; ++step) {
      auto ids = step_all(ranks, T);
      ASSERT_EQ(static_cast<int64_t>(ids.size()), dp * B);
      for (int64_t id : ids) EXPECT_EQ(id, expect++) << "dp=" << dp << " step=" << step;
    }
    EXPECT_EQ(ranks[0].state().at("sequences_consumed"), 10 * dp * B);
    for (auto& r : ranks) EXPECT_EQ(r.state(), ranks[0].state());
  }
}

TEST(DataLoader, WrapsAroundWithEpoch) {
  const int64_t T = 4;
  auto src = std::make_shared<CountingSource>(T * 10 + 3);  // 10 whole sequences (the tail is dropped)
  DataLoader l0(src, T, 3, 0, 2), l1(src, T, 3, 1, 2);
  EXPECT_EQ(l0.sequences_per_epoch(), 10);
  std::vector<int64_t> seen;
  for (int step = 0; step < 5; ++step) {
    for (auto* l : {&l0, &l1}) {
      auto ids = sequence_ids(l->next(), T);
      seen.insert(seen.end(), ids.begin(), ids.end());
    }
  }
  ASSERT_EQ(seen.size(), 30u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<int64_t>(i % 10));
  EXPECT_EQ(l0.state().at("epoch"), 3);
  EXPECT_EQ(l0.state().at("sequences_consumed"), 0);
}

TEST(DataLoader, ResumesExactlyOnAnyDpSize) {
  const int64_t T = 5, B = 2;
  auto src = std::make_shared<CountingSource>(T * 37 + 1);  // 37 sequences: steps straddle epochs
  // The uninterrupted stream of a single rank with batch 1: every sequence in order.
  for (int before : {1, 2, 4}) {
    for (int after : {1, 2, 4}) {
      auto ranks = make_ranks(src, T, B, before);
      std::vector<int64_t> seen;
      for (int s = 0; s < 7; ++s) {
        auto ids = step_all(ranks, T);
        seen.insert(seen.end(), ids.begin(), ids.end());
      }
      auto state = ranks[before - 1].state();
      auto resumed = make_ranks(src, T, B, after);
      for (auto& r : resumed) r.load_state(state);
      for (int s = 0; s < 9; ++s) {
        auto ids = step_all(resumed, T);
        seen.insert(seen.end(), ids.begin(), ids.end());
      }
      for (size_t i = 0; i < seen.size(); ++i)
        ASSERT_EQ(seen[i], static_cast<int64_t>(i % 37)) << "before=" << before << " after=" << after << " i=" << i;
      const int64_t total = 7 * before * B + 9 * after * B;
      EXPECT_EQ(resumed[0].state().at("epoch"), total / 37);
      EXPECT_EQ(resumed[0].state().at("sequences_consumed"), total % 37);
    }
  }
}

TEST(DataLoader, RealSourceRowsMatchTheTokens) {
  DataConfig c;
  auto src = open_tokens(c, "train", 64);
  const int64_t T = 16;
  DataLoader l(src, T, 4, 1, 2);  // rank 1 of 2: sequences 4..7
  auto b = l.next();
  EXPECT_EQ(b.idx.sizes(), (Shape{4, T}));
  EXPECT_EQ(b.targets.sizes(), (Shape{4, T}));
  auto x = b.idx.to_vector<int64_t>(), y = b.targets.to_vector<int64_t>();
  std::vector<int64_t> want(4 * T + 1);
  src->read(4 * T, 4 * T + 1, want.data());
  for (int64_t i = 0; i < 4 * T; ++i) {
    EXPECT_EQ(x[i], want[i]);
    EXPECT_EQ(y[i], want[i + 1]);
  }
}

TEST(DataLoader, RejectsBadArgumentsAndForeignState) {
  auto src = std::make_shared<CountingSource>(10);
  EXPECT_THROW(DataLoader(src, 10, 1, 0, 1), InvalidArgument);  // 10 tokens < seq_len + 1
  EXPECT_THROW(DataLoader(src, 4, 1, 2, 2), InvalidArgument);   // rank outside dp_size
  EXPECT_THROW(DataLoader(src, 4, 0, 0, 1), InvalidArgument);
  DataLoader l(src, 4, 1, 0, 1);  // 2 sequences per epoch
  EXPECT_THROW(l.load_state({{"epoch", 0}}), InvalidArgument);
  auto msg = error_of<InvalidArgument>([&] { l.load_state({{"sequences_consumed", 5}, {"epoch", 0}}); });
  EXPECT_NE(msg.find("changed"), std::string::npos) << msg;
}

// ----------------------------------------------------------------------------- evaluation set

TEST(EvalPart, PartsCoverTheSetOnceWithSizesWithinOne) {
  for (int64_t count : {0, 1, 7, 33, 64, 1000}) {
    for (int dp : {1, 2, 3, 4, 8, 16}) {
      int64_t next = 0, smallest = count, largest = 0;
      for (int r = 0; r < dp; ++r) {
        const EvalPart p = eval_part(count, r, dp);
        EXPECT_EQ(p.begin, next) << "count=" << count << " dp=" << dp << " rank=" << r;
        EXPECT_GE(p.size(), 0);
        next = p.end;
        smallest = std::min(smallest, p.size());
        largest = std::max(largest, p.size());
      }
      EXPECT_EQ(next, count) << "count=" << count << " dp=" << dp;
      EXPECT_LE(largest - smallest, 1) << "count=" << count << " dp=" << dp;
      EXPECT_EQ(largest, (count + dp - 1) / dp) << "count=" << count << " dp=" << dp;
    }
  }
  EXPECT_THROW(eval_part(-1, 0, 1), InvalidArgument);
  EXPECT_THROW(eval_part(8, 2, 2), InvalidArgument);
  EXPECT_THROW(eval_part(8, 0, 0), InvalidArgument);
}

TEST(EvalPart, ReadSequencesGivesTheLoadersWindows) {
  const int64_t T = 6;
  auto src = std::make_shared<CountingSource>(T * 20 + 1);  // 20 whole sequences
  // The windows of a one-rank loader with micro-batch 20, in order.
  DataLoader l(src, T, 20, 0, 1);
  const Batch all = l.next();
  const Batch part = read_sequences(*src, T, 5, 12);
  EXPECT_EQ(part.idx.sizes(), (Shape{7, T}));
  EXPECT_EQ(sequence_ids(part, T), (std::vector<int64_t>{5, 6, 7, 8, 9, 10, 11}));
  auto x = all.idx.to_vector<int64_t>(), y = all.targets.to_vector<int64_t>();
  auto px = part.idx.to_vector<int64_t>(), py = part.targets.to_vector<int64_t>();
  for (int64_t i = 0; i < 7 * T; ++i) {
    EXPECT_EQ(px[i], x[5 * T + i]);
    EXPECT_EQ(py[i], y[5 * T + i]);
  }
  EXPECT_EQ(sequence_ids(read_sequences(*src, T, 19, 20), T), (std::vector<int64_t>{19}));
  auto msg = error_of<InvalidArgument>([&] { read_sequences(*src, T, 15, 21); });
  EXPECT_NE(msg.find("holds 20 sequences"), std::string::npos) << msg;
  EXPECT_THROW(read_sequences(*src, T, 3, 3), InvalidArgument);
  EXPECT_THROW(read_sequences(*src, T, -1, 2), InvalidArgument);
}
