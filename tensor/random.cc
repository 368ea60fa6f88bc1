#include "tensor/random.h"

namespace loom {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, uint64_t key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * c[0];
    uint64_t p1 = static_cast<uint64_t>(kM1) * c[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

namespace detail {
namespace {
thread_local RngTracker* t_tracker = nullptr;
}  // namespace

RngTracker::RngTracker() : outer_(t_tracker) { t_tracker = this; }
RngTracker::~RngTracker() { t_tracker = outer_; }

void RngTracker::note(Generator& gen) {
  for (RngTracker* t = this; t != nullptr; t = t->outer_) {
    bool seen = false;
    for (const auto& [g, st] : t->states_) seen = seen || g == &gen;
    if (!seen) t->states_.push_back({&gen, {gen.seed(), gen.offset()}});
  }
}

RngTracker* active_rng_tracker() { return t_tracker; }
}  // namespace detail

Generator& default_generator() {
  static Generator g(0x5eed);
  return g;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace loom
