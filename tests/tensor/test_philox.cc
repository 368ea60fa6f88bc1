// The host/device Philox of tensor/philox.h (the code the CUDA dropout kernel
// runs, compiled here for the host) against the CPU generator and the CPU
// dropout kernel: same words for every counter and key, Random123's known
// answers, and the same mask for a seed and generator offset.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "tensor/ops.h"
#include "tensor/philox.h"
#include "tensor/random.h"

namespace loom {
namespace {

TEST(Philox, HostDeviceFunctionMatchesTheCpuGenerator) {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&] {  // splitmix64
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (int i = 0; i < 10000; ++i) {
    const uint64_t a = next(), b = next(), key = next();
    const std::array<uint32_t, 4> c = {static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32),
                                       static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32)};
    const std::array<uint32_t, 4> want = philox4x32(c, key);
    const detail::PhiloxBlock got = detail::philox4x32_10(c[0], c[1], c[2], c[3], key);
    for (int k = 0; k < 4; ++k) ASSERT_EQ(got.v[k], want[k]) << "counter draw " << i << " word " << k;
  }
  // The stream block of (seed, block) is the counter (block lo, block hi, 0, 0).
  const uint64_t block = 0x123456789abcdefull, seed = 0xfeedbeefcafef00dull;
  const auto want = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}, seed);
  const detail::PhiloxBlock got = detail::philox_stream_block(seed, block);
  for (int k = 0; k < 4; ++k) EXPECT_EQ(got.v[k], want[k]);
}

TEST(Philox, MatchesRandom123KnownAnswers) {
  // Random123's kat_vectors for philox4x32 with 10 rounds: counter, key (k0, k1), result.
  struct Kat {
    uint32_t c[4];
    uint32_t k[2];
    uint32_t r[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& t : kats) {
    const uint64_t key = (static_cast<uint64_t>(t.k[1]) << 32) | t.k[0];
    const detail::PhiloxBlock got = detail::philox4x32_10(t.c[0], t.c[1], t.c[2], t.c[3], key);
    for (int k = 0; k < 4; ++k) EXPECT_EQ(got.v[k], t.r[k]) << "word " << k;
  }
}

TEST(Philox, DropoutRuleGivesTheCpuKernelsMask) {
  // Sizes that are and are not multiples of 4, from a generator that has already drawn (offset > 0).
  for (int64_t n : {1, 7, 64, 1001}) {
    for (double p : {0.1, 0.5, 0.9}) {
      Generator gen(1234 + static_cast<uint64_t>(n));
      gen.advance(17);
      const uint64_t seed = gen.seed(), start = gen.offset();
      Tensor x = ops::ones({n});
      auto [y, mask] = ops::dropout(x, p, gen);
      EXPECT_EQ(gen.offset(), start + static_cast<uint64_t>((n + 3) / 4)) << "blocks drawn";
      const std::vector<uint8_t> m = mask.to_vector<uint8_t>();
      int64_t kept = 0;
      for (int64_t i = 0; i < n; ++i) {
        const detail::PhiloxBlock w = detail::philox_stream_block(seed, start + static_cast<uint64_t>(i / 4));
        const bool keep = detail::dropout_keep(w, i, static_cast<float>(p));
        ASSERT_EQ(m[i], keep ? 1 : 0) << "n " << n << " p " << p << " element " << i;
        kept += keep;
      }
      if (n >= 1000) {
        EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 0.06);
      }
    }
  }
}

}  // namespace
}  // namespace loom
