// data/dataset.h: per-epoch order and sharding, batching, the IDX and CSV readers (plain and gzipped, real digits data
// from scripts/digits_to_idx.py, malformed files).
#include "data/dataset.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "tensor/error.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::data;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::path(LOOM_BINARY_DIR) / "tests_tmp" / ("data_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_bytes(const fs::path& p, const std::string& bytes, bool gz = false) {
  if (gz) {
    gzFile f = gzopen(p.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(p, std::ios::binary) << bytes;
  }
}

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

std::string idx_u8(const std::vector<uint32_t>& shape, const std::vector<uint8_t>& data) {
  std::string s = {0, 0, 8, static_cast<char>(shape.size())};
  for (auto d : shape) s += be32(d);
  s.append(reinterpret_cast<const char*>(data.data()), data.size());
  return s;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Dataset, ShuffleIsSeededAndDiffersPerEpoch) {
  auto a = shuffled_indices(100, 7, 0), b = shuffled_indices(100, 7, 0), c = shuffled_indices(100, 7, 1);
  auto d = shuffled_indices(100, 8, 0);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 100; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_NE(a, sorted) << "a shuffle of 100 left the order unchanged";
}

TEST(Dataset, ShardsCoverEachGlobalBatchWithoutOverlap) {
  const int64_t n = 103;
  for (int world : {1, 2, 3, 4}) {
    EpochPlan plan;
    plan.global_batch = 16;
    plan.seed = 3;
    plan.world_size = world;
    std::vector<std::vector<Shard>> per_rank;
    for (int r = 0; r < world; ++r) {
      plan.rank = r;
      per_rank.push_back(epoch_shards(n, 2, plan, /*for_training=*/false));
    }
    const auto order = shuffled_indices(n, 3, 2);
    const size_t nb = per_rank[0].size();
    EXPECT_EQ(nb, 7u);  // ceil(103 / 16)
    std::set<int64_t> all;
    for (size_t b = 0; b < nb; ++b) {
      std::vector<int64_t> batch;
      for (int r = 0; r < world; ++r) {
        ASSERT_EQ(per_rank[static_cast<size_t>(r)].size(), nb) << "rank " << r << " has another number of batches";
        const Shard& s = per_rank[static_cast<size_t>(r)][b];
        EXPECT_EQ(s.row_begin, static_cast<int64_t>(batch.size()));
        batch.insert(batch.end(), s.indices.begin(), s.indices.end());
      }
      // The ranks' parts, in rank order, are exactly the global batch of the epoch's order.
      std::vector<int64_t> expect(order.begin() + static_cast<int64_t>(b) * 16,
                                  order.begin() + std::min<int64_t>(n, static_cast<int64_t>(b + 1) * 16));
      EXPECT_EQ(batch, expect) << "world " << world << " batch " << b;
      for (auto i : batch) EXPECT_TRUE(all.insert(i).second) << "row " << i << " twice";
    }
    EXPECT_EQ(all.size(), static_cast<size_t>(n)) << "world " << world;
  }
}

TEST(Dataset, TrainingDropsBatchesSmallerThanTheWorld) {
  EpochPlan plan;
  plan.global_batch = 8;
  plan.world_size = 4;
  plan.shuffle = false;
  EXPECT_EQ(epoch_shards(19, 0, plan).size(), 2u);  // 8, 8, then 3 < 4 ranks: dropped
  EXPECT_EQ(epoch_shards(20, 0, plan).size(), 3u);  // 8, 8, 4
  plan.drop_last = true;
  EXPECT_EQ(epoch_shards(20, 0, plan).size(), 2u);
  EXPECT_EQ(epoch_shards(20, 0, plan, false).size(), 3u);  // evaluation keeps every row
  plan.global_batch = 2;
  EXPECT_NE(error_of([&] { epoch_shards(20, 0, plan); }).find("smaller than the 4 ranks"), std::string::npos);
}

TEST(Dataset, GatherStacksRows) {
  Tensor x = from_vector<float>({0, 1, 2, 3, 4, 5}, {3, 2});
  Tensor y = from_vector<int32_t>({7, 8, 9}, {3});
  InMemoryDataset ds(x, y);
  Batch b = ds.gather({2, 0});
  EXPECT_EQ(b.x.sizes(), (Shape{2, 2}));
  EXPECT_EQ(b.x.to_vector<float>(), (std::vector<float>{4, 5, 0, 1}));
  EXPECT_EQ(b.y.dtype(), DType::i64);
  EXPECT_EQ(b.y.to_vector<int64_t>(), (std::vector<int64_t>{9, 7}));
  EXPECT_NE(error_of([&] { ds.gather({3}); }).find("index 3 outside [0, 3)"), std::string::npos);
  EXPECT_NE(error_of([&] {
              InMemoryDataset(x, from_vector<int64_t>({1, 2}, {2}));
            }).find("3 feature rows but 2"),
            std::string::npos);
}

