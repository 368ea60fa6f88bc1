// Philox4x32-10 and the dropout keep rule as inline functions that compile for
// the host and, under nvcc, for the device (__host__ __device__), so a CUDA
// kernel draws exactly the numbers tensor/random.h's philox4x32 gives on the
// CPU. Plain C++17, no CUDA header: CPU tests call the same code the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif

namespace loom::detail {

/// Four 32-bit words of one Philox block.
struct PhiloxBlock {
  uint32_t v[4];
};

/// Philox4x32-10 of the 128-bit counter (c0, c1, c2, c3) under the 64-bit key;
/// the same function as loom::philox4x32 (tensor/random.cc).
LOOM_HOST_DEVICE inline PhiloxBlock philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

/// Block `block` of the stream of generator seed `seed`: counter (block lo, block hi, 0, 0).
LOOM_HOST_DEVICE inline PhiloxBlock philox_stream_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u, seed);
}

/// Uniform float in [0, 1) from a 32-bit draw (24 random mantissa bits), as loom::uint_to_unit_float.
LOOM_HOST_DEVICE inline float philox_unit_float(uint32_t x) {
  return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

/// Dropout's rule for element i of a draw that starts at block `start`: it uses word
/// i % 4 of block start + i / 4 and is kept when that word, as a unit float, is >= p.
/// `w` is the block already drawn for element i.
LOOM_HOST_DEVICE inline bool dropout_keep(const PhiloxBlock& w, int64_t i, float p) {
  return philox_unit_float(w.v[i & 3]) >= p;
}

}  // namespace loom::detail
