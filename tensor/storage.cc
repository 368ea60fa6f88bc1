#include "tensor/storage.h"

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "tensor/cpu/host_allocator.h"
#include "tensor/error.h"
#include "tensor/profiler.h"

namespace loom {
namespace {

constexpr int kMaxDevices = 17;  // slot 0: cpu, 1..16: cuda:0..15

struct Counters {
  std::atomic<int64_t> allocated{0};
  std::atomic<int64_t> peak{0};
  std::atomic<int64_t> num_allocs{0};
};
Counters& counters(Device d) {
  static Counters c[kMaxDevices];
  int slot = d.is_cpu() ? 0 : 1 + d.index;
  LOOM_CHECK(slot >= 0 && slot < kMaxDevices, "device ", d.str(), " is out of range");
  return c[slot];
}
void count_alloc(Device d, int64_t n) {
  Counters& c = counters(d);
  int64_t now = c.allocated.fetch_add(n) + n;
  c.num_allocs.fetch_add(1);
  int64_t peak = c.peak.load();
  while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {
  }
}

}  // namespace

MemoryStats memory_stats(Device device) {
  Counters& c = counters(device);
  return {c.allocated.load(), c.peak.load(), c.num_allocs.load()};
}
void reset_peak_memory_stats(Device device) {
  Counters& c = counters(device);
  c.peak.store(c.allocated.load());
}

Storage::Storage(size_t nbytes, Device device) : device_(device) { allocate(nbytes); }

void Storage::allocate(size_t nbytes) {
  profiler::Scope scope("alloc");
  // data_ and nbytes_ change only once the memory is there: a resize() that
  // throws (out of memory) leaves an empty storage that frees and counts nothing.
  void* data = nullptr;
  if (device_.is_cpu()) {
    data = detail::host_alloc(nbytes == 0 ? 64 : nbytes);  // the CPU caching allocator; throws OutOfMemory
  } else {
    auto& h = detail::cuda_hooks();
    if (!h.alloc)
      LOOM_THROW(Unsupported, "cannot allocate on ", device_.str(),
                 ": this build of loom has no CUDA backend (configure with -DLOOM_CUDA=ON)");
    data = h.alloc(nbytes, device_.index);
  }
  data_ = data;
  nbytes_ = nbytes;
  count_alloc(device_, static_cast<int64_t>(nbytes_));
}

void Storage::release() {
  profiler::Scope scope("free");
  counters(device_).allocated.fetch_sub(static_cast<int64_t>(nbytes_));
  if (device_.is_cpu()) {
    detail::host_free(data_);
  } else if (detail::cuda_hooks().free) {
    detail::cuda_hooks().free(data_, device_.index);
  }
  data_ = nullptr;
  nbytes_ = 0;
}

void Storage::resize(size_t nbytes) {
  if (!owned_) LOOM_THROW(Unsupported, "Storage::resize: the memory is owned elsewhere (a wrapped buffer)");
  if (nbytes == nbytes_ && data_) return;
  release();
  allocate(nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device device, void (*deleter)(void*, void*), void* ctx)
    : data_(data), nbytes_(nbytes), device_(device), owned_(false), deleter_(deleter), ctx_(ctx) {}

Storage::~Storage() {
  if (!owned_) {
    if (deleter_) deleter_(data_, ctx_);
    return;
  }
  release();
}

}  // namespace loom
