#include "tensor/cpu/host_allocator.h"

#include <cstdlib>
#include <cstring>
#include <memory>

namespace loom {
namespace {

/// Raw CPU memory for the caching allocator: aligned_alloc, no streams (every event has passed at once).
class HostBackend final : public AllocatorBackend {
 public:
  void* alloc(size_t bytes) override {
    const size_t rounded = (bytes + 63) / 64 * 64;
    return std::aligned_alloc(64, rounded);
  }
  void free(void* ptr) override { std::free(ptr); }
  void* event_create() override { return this; }
  void event_record(void*, StreamHandle) override {}
  bool event_query(void*) override { return true; }
  void event_destroy(void*) override {}
  void wait_streams(const std::vector<StreamHandle>&) override {}
};

bool caching_from_env() {
  const char* v = std::getenv("LOOM_CPU_CACHING_ALLOCATOR");
  return !(v && std::strcmp(v, "0") == 0);
}

CachingAllocator& host() {
  // Never destroyed: tensors in other static objects may be freed after this translation unit's statics.
  static CachingAllocator* a = new CachingAllocator(std::make_unique<HostBackend>(), "cpu", caching_from_env());
  return *a;
}

}  // namespace

AllocatorStats host_allocator_stats() { return host().stats(); }
void host_empty_cache() { host().empty_cache(); }
bool host_caching_enabled() { return host().caching(); }

namespace detail {
void* host_alloc(size_t bytes) { return host().allocate(bytes, nullptr); }
void host_free(void* ptr) {
  if (ptr) host().free(ptr);
}
}  // namespace detail

}  // namespace loom
