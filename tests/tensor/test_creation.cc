// Creation and conversion: constants, arange, dtype rounding, Philox RNG
// reproducibility and moments.
#include <gtest/gtest.h>

#include <omp.h>
#include <cmath>
#include <cstring>

#include "tensor/ops.h"

using namespace loom;
namespace O = loom::ops;

TEST(Creation, ConstantsAndLikes) {
  Tensor f = O::full({2, 3}, 2.5, DType::f64);
  for (double v : f.to_vector<double>()) EXPECT_EQ(v, 2.5);
  Tensor z = O::zeros_like(f);
  EXPECT_EQ(z.dtype(), DType::f64);
  for (double v : z.to_vector<double>()) EXPECT_EQ(v, 0.0);
  for (int64_t v : O::ones({4}, DType::i64).to_vector<int64_t>()) EXPECT_EQ(v, 1);
  Tensor s = O::scalar_tensor(3.0);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item(), 3.0);
}

TEST(Creation, ArangeCountsAndSteps) {
  auto a = O::arange(5).to_vector<int64_t>();
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a[4], 4);
  auto b = O::arange(1.0, 2.0, 0.25, DType::f32).to_vector<float>();
  ASSERT_EQ(b.size(), 4u);
  EXPECT_FLOAT_EQ(b[3], 1.75f);
  auto c = O::arange(3.0, 0.0, -1.0, DType::i32).to_vector<int32_t>();
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[2], 1);
  EXPECT_THROW(O::arange(0.0, 1.0, 0.0), InvalidArgument);
}

TEST(Conversion, Bf16RoundsToNearestEven) {
  // bf16 keeps 7 mantissa bits: spacing at 1.0 is 2^-7.
  const float ulp = std::ldexp(1.0f, -7);
  std::vector<float> in = {1.0f + ulp / 2,          // tie -> even (1.0)
                           1.0f + ulp + ulp / 2,    // tie -> even (1 + 2ulp)
                           1.0f + ulp / 2 + 1e-6f,  // above tie -> up
                           -(1.0f + ulp / 4)};      // below tie -> down
  auto out = O::to(from_vector<float>(in, {4}), DType::bf16);
  auto back = O::to(out, DType::f32).to_vector<float>();
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], 1.0f + 2 * ulp);
  EXPECT_EQ(back[2], 1.0f + ulp);
  EXPECT_EQ(back[3], -1.0f);
}

TEST(Conversion, F16RoundsToNearestEvenAndSaturates) {
  const float ulp = std::ldexp(1.0f, -10);
  std::vector<float> in = {1.0f + ulp / 2, 1.0f + 3 * ulp / 2, 65520.0f, 65519.0f, std::ldexp(1.0f, -24)};
  auto back = O::to(O::to(from_vector<float>(in, {5}), DType::f16), DType::f64).to_vector<double>();
  EXPECT_EQ(back[0], 1.0);
  EXPECT_EQ(back[1], 1.0 + 2 * ulp);
  EXPECT_TRUE(std::isinf(back[2]));  // rounds past the max (65504) to inf
  EXPECT_EQ(back[3], 65504.0);
  EXPECT_EQ(back[4], std::ldexp(1.0, -24));  // smallest subnormal survives
}

TEST(Conversion, FloatToIntTruncatesAndIntToFloatIsExact) {
  auto v = O::to(from_vector<float>({1.7f, -1.7f, 3.0f}, {3}), DType::i64).to_vector<int64_t>();
  EXPECT_EQ(v[0], 1);
  EXPECT_EQ(v[1], -1);
  EXPECT_EQ(v[2], 3);
  auto d = O::to(from_vector<int64_t>({1 << 20, -7}, {2}), DType::f64).to_vector<double>();
  EXPECT_EQ(d[0], 1048576.0);
  EXPECT_EQ(d[1], -7.0);
}

TEST(Random, SameSeedSameValuesDifferentOffsetDifferentValues) {
  Generator g1(42), g2(42);
  auto a = O::randn({1000}, g1).to_vector<float>();
  auto b = O::randn({1000}, g2).to_vector<float>();
  EXPECT_EQ(a, b);
  EXPECT_EQ(g1.offset(), 250u);
  auto c = O::randn({1000}, g1).to_vector<float>();  // advanced offset
  EXPECT_NE(a, c);
  Generator g3(43);
  EXPECT_NE(a, O::randn({1000}, g3).to_vector<float>());
}

