// The CUDA device runtime: one caching allocator per device over cudaMalloc,
// the current stream of each device (a StreamGuard's, else the device's default
// compute stream), the stream and event wrappers of tensor/cuda_runtime.h, and
// the allocator hooks that Storage and ops::to call (tensor/storage.h).
//
// Why a default compute stream of our own instead of the legacy default stream
// (stream 0): the legacy stream synchronises implicitly with every other
// blocking stream of the device, so a side stream (NCCL's, a copy or prefetch
// stream) could never overlap with compute; the per-thread default stream
// depends on a compile flag (--default-stream) that differs between libraries.
// A stream created non-blocking behaves the same everywhere, is a real handle we
// can record events on and hand to cuBLAS and NCCL, and keys the allocator's
// per-stream free lists. The price: work on it is not ordered against the
// legacy stream, so loom code must not use synchronous cudaMemcpy / cudaMemset
// (legacy stream) on tensor memory; it uses the *Async calls on current_stream().
//
// LOOM_CUDA_NO_CACHING=1 (read once, at the first allocation or the first
// caching_allocator_enabled() call) turns the caching off: each block is its own
// cudaMalloc of exactly the bytes asked for, cudaFree'd at free() after
// cudaDeviceSynchronize, so that compute-sanitizer's memcheck sees an overrun of
// one tensor into the next (inside a shared 2 MiB segment it cannot).
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "tensor/caching_allocator.h"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda_runtime.h"
#include "tensor/storage.h"
#include "tensor/stream_pool.h"

namespace loom::cuda_detail {
namespace {

constexpr int kMaxDevices = 64;

/// cudaGetDeviceCount once per process; 0 when it fails (no driver, no device).
int device_count() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return c < kMaxDevices ? c : kMaxDevices;
  }();
  return n;
}

[[noreturn]] void throw_bad_device(int device, const char* what) {
  const int n = device_count();
  if (n == 0)
    LOOM_THROW(Unsupported, what, " on cuda:", device,
               ": no CUDA device is present (cuda_device_count() is 0); keep tensors on cpu on this machine");
  LOOM_THROW(InvalidArgument, what, ": device cuda:", device, " does not exist; this machine has ", n,
             " CUDA device(s), cuda:0 to cuda:", n - 1);
}
inline void check_device(int device, const char* what) {
  if (device < 0 || device >= device_count()) throw_bad_device(device, what);
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

/// The raw operations of one device's caching allocator.
class CudaMemory : public AllocatorBackend {
 public:
  explicit CudaMemory(int device) : device_(device) {}
  void* alloc(size_t bytes) override {
    DeviceScope scope(device_);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // so that a later launch check does not report this one
      return nullptr;
    }
    if (e != cudaSuccess) throw_cuda_error(e, "cudaMalloc", __FILE__, __LINE__);
    return p;
  }
  void free(void* ptr) override {
    DeviceScope scope(device_);
    LOOM_CUDA_CHECK(cudaFree(ptr));
  }
  void* event_create() override {
    DeviceScope scope(device_);
    cudaEvent_t e = nullptr;
    LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  void event_record(void* event, StreamHandle stream) override {
    DeviceScope scope(device_);
    LOOM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
  }
  bool event_query(void* event) override {
    const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (e == cudaSuccess) return true;
    if (e == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    throw_cuda_error(e, "cudaEventQuery", __FILE__, __LINE__);
  }
  void event_destroy(void* event) override { LOOM_CUDA_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(event))); }
  /// The whole device: the allocating stream may be a side stream destroyed
  /// since (StreamGuard over a temporary Stream), so its handle is not used.
  void wait_streams(const std::vector<StreamHandle>&) override {
    DeviceScope scope(device_);
    LOOM_CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::string describe_memory() override {
    size_t free_b = 0, total_b = 0;
    DeviceScope scope(device_);
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      (void)cudaGetLastError();
      return {};
    }
    return detail::str_cat("cuda:", device_, " has ", gib(free_b), " free of ", gib(total_b),
                           " (the rest is held by loom, other processes and the CUDA context)");
  }

 private:
  int device_;
};

