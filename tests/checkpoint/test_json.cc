#include <gtest/gtest.h>

#include "checkpoint/json.h"

using loom::checkpoint::Json;

TEST(Json, RoundTripKeepsOrderAndValues) {
  Json obj = Json::object();
  obj.set("zeta", Json(1.5));
  obj.set("alpha", Json("a \"quoted\"\nline"));
  Json arr = Json::array();
  arr.push(Json(3.0));
  arr.push(Json(true));
  arr.push(Json());
  obj.set("list", arr);
  Json back = Json::parse(obj.dump());
  ASSERT_EQ(back.items().size(), 3u);
  EXPECT_EQ(back.items()[0].first, "zeta");
  EXPECT_DOUBLE_EQ(back.at("zeta").as_number(), 1.5);
  EXPECT_EQ(back.at("alpha").as_string(), "a \"quoted\"\nline");
  EXPECT_EQ(back.at("list").elements().size(), 3u);
  EXPECT_TRUE(back.at("list").elements()[1].as_bool());
}

TEST(Json, LargeIntegersPrintExactly) {
  Json n(static_cast<double>(1ll << 40));
  EXPECT_EQ(n.dump(), "1099511627776");
}

TEST(Json, MalformedInputNamesTheOffset) {
  try {
    Json::parse("{\"a\": [1, 2,, 3]}");
    FAIL() << "expected a parse error";
  } catch (const loom::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("byte"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Json::parse("{\"a\": 1} trailing"), loom::InvalidArgument);
  EXPECT_THROW(Json::parse("\"unterminated"), loom::InvalidArgument);
}

TEST(Json, MissingKeyNamesContextAndKey) {
  Json obj = Json::parse("{\"x\": 1}");
  try {
    obj.at("y", "meta.json");
    FAIL();
  } catch (const loom::InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("meta.json"), std::string::npos);
    EXPECT_NE(msg.find("'y'"), std::string::npos);
  }
}