TEST(Random, ElementIUsesBlockStartPlusIOver4LaneIMod4) {
  Generator g(7);
  g.set_state(7, 10);
  auto u = O::rand({9}, g).to_vector<float>();
  for (int i = 0; i < 9; ++i) {
    uint64_t block = 10 + i / 4;
    auto w = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0, 0}, 7);
    EXPECT_EQ(u[i], uint_to_unit_float(w[i % 4])) << i;
  }
  EXPECT_EQ(g.offset(), 13u);
}

TEST(Random, IndependentOfThreadCount) {
  Generator g1(5), g2(5);
  auto a = O::randn({100003}, g1).to_vector<float>();
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  auto b = O::randn({100003}, g2).to_vector<float>();
  omp_set_num_threads(saved);
  EXPECT_EQ(a, b);
}

TEST(Random, RandAndRandnMomentsWithinBounds) {
  Generator g(123);
  const int64_t n = 200000;
  for (DType dt : {DType::f32, DType::f64}) {
    auto u = O::to(O::rand({n}, g, dt), DType::f64).to_vector<double>();
    double m = 0, v = 0;
    for (double x : u) {
      ASSERT_GE(x, 0.0);
      ASSERT_LT(x, 1.0);
      m += x;
    }
    m /= n;
    for (double x : u) v += (x - m) * (x - m);
    v /= n - 1;
    // Standard errors: mean 0.289/sqrt(n) = 6.5e-4, var ~ 1.9e-4; 5 sigma bounds.
    EXPECT_NEAR(m, 0.5, 5 * 6.5e-4);
    EXPECT_NEAR(v, 1.0 / 12, 5 * 1.9e-4);
    auto z = O::to(O::randn({n}, g, dt), DType::f64).to_vector<double>();
    m = 0, v = 0;
    for (double x : z) m += x;
    m /= n;
    for (double x : z) v += (x - m) * (x - m);
    v /= n - 1;
    EXPECT_NEAR(m, 0.0, 5 * 1.0 / std::sqrt(double(n)));
    EXPECT_NEAR(v, 1.0, 5 * std::sqrt(2.0 / n));
  }
}

TEST(Random, NormalAndUniformIntoStridedViewsAndRandintRange) {
  Generator g(9);
  Tensor t = O::zeros({100, 50});
  Tensor col = O::select(t, 1, 3);
  O::normal_(col, 10.0, 0.5, g);
  auto v = t.to_vector<float>();
  double m = 0;
  for (int i = 0; i < 100; ++i) {
    m += v[i * 50 + 3];
    EXPECT_EQ(v[i * 50 + 2], 0.f);
  }
  EXPECT_NEAR(m / 100, 10.0, 5 * 0.05);
  O::uniform_(t, -2.0, -1.0, g);
  for (float x : t.to_vector<float>()) {
    EXPECT_GE(x, -2.0f);
    EXPECT_LT(x, -1.0f);
  }
  auto r = O::randint(-3, 4, {10000}, g).to_vector<int64_t>();
  std::vector<int> hist(7, 0);
  for (int64_t x : r) {
    ASSERT_GE(x, -3);
    ASSERT_LT(x, 4);
    ++hist[x + 3];
  }
  for (int h : hist) EXPECT_GT(h, 1200);  // expected ~1429 each
}

TEST(Storage, ResizeFreesAndRefillsInPlaceForEverySharer) {
  Tensor t = ops::ones({1024});
  Tensor view = ops::slice(t, 0, 0, 16);  // shares the storage
  const int64_t before = memory_stats().allocated_bytes;
  t.storage()->resize(0);
  EXPECT_EQ(memory_stats().allocated_bytes, before - 4096);
  t.storage()->resize(4096);
  EXPECT_EQ(memory_stats().allocated_bytes, before);
  ops::fill_(t, 3.0);
  EXPECT_EQ(view.to_vector<float>()[5], 3.0f);  // the view sees the new buffer
}

TEST(Storage, FailedResizeLeavesAnEmptyStorageAndExactCounters) {
  const int64_t before = memory_stats().allocated_bytes;
  {
    Storage s(4096, kCPU);
    EXPECT_THROW(s.resize(size_t{1} << 62), OutOfMemory);  // 4 EiB: no host has it
    EXPECT_EQ(s.data(), nullptr);
    EXPECT_EQ(s.nbytes(), 0u);
    EXPECT_EQ(memory_stats().allocated_bytes, before);
    s.resize(64);  // still usable
    EXPECT_EQ(memory_stats().allocated_bytes, before + 64);
  }
  EXPECT_EQ(memory_stats().allocated_bytes, before) << "the destructor released what was counted, no more";
}
