// A pool of long-lived stream handles per device that never destroys one: a
// user (a communicator) leases a stream and gives it back when it goes; the
// next lease on that device gets it again. Why never destroy: the caching
// allocator remembers the streams record_stream() named and records an event on
// each when the memory is freed, which may be long after the stream's user is
// gone; an event recorded on a destroyed cudaStream_t fails (and from a
// Storage's deleter, terminates the process). PyTorch keeps its side streams in
// a never-freed pool for the same reason. Plain C++ (handles are opaque); the
// CUDA runtime (tensor/cuda/runtime.cu) creates them with cudaStreamCreate.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "tensor/caching_allocator.h"
#include "tensor/error.h"

namespace loom {

class StreamPool {
 public:
  /// create(device) makes a new stream on that device (it may throw).
  explicit StreamPool(std::function<StreamHandle(int device)> create) : create_(std::move(create)) {}
  StreamPool(const StreamPool&) = delete;
  StreamPool& operator=(const StreamPool&) = delete;

  /// A stream of `device` no one else holds: the one given back most recently,
  /// else a new one.
  StreamHandle acquire(int device) {
    {
      std::lock_guard<std::mutex> g(mu_);
      std::vector<StreamHandle>& free = free_[device];
      if (!free.empty()) {
        StreamHandle s = free.back();
        free.pop_back();
        leased_.insert({device, s});
        return s;
      }
    }
    StreamHandle s = create_(device);
    std::lock_guard<std::mutex> g(mu_);
    ++created_[device];
    leased_.insert({device, s});
    return s;
  }

  /// Gives back a stream acquire(device) returned; the caller has finished
  /// queueing work on it (work already queued may still run). Throws
  /// InvalidArgument for a stream that is not leased from this pool on `device`.
  void release(int device, StreamHandle s) {
    std::lock_guard<std::mutex> g(mu_);
    LOOM_CHECK(leased_.erase({device, s}) == 1, "StreamPool::release: stream ", s, " of device ", device,
               " was not acquired from this pool (or was given back twice)");
    free_[device].push_back(s);
  }

  /// Streams created on `device` so far (the pool's size there).
  size_t created(int device) const {
    std::lock_guard<std::mutex> g(mu_);
    auto it = created_.find(device);
    return it == created_.end() ? 0 : it->second;
  }
  /// Streams of `device` currently leased.
  size_t leased(int device) const {
    std::lock_guard<std::mutex> g(mu_);
    size_t n = 0;
    for (const auto& [d, s] : leased_) n += d == device ? 1 : 0;
    return n;
  }

 private:
  std::function<StreamHandle(int)> create_;
  mutable std::mutex mu_;
  std::map<int, std::vector<StreamHandle>> free_;
  std::set<std::pair<int, StreamHandle>> leased_;
  std::map<int, size_t> created_;
};

}  // namespace loom