struct DeviceRuntime {
  std::once_flag stream_once;
  cudaStream_t compute = nullptr;  // the default compute stream, never destroyed
  std::once_flag allocator_once;
  std::unique_ptr<CachingAllocator> allocator;
};

DeviceRuntime& runtime(int device) {
  // Never destroyed, on purpose: tensors in static storage may be freed after
  // main returns, and the CUDA runtime tears itself down at exit before our
  // statics would be; the end of the process returns the memory.
  static auto& all = *new std::array<DeviceRuntime, kMaxDevices>();
  return all[static_cast<size_t>(device)];
}

/// False when LOOM_CUDA_NO_CACHING is set to anything but "" or "0"; read once per process.
bool caching_from_env() {
  static const bool caching = [] {
    const char* v = std::getenv("LOOM_CUDA_NO_CACHING");
    return v == nullptr || v[0] == '\0' || std::strcmp(v, "0") == 0;
  }();
  return caching;
}

CachingAllocator& allocator(int device) {
  DeviceRuntime& r = runtime(device);
  std::call_once(r.allocator_once, [&] {
    r.allocator = std::make_unique<CachingAllocator>(std::make_unique<CudaMemory>(device),
                                                     "cuda:" + std::to_string(device), caching_from_env());
  });
  return *r.allocator;
}

/// A StreamGuard's stream per device on this thread (set: false when none).
struct Override {
  bool set = false;
  cudaStream_t stream = nullptr;
};
thread_local std::array<Override, kMaxDevices> tls_override;

/// An event that lives for one copy.
struct ScopedEvent {
  cudaEvent_t e = nullptr;
  ScopedEvent() { LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
  ~ScopedEvent() {
    if (e) cudaEventDestroy(e);  // released by CUDA once the recorded work is done
  }
  ScopedEvent(const ScopedEvent&) = delete;
  ScopedEvent& operator=(const ScopedEvent&) = delete;
};

// ---------------------------------------------------------------- allocator hooks
void* hook_alloc(size_t nbytes, int device) {
  check_device(device, "cannot allocate tensor memory");
  if (nbytes == 0) return nullptr;
  return allocator(device).allocate(nbytes, current_stream(device));
}

void hook_free(void* ptr, int device) {
  if (!ptr) return;
  check_device(device, "free of tensor memory");
  allocator(device).free(ptr);
}

/// Copies on the current streams: device to device without blocking the host;
/// whenever host memory is involved, the host waits until the copy is done (as
/// PyTorch's blocking copy does), so the caller may read or free its buffer.
void hook_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_dev.is_cuda()) check_device(dst_dev.index, "copy to cuda");
  if (src_dev.is_cuda()) check_device(src_dev.index, "copy from cuda");
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  if (src_dev.is_cpu() || dst_dev.is_cpu()) {
    const int device = dst_dev.is_cuda() ? dst_dev.index : src_dev.index;
    const cudaMemcpyKind kind = dst_dev.is_cuda() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    DeviceScope scope(device);
    cudaStream_t s = current_stream(device);
    LOOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, s));
    LOOM_CUDA_CHECK(cudaStreamSynchronize(s));
    return;
  }
  if (dst_dev.index == src_dev.index) {
    DeviceScope scope(dst_dev.index);
    LOOM_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, current_stream(dst_dev.index)));
    return;
  }
  // Between devices: the copy runs on the source's current stream after the
  // work queued on the destination's (dst may be a block just freed there), and
  // the destination's stream waits for the copy before its next op.
  cudaStream_t src_s = current_stream(src_dev.index);
  cudaStream_t dst_s = current_stream(dst_dev.index);
  ScopedEvent dst_ready, copied;
  {
    DeviceScope scope(dst_dev.index);
    LOOM_CUDA_CHECK(cudaEventRecord(dst_ready.e, dst_s));
  }
  DeviceScope scope(src_dev.index);
  LOOM_CUDA_CHECK(cudaStreamWaitEvent(src_s, dst_ready.e, 0));
  LOOM_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_dev.index, src, src_dev.index, nbytes, src_s));
  LOOM_CUDA_CHECK(cudaEventRecord(copied.e, src_s));
  LOOM_CUDA_CHECK(cudaStreamWaitEvent(dst_s, copied.e, 0));
}

