// The CUDA device runtime as plain C++: streams, events, the current stream of
// each device, and the per-device caching allocator's statistics and cache.
// No CUDA header: handles are void* (a cudaStream_t / cudaEvent_t underneath).
// Declared only in builds with the CUDA backend (LOOM_WITH_CUDA); defined in
// tensor/cuda/runtime.cu. Calls throw Unsupported when no device is present.
#pragma once

#if LOOM_WITH_CUDA

#include "tensor/caching_allocator.h"
#include "tensor/tensor.h"

namespace loom::cuda {

/// The caching allocator's counters (tensor/caching_allocator.h).
using AllocatorStats = loom::AllocatorStats;

/// A CUDA stream: owned (created by create(), destroyed with the object) or
/// borrowed (a handle owned elsewhere, e.g. current_stream()). Move-only.
class Stream {
 public:
  /// A non-blocking stream on `device` (it does not wait for the legacy default
  /// stream). priority: lower is more urgent; CUDA clamps it to the device's
  /// range (cudaDeviceGetStreamPriorityRange), 0 is the default priority.
  static Stream create(int device, int priority = 0);
  /// Wraps a cudaStream_t owned elsewhere; it is not destroyed with this object.
  static Stream borrow(void* handle, int device);

  Stream(Stream&& o) noexcept;
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  /// The cudaStream_t.
  void* handle() const { return handle_; }
  int device() const { return device_; }
  bool owned() const { return owned_; }
  /// Blocks the host until all work queued on the stream has finished.
  void synchronize() const;
  /// True when all work queued on the stream has finished.
  bool query() const;
  bool operator==(const Stream& o) const { return handle_ == o.handle_ && device_ == o.device_; }
  bool operator!=(const Stream& o) const { return !(*this == o); }

 private:
  Stream(void* handle, int device, bool owned) : handle_(handle), device_(device), owned_(owned) {}
  void* handle_ = nullptr;
  int device_ = 0;
  bool owned_ = false;
};

/// A CUDA event, created on the device of the first stream it is recorded on.
/// Move-only; destroyed with the object.
class Event {
 public:
  /// enable_timing: needed for elapsed_ms (timing events cost a little more).
  explicit Event(bool enable_timing = false) : timing_(enable_timing) {}
  Event(Event&& o) noexcept;
  Event& operator=(Event&& o) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();

  /// Captures the work queued on `stream` so far. Throws InvalidArgument when
  /// the event was created on another device.
  void record(const Stream& stream);
  /// Makes `stream` wait (on the device, not the host) for the recorded work.
  /// No-op for an event never recorded.
  void block(const Stream& stream) const;
  /// True when the recorded work has finished (or nothing was recorded).
  bool query() const;
  /// Blocks the host until the recorded work has finished.
  void synchronize() const;
  /// Milliseconds from this event to `end`; both recorded with timing enabled
  /// and finished. Throws InvalidArgument otherwise.
  float elapsed_ms(const Event& end) const;
  /// The cudaEvent_t (nullptr until first recorded).
  void* handle() const { return handle_; }
  int device() const { return device_; }

 private:
  void* handle_ = nullptr;
  int device_ = -1;
  bool timing_ = false;
};

/// The stream ops on `device` run on from this thread: the one a StreamGuard
/// set, else the device's default compute stream (created non-blocking on
/// first use; see tensor/cuda/runtime.cu for why not the legacy stream).
/// Borrowed: valid as long as the process (the default stream) or the guarded
/// stream lives.
Stream current_stream(int device);

/// Makes `stream` the current stream of its device on this thread for the
/// guard's lifetime, then restores the previous one. It does not change the
/// current device. The stream must outlive the guard.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_ = 0;
  bool had_prev_ = false;
  void* prev_ = nullptr;
};

/// A non-blocking stream on `device` leased from a per-device pool whose streams
/// are never destroyed (tensor/stream_pool.h), for a long-lived side user such
/// as a communicator: memory record_stream()'d on it can then be freed at any
/// time, even after its user is gone (an event recorded on a destroyed stream
/// would fail inside a tensor's deleter and end the process). Give it back with
/// release_pooled_stream() once no more work will be queued on it; a later
/// acquire on the device may return it again. Borrowed: the Stream object does
/// not destroy it.
Stream acquire_pooled_stream(int device);
/// Gives back a stream acquire_pooled_stream() returned. Throws InvalidArgument
/// for any other stream or one given back twice.
void release_pooled_stream(const Stream& stream);

/// Blocks the host until all work on `device` has finished (cudaDeviceSynchronize).
void synchronize(int device);

/// False when the environment variable LOOM_CUDA_NO_CACHING is set (to anything
/// but "" or "0"; like PyTorch's PYTORCH_NO_CUDA_MEMORY_CACHING): then every
/// tensor's memory is its own cudaMalloc of exactly its bytes, cudaFree'd when
/// the tensor goes, after a cudaDeviceSynchronize (so record_stream holds), with
/// the statistics counted as usual. Slow; meant for compute-sanitizer's memcheck,
/// which cannot see an overrun inside a caching segment. The variable is read
/// once per process, at the first CUDA allocation or the first call of this
/// function, whichever comes first; setting it later changes nothing (a test
/// sets it in a child process). Needs no device.
bool caching_allocator_enabled();

/// The caching allocator's counters for `device` (num_backend_allocs counts cudaMalloc calls).
AllocatorStats allocator_stats(int device);
/// Sets the peaks of `device`'s allocator to the current values.
void reset_peak_allocator_stats(int device);
/// Returns `device`'s fully free cached segments to CUDA (cudaFree), e.g.
/// before another library allocates on the device.
void empty_cache(int device);

/// Marks the memory of t as used on `stream` (a stream other than the one it
/// was allocated on), so that the allocator reuses it only after `stream` has
/// passed the point where t's storage is freed (PyTorch's record_stream). A
/// storage not from the caching allocator (wrapped memory) is left alone.
/// Throws InvalidArgument when t is not on stream's device.
void record_stream(const Tensor& t, const Stream& stream);

}  // namespace loom::cuda

#endif  // LOOM_WITH_CUDA
