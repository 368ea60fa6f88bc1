// Storage: one allocation on one device, shared by every view of it. The
// allocator keeps per-device byte counters (in use, peak) that tests and the
// FSDP memory checks read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "tensor/device.h"

namespace loom {

/// Bytes currently allocated for tensors, and the peak since the last reset.
struct MemoryStats {
  int64_t allocated_bytes = 0;
  int64_t peak_bytes = 0;
  int64_t num_allocs = 0;
};
MemoryStats memory_stats(Device device = kCPU);
void reset_peak_memory_stats(Device device = kCPU);

class Storage {
 public:
  /// Allocates nbytes on device (64-byte aligned on cpu). Contents are uninitialised.
  Storage(size_t nbytes, Device device);
  /// Wraps memory owned elsewhere; `deleter` (may be empty) runs on destruction.
  Storage(void* data, size_t nbytes, Device device, void (*deleter)(void*, void*), void* ctx);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  /// Frees the allocation and allocates nbytes anew in place (contents
  /// uninitialised; 0 frees it). Every tensor sharing this storage sees the new
  /// buffer: FSDP frees a unit's full parameters after use and refills the same
  /// storage later, so tensors saved for backward stay valid (PyTorch's
  /// storage().resize_()). Throws Unsupported for memory owned elsewhere.
  void resize(size_t nbytes);

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void allocate(size_t nbytes);
  void release();

  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  bool owned_ = true;
  void (*deleter_)(void*, void*) = nullptr;
  void* ctx_ = nullptr;
};

namespace detail {
/// CUDA allocator hooks, filled in by tensor/cuda when the backend is built.
struct CudaAllocatorHooks {
  void* (*alloc)(size_t nbytes, int device) = nullptr;
  void (*free)(void* ptr, int device) = nullptr;
  /// dst/src on any device; kind inferred from the devices.
  void (*copy)(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) = nullptr;
  int (*device_count)() = nullptr;
};
CudaAllocatorHooks& cuda_hooks();
}  // namespace detail

}  // namespace loom