int hook_device_count() { return device_count(); }

}  // namespace

cudaStream_t current_stream(int device) {
  check_device(device, "current_stream");
  const Override& o = tls_override[static_cast<size_t>(device)];
  if (o.set) return o.stream;
  DeviceRuntime& r = runtime(device);
  std::call_once(r.stream_once, [&] {
    DeviceScope scope(device);
    LOOM_CUDA_CHECK(cudaStreamCreateWithFlags(&r.compute, cudaStreamNonBlocking));
  });
  return r.compute;
}

}  // namespace loom::cuda_detail

namespace loom::detail {

void register_runtime(CudaAllocatorHooks& hooks) {
  hooks.alloc = &cuda_detail::hook_alloc;
  hooks.free = &cuda_detail::hook_free;
  hooks.copy = &cuda_detail::hook_copy;
  hooks.device_count = &cuda_detail::hook_device_count;
}

}  // namespace loom::detail

namespace loom::cuda {

using cuda_detail::check_device;
using cuda_detail::DeviceScope;

// ---------------------------------------------------------------- Stream
Stream Stream::create(int device, int priority) {
  check_device(device, "Stream::create");
  DeviceScope scope(device);
  cudaStream_t s = nullptr;
  LOOM_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority));
  return Stream(s, device, true);
}

namespace {
/// The process's pool of side streams; never destroyed (see tensor/stream_pool.h).
StreamPool& stream_pool() {
  static StreamPool* pool = new StreamPool([](int device) -> StreamHandle {
    DeviceScope scope(device);
    cudaStream_t s = nullptr;
    LOOM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  });
  return *pool;
}
}  // namespace

Stream acquire_pooled_stream(int device) {
  check_device(device, "acquire_pooled_stream");
  return Stream::borrow(stream_pool().acquire(device), device);
}

void release_pooled_stream(const Stream& stream) { stream_pool().release(stream.device(), stream.handle()); }

Stream Stream::borrow(void* handle, int device) {
  check_device(device, "Stream::borrow");
  return Stream(handle, device, false);
}

Stream::Stream(Stream&& o) noexcept : handle_(o.handle_), device_(o.device_), owned_(o.owned_) {
  o.handle_ = nullptr;
  o.owned_ = false;
}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    Stream old(std::move(*this));  // destroyed at the end of this scope
    handle_ = o.handle_;
    device_ = o.device_;
    owned_ = o.owned_;
    o.handle_ = nullptr;
    o.owned_ = false;
  }
  return *this;
}

Stream::~Stream() {
  if (!owned_ || !handle_) return;
  // Finish first: the allocator keys cached blocks by handle, and a stream
  // created later may get this handle back; its work must not overlap ours.
  cudaStreamSynchronize(static_cast<cudaStream_t>(handle_));
  cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}

void Stream::synchronize() const { LOOM_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle_))); }

bool Stream::query() const {
  const cudaError_t e = cudaStreamQuery(static_cast<cudaStream_t>(handle_));
  if (e == cudaSuccess) return true;
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  cuda_detail::throw_cuda_error(e, "cudaStreamQuery", __FILE__, __LINE__);
}

// ---------------------------------------------------------------- Event
Event::Event(Event&& o) noexcept : handle_(o.handle_), device_(o.device_), timing_(o.timing_) {
  o.handle_ = nullptr;
  o.device_ = -1;
}

Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
    Event old(std::move(*this));
    handle_ = o.handle_;
    device_ = o.device_;
    timing_ = o.timing_;
    o.handle_ = nullptr;
    o.device_ = -1;
  }
  return *this;
}

Event::~Event() {
  if (handle_) cudaEventDestroy(static_cast<cudaEvent_t>(handle_));
}

