// Checkpoint JSON on nlohmann-json: insertion order, compact layout, errors that name the file and key, and a
// checkpoint written by the hand-written JSON code that came before (main at d199872) still reads the same.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/json.h"

using loom::checkpoint::dump_json;
using loom::checkpoint::Json;
using loom::checkpoint::json_at;
using loom::checkpoint::json_find;
using loom::checkpoint::parse_json;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string kOldCheckpoint = std::string(LOOM_SOURCE_DIR) + "/tests/checkpoint/data/main_d199872/step_00000004";

}  // namespace

TEST(Json, RoundTripKeepsOrderAndValues) {
  Json obj = Json::object();
  obj["zeta"] = 1.5;
  obj["alpha"] = "a \"quoted\"\nline";
  obj["list"] = Json::array({3, true, nullptr});
  const std::string text = dump_json(obj);
  EXPECT_EQ(text, "{\"zeta\":1.5,\"alpha\":\"a \\\"quoted\\\"\\nline\",\"list\":[3,true,null]}");
  Json back = parse_json(text);
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back.begin().key(), "zeta");
  EXPECT_DOUBLE_EQ(json_at(back, "zeta").get<double>(), 1.5);
  EXPECT_EQ(json_at(back, "alpha").get<std::string>(), "a \"quoted\"\nline");
  EXPECT_EQ(json_at(back, "list").size(), 3u);
  EXPECT_TRUE(json_at(back, "list")[1].get<bool>());
}

TEST(Json, LargeIntegersPrintExactly) {
  EXPECT_EQ(dump_json(Json(int64_t{1} << 40)), "1099511627776");
  EXPECT_EQ(dump_json(Json(uint32_t{4294967295u})), "4294967295");
}

TEST(Json, InvalidUtf8InAStringDoesNotFailTheWrite) {
  Json j = Json::object();
  j["config"] = std::string("latin-1 caf\xe9\n");
  const std::string text = dump_json(j);
  EXPECT_EQ(json_at(parse_json(text), "config").get<std::string>(), "latin-1 caf\xef\xbf\xbd\n");
}

TEST(Json, MalformedInputNamesTheContextAndOffset) {
  try {
    parse_json("{\"a\": [1, 2,, 3]}", "ckpt/metadata.json");
    FAIL() << "expected a parse error";
  } catch (const loom::InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("ckpt/metadata.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("byte 13"), std::string::npos) << msg;
  }
  EXPECT_THROW(parse_json("{\"a\": 1} trailing"), loom::InvalidArgument);
  EXPECT_THROW(parse_json("\"unterminated"), loom::InvalidArgument);
}

TEST(Json, MissingKeyNamesContextAndKey) {
  Json obj = parse_json("{\"x\": 1}");
  EXPECT_EQ(json_find(obj, "y"), nullptr);
  ASSERT_NE(json_find(obj, "x"), nullptr);
  try {
    json_at(obj, "y", "meta.json");
    FAIL();
  } catch (const loom::InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("meta.json"), std::string::npos);
    EXPECT_NE(msg.find("'y'"), std::string::npos);
  }
  EXPECT_THROW(json_at(Json::array(), "y", "meta.json"), loom::InvalidArgument);
}

// metadata.json of a checkpoint that the previous, hand-written JSON code wrote (pretrain of main d199872, a 1-layer
// GPT-2 after 4 steps): it parses, read_metadata finds every tensor with its pieces and checksums, each tensor reads
// back with its checksums verified, and a rewrite by the new writer parses to the same document.
TEST(Json, CheckpointWrittenByTheOldJsonCodeLoads) {
  const std::string text = slurp(kOldCheckpoint + "/metadata.json");
  ASSERT_FALSE(text.empty()) << kOldCheckpoint;
  // Same document after a rewrite (doubles now print shortest round-trip: 0.9, not 0.90000000000000002).
  EXPECT_EQ(parse_json(dump_json(parse_json(text))), parse_json(text));
  const loom::checkpoint::Metadata md = loom::checkpoint::read_metadata(kOldCheckpoint);
  EXPECT_EQ(md.step, 4);
  EXPECT_EQ(md.world_size, 1);
  ASSERT_FALSE(md.tensors.empty());
  bool saw_wte = false;
  for (const auto& ti : md.tensors) {
    ASSERT_FALSE(ti.pieces.empty()) << ti.name;
    if (ti.name == "model/transformer.wte.weight") {
      saw_wte = true;
      EXPECT_EQ(ti.shape, (std::vector<int64_t>{64, 16}));
    }
    const loom::Tensor t = loom::checkpoint::read_tensor(md, ti.name);
    EXPECT_EQ(t.numel(), std::accumulate(ti.shape.begin(), ti.shape.end(), int64_t{1}, std::multiplies<>()));
  }
  EXPECT_TRUE(saw_wte);
  EXPECT_EQ(json_at(md.json, "layout").get<std::string>(), "single");
  EXPECT_EQ(json_at(json_at(md.json, "data_position"), "sequences_consumed").get<std::string>(), "16");
}