TEST(DatasetIdx, ReadsPlainAndGzipped) {
  auto dir = temp_dir("idx");
  std::vector<uint8_t> pix(2 * 3 * 4);
  for (size_t i = 0; i < pix.size(); ++i) pix[i] = static_cast<uint8_t>(i * 10);
  for (bool gz : {false, true}) {
    const std::string sfx = gz ? ".gz" : "";
    write_bytes(dir / ("img-idx3-ubyte" + sfx), idx_u8({2, 3, 4}, pix), gz);
    write_bytes(dir / ("lab-idx1-ubyte" + sfx), idx_u8({2}, {5, 9}), gz);
    Tensor t = read_idx((dir / ("img-idx3-ubyte" + sfx)).string());
    EXPECT_EQ(t.sizes(), (Shape{2, 3, 4}));
    EXPECT_EQ(t.to_vector<uint8_t>(), pix);
    auto ds = read_mnist((dir / ("img-idx3-ubyte" + sfx)).string(), (dir / ("lab-idx1-ubyte" + sfx)).string());
    EXPECT_EQ(ds.features().sizes(), (Shape{2, 1, 3, 4}));
    EXPECT_FLOAT_EQ(ds.features().to_vector<float>()[5], 50.0f / 255.0f);
    EXPECT_EQ(ds.labels().to_vector<int64_t>(), (std::vector<int64_t>{5, 9}));
  }
}

