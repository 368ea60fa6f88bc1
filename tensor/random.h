// Counter-based random numbers (Philox4x32-10): element i of a draw depends
// only on (seed, offset + i), so a stream is reproducible, can be split across
// threads, and a CUDA kernel can produce the same numbers.
#pragma once

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace loom {

class Generator;

namespace detail {
/// Records, while alive on this thread, the state every Generator had when it was first drawn from (its first
/// advance() in the scope), so the draws of a region can be replayed: activation checkpointing restores these states
/// before it recomputes a block, so dropout masks are the same bits. Trackers nest (each sees every draw).
class RngTracker {
 public:
  RngTracker();
  ~RngTracker();
  RngTracker(const RngTracker&) = delete;
  RngTracker& operator=(const RngTracker&) = delete;
  /// Called by Generator::advance when a tracker is active.
  void note(Generator& gen);
  /// Each generator drawn from in the scope, with its (seed, offset) before the first draw.
  const std::vector<std::pair<Generator*, std::pair<uint64_t, uint64_t>>>& states() const { return states_; }

 private:
  std::vector<std::pair<Generator*, std::pair<uint64_t, uint64_t>>> states_;
  RngTracker* outer_;
};
/// The innermost live tracker on this thread, or null.
RngTracker* active_rng_tracker();
}  // namespace detail

/// Philox4x32-10 block: 4 outputs for a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, uint64_t key);

/// Generator state is (seed, offset): offset counts 128-bit blocks consumed.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  void manual_seed(uint64_t seed) { set_state(seed, 0); }
  /// Reserves n_blocks blocks and returns the first block's index.
  uint64_t advance(uint64_t n_blocks) {
    if (detail::RngTracker* t = detail::active_rng_tracker()) t->note(*this);
    uint64_t start = offset_;
    offset_ += n_blocks;
    return start;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

/// The process-wide default generator (as torch.manual_seed sets).
Generator& default_generator();
void manual_seed(uint64_t seed);

/// Uniform float in [0, 1) from a 32-bit draw (24 random mantissa bits).
inline float uint_to_unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
/// Uniform double in [0, 1) from two 32-bit draws.
inline double uints_to_unit_double(uint32_t hi, uint32_t lo) {
  uint64_t v = (static_cast<uint64_t>(hi) << 21) ^ (lo >> 11);
  return static_cast<double>(v & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

}  // namespace loom
