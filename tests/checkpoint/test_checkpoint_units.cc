// Single-process pieces of the checkpoint layer: CRC32C values, the mapping of local ranges onto global boxes and the
// overlap of two layouts' pieces (against element-by-element enumeration), and data positions across dp sizes.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "checkpoint/checkpoint.h"
#include "checkpoint/crc32c.h"
#include "checkpoint/layout.h"

namespace loom::checkpoint {
namespace {

using detail::BoxPiece;
using detail::LocalTensor;

TEST(CheckpointCrc32c, KnownValuesAndContinuation) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the CRC-32C check value
  EXPECT_EQ(crc32c("", 0), 0u);
  std::string text(10000, '\0');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i * 7 + 3);
  const uint32_t whole = crc32c(text.data(), text.size());
  for (size_t cut : {1u, 7u, 8u, 4093u, 9999u})
    EXPECT_EQ(crc32c(text.data() + cut, text.size() - cut, crc32c(text.data(), cut)), whole) << cut;
  text[5000] ^= 1;
  EXPECT_NE(crc32c(text.data(), text.size()), whole);
}

// Global row-major indices of the elements of box piece p.
std::vector<int64_t> elements_of(const Shape& global, const std::vector<int64_t>& off, const std::vector<int64_t>& size,
                                 int64_t b, int64_t e) {
  std::vector<int64_t> out;
  for (int64_t f = b; f < e; ++f) {
    int64_t rem = f, g = 0, stride = 1;
    std::vector<int64_t> idx(size.size());
    for (size_t d = size.size(); d-- > 0;) {
      idx[d] = rem % size[d];
      rem /= size[d];
    }
    for (size_t d = size.size(); d-- > 0;) {
      g += (idx[d] + off[d]) * stride;
      stride *= global[d];
    }
    out.push_back(g);
  }
  return out;
}

TEST(CheckpointLayout, TpSegmentsMapLocalRangesToGlobalBoxes) {
  // A fused q|k|v weight (3 parts of 4 rows, 2 columns) split over 2 tp ranks: rank 1 holds rows 2-3, 6-7, 10-11.
  LocalTensor t;
  t.name = "w";
  t.global_shape = {12, 2};
  t.local_shape = {6, 2};
  t.tp = parallel::TpPlacement{0, {12, 2}, {{0, 2, 2}, {2, 6, 2}, {4, 10, 2}}};
  t.flat_begin = 3;  // an FSDP shard of the local tensor: local elements [3, 9)
  t.flat_end = 9;
  auto boxes = detail::to_boxes(t, 0, 6);
  ASSERT_EQ(boxes.size(), 3u);
  std::vector<int64_t> got;
  for (const auto& b : boxes)
    for (int64_t g : elements_of(t.global_shape, b.box_offset, b.box_size, b.begin, b.end)) got.push_back(g);
  // local rows 1..4 partly: local flat 3..8 = (1,1) (2,0) (2,1) (3,0) (3,1) (4,0) -> global rows 3, 6, 6, 7, 7, 10
  EXPECT_EQ(got, (std::vector<int64_t>{7, 12, 13, 14, 15, 20}));
  EXPECT_EQ(boxes[1].local_offset, 1);
  // A column split (dim 1) with one segment: the whole local tensor is one box.
  LocalTensor c;
  c.global_shape = {3, 8};
  c.local_shape = {3, 4};
  c.tp = parallel::TpPlacement{1, {3, 8}, {{0, 4, 4}}};
  c.flat_end = 12;
  auto cb = detail::to_boxes(c, 0, 12);
  ASSERT_EQ(cb.size(), 1u);
  EXPECT_EQ(elements_of(c.global_shape, cb[0].box_offset, cb[0].box_size, 0, 5),
            (std::vector<int64_t>{4, 5, 6, 7, 12}));
}

TEST(CheckpointLayout, OverlapRunsMatchElementByElementIntersection) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 400; ++trial) {
    const size_t nd = 1 + trial % 3;
    Shape global(nd);
    for (auto& g : global) g = 1 + rng() % 6;
    auto random_piece = [&](std::vector<int64_t>& off, std::vector<int64_t>& size, int64_t& b, int64_t& e) {
      off.resize(nd);
      size.resize(nd);
      for (size_t d = 0; d < nd; ++d) {
        off[d] = rng() % global[d];
        size[d] = 1 + rng() % (global[d] - off[d]);
      }
      const int64_t n = shape_numel(size);
      b = rng() % n;
      e = b + 1 + rng() % (n - b);
    };
    BoxPiece w;
    random_piece(w.box_offset, w.box_size, w.begin, w.end);
    std::vector<int64_t> so, ss;
    int64_t sb = 0, se = 0;
    random_piece(so, ss, sb, se);
    const auto want_el = elements_of(global, w.box_offset, w.box_size, w.begin, w.end);
    const auto saved_el = elements_of(global, so, ss, sb, se);
    std::map<int64_t, std::pair<int64_t, int64_t>> expected;  // global -> (src, dst)
    for (size_t i = 0; i < want_el.size(); ++i)
      for (size_t j = 0; j < saved_el.size(); ++j)
        if (want_el[i] == saved_el[j]) expected[want_el[i]] = {static_cast<int64_t>(j), static_cast<int64_t>(i)};
    std::set<std::pair<int64_t, int64_t>> got;
    for (const auto& r : detail::overlap_runs(w, so, ss, sb, se))
      for (int64_t k = 0; k < r.len; ++k) ASSERT_TRUE(got.insert({r.src + k, r.dst + k}).second) << "trial " << trial;
    std::set<std::pair<int64_t, int64_t>> exp;
    for (const auto& [g, sd] : expected) exp.insert(sd);
    ASSERT_EQ(got, exp) << "trial " << trial;
  }
}

TEST(CheckpointDataPosition, GlobalKeysCarryOverPerRankKeysNeedTheSameDpSize) {
  TrainState s;
  s.saved_dp_size = 2;
  s.data_position = {{"samples_seen", 96}, {"dp0/offset", 10}, {"dp1/offset", 11}};
  auto p = data_position_for(s, 2, 1);
  EXPECT_EQ(p.at("samples_seen"), 96);
  EXPECT_EQ(p.at("offset"), 11);
  EXPECT_EQ(p.size(), 2u);
  try {
    data_position_for(s, 4, 0);
    FAIL() << "per-rank positions mapped onto another dp size";
  } catch (const InvalidArgument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("dp0/offset"), std::string::npos) << m;
    EXPECT_NE(m.find("saved with 2 data-parallel ranks; this run has 4"), std::string::npos) << m;
  }
  TrainState g;
  g.saved_dp_size = 2;
  g.data_position = {{"samples_seen", 96}};
  EXPECT_EQ(data_position_for(g, 4, 3).at("samples_seen"), 96);
}

}  // namespace
}  // namespace loom::checkpoint
