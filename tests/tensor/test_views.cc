// Views share storage and never copy; reshape copies only when it must;
// copy_/contiguous handle strided and broadcast operands.
#include <gtest/gtest.h>

#include <numeric>

#include "tensor/ops.h"

using namespace loom;
namespace O = loom::ops;

namespace {
Tensor iota(const Shape& s, DType dt = DType::f32) {
  return O::reshape(O::arange(0.0, static_cast<double>(shape_numel(s)), 1.0, dt), s);
}
}  // namespace

TEST(Views, WriteThroughViewIsSeenInBase) {
  Tensor base = O::zeros({3, 4});
  Tensor row = O::select(base, 0, 1);
  Tensor col = O::narrow(O::transpose(base, 0, 1), 0, 2, 1);  // (1, 3): column 2
  O::fill_(row, 5.0);
  O::fill_(col, 7.0);
  auto v = base.to_vector<float>();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) {
      float want = j == 2 ? 7.f : (i == 1 ? 5.f : 0.f);
      EXPECT_EQ(v[i * 4 + j], want) << i << "," << j;
    }
  EXPECT_EQ(row.storage().get(), base.storage().get());
}

TEST(Views, EveryViewOpSharesStorage) {
  Tensor t = iota({2, 3, 4});
  const Storage* s = t.storage().get();
  std::vector<Tensor> vs = {O::view(t, {6, 4}),
                            O::reshape(t, {4, -1}),
                            O::permute(t, {2, 0, 1}),
                            O::transpose(t, 0, 2),
                            O::narrow(t, 2, 1, 2),
                            O::slice(t, 1, 0, 3, 2),
                            O::select(t, 1, -1),
                            O::expand(O::select(t, 0, 0), {5, 3, 4}),
                            O::unsqueeze(t, 1),
                            O::squeeze(O::unsqueeze(t, 0), 0),
                            O::flatten(t, 1),
                            O::split(t, 2, 2)[1],
                            O::split_with_sizes(t, {1, 2}, 1)[1]};
  for (const auto& v : vs) EXPECT_EQ(v.storage().get(), s);
}

TEST(Views, PermuteAndSliceIndexCorrectly) {
  Tensor t = iota({2, 3, 4});
  Tensor p = O::contiguous(O::permute(t, {2, 0, 1}));  // (4, 2, 3)
  auto v = p.to_vector<float>();
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) EXPECT_EQ(v[(k * 2 + i) * 3 + j], i * 12 + j * 4 + k);
  Tensor s = O::contiguous(O::slice(t, 2, 1, 4, 2));  // cols 1, 3
  EXPECT_EQ(s.sizes(), (Shape{2, 3, 2}));
  auto sv = s.to_vector<float>();
  EXPECT_EQ(sv[0], 1);
  EXPECT_EQ(sv[1], 3);
  EXPECT_EQ(sv[2], 5);
  Tensor neg = O::slice(t, 2, -2, 4);
  EXPECT_EQ(neg.size(2), 2);
  EXPECT_EQ(O::contiguous(neg).to_vector<float>()[0], 2);
}

TEST(Views, ViewOfNonContiguousThrowsButReshapeCopies) {
  Tensor t = iota({3, 4});
  Tensor tt = O::transpose(t, 0, 1);
  try {
    O::view(tt, {12});
    FAIL() << "view of a transposed tensor as 1-D should throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("[4, 3]"), std::string::npos) << e.what();
  }
  Tensor r = O::reshape(tt, {12});
  EXPECT_NE(r.storage().get(), t.storage().get());
  auto v = r.to_vector<float>();
  EXPECT_EQ(v[1], 4);  // tt[0][1] = t[1][0]
  // Splitting a dim of a transposed tensor is still a view.
  Tensor split_dim = O::view(tt, {2, 2, 3});
  EXPECT_EQ(split_dim.storage().get(), t.storage().get());
}

TEST(Views, ExpandUsesZeroStrideAndRejectsBadSizes) {
  Tensor t = iota({3, 1});
  Tensor e = O::expand(t, {2, 3, 4});
  EXPECT_EQ(e.strides()[0], 0);
  EXPECT_EQ(e.strides()[2], 0);
  auto v = O::contiguous(e).to_vector<float>();
  EXPECT_EQ(v[1 * 12 + 2 * 4 + 3], 2);
  EXPECT_THROW(O::expand(t, {2, 4}), InvalidArgument);
}

TEST(Views, BroadcastShapesFollowsNumpyAndNamesBothShapes) {
  EXPECT_EQ(O::broadcast_shapes({3, 1, 5}, {4, 1}, "t"), (Shape{3, 4, 5}));
  EXPECT_EQ(O::broadcast_shapes({}, {2, 2}, "t"), (Shape{2, 2}));
  try {
    O::broadcast_shapes({2, 3}, {4, 3}, "myop");
    FAIL();
  } catch (const InvalidArgument& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("myop"), std::string::npos);
    EXPECT_NE(m.find("[2, 3]"), std::string::npos);
    EXPECT_NE(m.find("[4, 3]"), std::string::npos);
  }
}

TEST(Views, SplitSizesAndErrors) {
  Tensor t = iota({7, 2});
  auto parts = O::split(t, 3, 0);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].size(0), 1);
  EXPECT_EQ(parts[2].storage_offset(), 12);
  EXPECT_THROW(O::split_with_sizes(t, {3, 3}, 0), InvalidArgument);
  EXPECT_THROW(O::select(t, 0, 7), InvalidArgument);
  EXPECT_THROW(O::narrow(t, 1, 1, 2), InvalidArgument);
  EXPECT_THROW(O::permute(t, {0, 0}), InvalidArgument);
}

TEST(Views, ViewsShareVersionCounter) {
  Tensor t = O::zeros({4});
  Tensor v = O::narrow(t, 0, 1, 2);
  int64_t before = t.version();
  O::fill_(v, 1.0);
  EXPECT_GT(t.version(), before);
}

TEST(Copy, BroadcastsConvertsAndWritesStridedDst) {
  Tensor dst = O::zeros({4, 3}, DType::f64);
  Tensor dst_t = O::transpose(dst, 0, 1);  // (3, 4) strided view
  Tensor src = from_vector<int32_t>({10, 20, 30}, {3, 1});
  O::copy_(dst_t, src);
  auto v = dst.to_vector<double>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(v[i * 3 + j], 10.0 * (j + 1));
  EXPECT_THROW(O::copy_(dst, O::zeros({2, 3})), InvalidArgument);
}

TEST(Copy, ContiguousOfLargePermutedMatchesIndexing) {
  Tensor t = iota({64, 33, 40});
  Tensor p = O::contiguous(O::permute(t, {1, 2, 0}));
  auto v = p.to_vector<float>();
  for (int64_t a = 0; a < 33; a += 7)
    for (int64_t b = 0; b < 40; b += 9)
      for (int64_t c = 0; c < 64; c += 5) EXPECT_EQ(v[(a * 40 + b) * 64 + c], c * 33 * 40 + a * 40 + b);
  EXPECT_TRUE(O::contiguous(t).is_same(t));
}

TEST(Copy, ToCudaThrowsUnsupportedNamingDevice) {
  if (cuda_is_available()) GTEST_SKIP() << "CUDA is available; this checks the CPU-only build";
  try {
    O::to(O::zeros({2}), Device("cuda:0"));
    FAIL();
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos);
  }
  Tensor t = O::zeros({2});
  EXPECT_TRUE(O::to(t, kCPU).is_same(t));
  EXPECT_TRUE(O::to(t, DType::f32).is_same(t));
}