TEST(DatasetIdx, BadFilesNameFileAndOffset) {
  auto dir = temp_dir("idx_bad");
  auto err = [&](const std::string& name, const std::string& bytes, bool gz = false) {
    write_bytes(dir / name, bytes, gz);
    return error_of([&] { read_idx((dir / name).string()); });
  };
  std::string good = idx_u8({2, 2}, {1, 2, 3, 4});
  std::string e = err("truncated", good.substr(0, good.size() - 1));
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  EXPECT_NE(e.find("/truncated"), std::string::npos) << e;
  EXPECT_NE(e.find("byte offset 15"), std::string::npos) << e;
  e = err("magic", "\x01\x02\x08\x01" + be32(1) + "x");
  EXPECT_NE(e.find("byte offset 0"), std::string::npos) << e;
  EXPECT_NE(e.find("magic"), std::string::npos) << e;
  e = err("type", std::string("\0\0\x07\x01", 4) + be32(1) + "x");
  EXPECT_NE(e.find("unknown data type code 0x07"), std::string::npos) << e;
  e = err("trailing", good + "zz");
  EXPECT_NE(e.find("2 trailing bytes"), std::string::npos) << e;
  e = err("short_header", std::string("\0\0\x08\x03", 4) + be32(1));
  EXPECT_NE(e.find("header needs 16 bytes"), std::string::npos) << e;
  // A gzip stream cut short.
  write_bytes(dir / "full.gz", good + std::string(5000, 'a'), true);
  std::ifstream in(dir / "full.gz", std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  e = err("cut.gz", gz.substr(0, gz.size() / 2));
  EXPECT_NE(e.find("cut.gz"), std::string::npos) << e;
  EXPECT_NE(e.find("gzip"), std::string::npos) << e;
  e = error_of([&] { read_idx((dir / "missing").string()); });
  EXPECT_NE(e.find("missing: cannot open"), std::string::npos) << e;
  // Images and labels of different counts.
  write_bytes(dir / "i", idx_u8({2, 1, 1}, {1, 2}));
  write_bytes(dir / "l", idx_u8({3}, {1, 2, 3}));
  e = error_of([&] { read_mnist((dir / "i").string(), (dir / "l").string()); });
  EXPECT_NE(e.find("holds 2 images but"), std::string::npos) << e;
}

TEST(DatasetCsv, ReadsHeaderLabelColumnAndGzip) {
  auto dir = temp_dir("csv");
  const std::string text = "a,b,label\n1.5,2,0\n\n-3,4e1,2\n";
  write_bytes(dir / "x.csv", text);
  write_bytes(dir / "x.csv.gz", text, true);
  for (const char* name : {"x.csv", "x.csv.gz"}) {
    auto ds = read_csv((dir / name).string());
    EXPECT_EQ(ds.features().sizes(), (Shape{2, 2}));
    EXPECT_EQ(ds.features().to_vector<float>(), (std::vector<float>{1.5f, 2, -3, 40}));
    EXPECT_EQ(ds.labels().to_vector<int64_t>(), (std::vector<int64_t>{0, 2}));
  }
  write_bytes(dir / "first.csv", "7;1;2\n8;3;4\n");
  CsvOptions o;
  o.delimiter = ';';
  o.label_column = 0;
  auto ds = read_csv((dir / "first.csv").string(), o);
  EXPECT_EQ(ds.labels().to_vector<int64_t>(), (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(ds.features().to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
}

TEST(DatasetCsv, BadFilesNameLineAndColumn) {
  auto dir = temp_dir("csv_bad");
  write_bytes(dir / "width.csv", "1,2,0\n3,4\n");
  std::string e = error_of([&] { read_csv((dir / "width.csv").string()); });
  EXPECT_NE(e.find("width.csv:2: 2 columns, expected 3"), std::string::npos) << e;
  write_bytes(dir / "num.csv", "1,2,0\n3,x4,1\n");
  e = error_of([&] { read_csv((dir / "num.csv").string()); });
  EXPECT_NE(e.find("num.csv:2: column 2 ('x4') is not a number"), std::string::npos) << e;
  write_bytes(dir / "label.csv", "1,2,0.5\n");
  e = error_of([&] { read_csv((dir / "label.csv").string()); });
  EXPECT_NE(e.find("label.csv:1: the label in column 3"), std::string::npos) << e;
  write_bytes(dir / "empty.csv", "a,b\n");
  e = error_of([&] { read_csv((dir / "empty.csv").string()); });
  EXPECT_NE(e.find("no data rows"), std::string::npos) << e;
}

// The real digits set, converted by scripts/digits_to_idx.py (plain and gzipped), read back, and checked against the
// same CSV python3-sklearn ships, read by read_csv.
TEST(DatasetIdx, DigitsFromTheProjectScript) {
  auto dir = temp_dir("digits");
  const std::string py = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  ASSERT_TRUE(fs::exists(py)) << py << " is missing: run scripts/setup.sh";
  const std::string script = std::string(LOOM_SOURCE_DIR) + "/scripts/digits_to_idx.py";
  ASSERT_EQ(std::system((py + " " + script + " " + dir.string() + " > /dev/null").c_str()), 0);
  ASSERT_EQ(std::system((py + " " + script + " " + dir.string() + " --gzip > /dev/null").c_str()), 0);
  auto train = read_mnist((dir / "train-images-idx3-ubyte").string(), (dir / "train-labels-idx1-ubyte").string());
  auto test = read_mnist((dir / "t10k-images-idx3-ubyte.gz").string(), (dir / "t10k-labels-idx1-ubyte.gz").string());
  EXPECT_EQ(train.features().sizes(), (Shape{1437, 1, 28, 28}));
  EXPECT_EQ(test.features().sizes(), (Shape{360, 1, 28, 28}));
  auto train_gz =
      read_mnist((dir / "train-images-idx3-ubyte.gz").string(), (dir / "train-labels-idx1-ubyte.gz").string());
  EXPECT_EQ(train_gz.features().to_vector<float>(), train.features().to_vector<float>());
  // Labels: sample i of the CSV is test sample i/5 when i % 5 == 0, else the next training sample.
  std::string csv_path;
  {
    FILE* p =
        popen((py + " -c 'import sklearn.datasets,os;print(os.path.dirname(sklearn.datasets.__file__))'").c_str(), "r");
    ASSERT_NE(p, nullptr);
    char buf[4096] = {0};
    ASSERT_NE(fgets(buf, sizeof buf, p), nullptr);
    pclose(p);
    csv_path = std::string(buf);
    csv_path.erase(csv_path.find_last_not_of("\n") + 1);
    csv_path += "/data/digits.csv.gz";
  }
  auto csv = read_csv(csv_path);
  ASSERT_EQ(csv.size(), 1797);
  auto all = csv.labels().to_vector<int64_t>();
  auto tl = train.labels().to_vector<int64_t>(), sl = test.labels().to_vector<int64_t>();
  size_t ti = 0, si = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i % 5 == 0)
      ASSERT_EQ(sl[si++], all[i]) << "sample " << i;
    else
      ASSERT_EQ(tl[ti++], all[i]) << "sample " << i;
  }
  // The pixels: the brightest 8x8 pixel (16) maps to 255 somewhere, and values stay in [0, 1].
  auto px = test.features().to_vector<float>();
  EXPECT_FLOAT_EQ(*std::max_element(px.begin(), px.end()), 1.0f);
  EXPECT_FLOAT_EQ(*std::min_element(px.begin(), px.end()), 0.0f);
}