void Event::record(const Stream& stream) {
  if (!handle_) {
    DeviceScope scope(stream.device());
    cudaEvent_t e = nullptr;
    LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, timing_ ? cudaEventDefault : cudaEventDisableTiming));
    handle_ = e;
    device_ = stream.device();
  } else if (device_ != stream.device()) {
    LOOM_THROW(InvalidArgument, "Event::record: the event belongs to cuda:", device_,
               " but the stream to cuda:", stream.device(), "; use one event per device");
  }
  DeviceScope scope(device_);
  LOOM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(handle_), static_cast<cudaStream_t>(stream.handle())));
}

void Event::block(const Stream& stream) const {
  if (!handle_) return;
  DeviceScope scope(stream.device());
  LOOM_CUDA_CHECK(
      cudaStreamWaitEvent(static_cast<cudaStream_t>(stream.handle()), static_cast<cudaEvent_t>(handle_), 0));
}

bool Event::query() const {
  if (!handle_) return true;
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(handle_));
  if (e == cudaSuccess) return true;
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  cuda_detail::throw_cuda_error(e, "cudaEventQuery", __FILE__, __LINE__);
}

void Event::synchronize() const {
  if (handle_) LOOM_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(handle_)));
}

float Event::elapsed_ms(const Event& end) const {
  if (!timing_ || !end.timing_)
    LOOM_THROW(InvalidArgument, "Event::elapsed_ms: both events need Event(/*enable_timing=*/true)");
  if (!handle_ || !end.handle_)
    LOOM_THROW(InvalidArgument, "Event::elapsed_ms: ", handle_ ? "the end" : "the start", " event was never recorded");
  float ms = 0.0f;
  const cudaError_t e =
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(handle_), static_cast<cudaEvent_t>(end.handle_));
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    LOOM_THROW(InvalidArgument, "Event::elapsed_ms: the events have not finished; synchronize() the end event first");
  }
  if (e != cudaSuccess) cuda_detail::throw_cuda_error(e, "cudaEventElapsedTime", __FILE__, __LINE__);
  return ms;
}

// ---------------------------------------------------------------- current stream, device, allocator
Stream current_stream(int device) { return Stream::borrow(cuda_detail::current_stream(device), device); }

StreamGuard::StreamGuard(const Stream& stream) : device_(stream.device()) {
  check_device(device_, "StreamGuard");
  auto& o = cuda_detail::tls_override[static_cast<size_t>(device_)];
  had_prev_ = o.set;
  prev_ = o.stream;
  o.set = true;
  o.stream = static_cast<cudaStream_t>(stream.handle());
}

StreamGuard::~StreamGuard() {
  auto& o = cuda_detail::tls_override[static_cast<size_t>(device_)];
  o.set = had_prev_;
  o.stream = static_cast<cudaStream_t>(prev_);
}

void synchronize(int device) {
  check_device(device, "synchronize");
  DeviceScope scope(device);
  LOOM_CUDA_CHECK(cudaDeviceSynchronize());
}

AllocatorStats allocator_stats(int device) {
  check_device(device, "allocator_stats");
  return cuda_detail::allocator(device).stats();
}

void reset_peak_allocator_stats(int device) {
  check_device(device, "reset_peak_allocator_stats");
  cuda_detail::allocator(device).reset_peak();
}

bool caching_allocator_enabled() { return cuda_detail::caching_from_env(); }

void empty_cache(int device) {
  check_device(device, "empty_cache");
  cuda_detail::allocator(device).empty_cache();
}

void record_stream(const Tensor& t, const Stream& stream) {
  if (!t.device().is_cuda() || t.device().index != stream.device())
    LOOM_THROW(InvalidArgument, "record_stream: a tensor on ", t.device().str(), " of shape ", shape_str(t.sizes()),
               " and a stream on cuda:", stream.device(), "; both must be on the same CUDA device");
  const auto& storage = t.storage();
  if (!storage || !storage->data()) return;
  check_device(stream.device(), "record_stream");
  cuda_detail::allocator(stream.device()).record_stream(storage->data(), stream.handle());
}

}  // namespace loom::cuda
