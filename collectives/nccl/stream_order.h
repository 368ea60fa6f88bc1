// How the nccl backend orders its stream against the caller's work, as plain C++
// over a small set of device operations (CUDA events in nccl_backend.cc, a fake
// in tests/collectives/nccl_stream_order_test.cc), so the plan is tested on the
// CPU.
//
// A ProcessGroup call returns at once and the collective runs later on the
// group's worker thread, whose current stream is not the caller's. So:
//  * at enqueue, on the calling thread, capture() records an event on the
//    caller's current stream of the communicator's device (a StreamGuard's
//    stream if one is set there, else the default compute stream);
//  * on the worker, right before the launch, before_launch() makes the nccl
//    stream wait for that event: the collective reads its inputs only after the
//    work the caller queued before the call, on whichever stream it was queued.
//    A backend op called directly (no ProcessGroup, no capture) waits for the
//    current stream of the thread that calls it instead.
//  * completion: the worker polls the nccl stream until the collective is done
//    and only then finishes the Work, so when Work::wait returns, the collective
//    has finished on the device and anything the caller queues next, on any
//    stream, comes after it.
#pragma once

#include <memory>
#include <mutex>
#include <utility>

namespace loom::collectives::detail {

/// The device operations the plan needs; handles are opaque (cudaStream_t, cudaEvent_t).
class StreamOrderOps {
 public:
  virtual ~StreamOrderOps() = default;
  /// The calling thread's current stream of `device`.
  virtual void* current_stream(int device) = 0;
  virtual void* event_create(int device) = 0;
  /// Captures the work queued so far on `stream`.
  virtual void event_record(void* event, void* stream) = 0;
  /// Makes `stream` wait (on the device) for the captured work.
  virtual void stream_wait(void* stream, void* event) = 0;
  virtual void event_destroy(void* event) noexcept = 0;
};

/// An event recorded on the caller's stream at enqueue; destroyed with the
/// last reference (so a call that never runs, e.g. cancelled after a timeout,
/// leaks nothing).
class CapturedStream {
 public:
  CapturedStream(StreamOrderOps& ops, void* event, void* stream) : ops_(ops), event_(event), stream_(stream) {}
  ~CapturedStream() { ops_.event_destroy(event_); }
  CapturedStream(const CapturedStream&) = delete;
  CapturedStream& operator=(const CapturedStream&) = delete;
  void* event() const { return event_; }
  /// The stream the caller had when it enqueued (for diagnostics and tests).
  void* stream() const { return stream_; }

 private:
  StreamOrderOps& ops_;
  void* event_;
  void* stream_;
};

/// The ordering of one communicator's stream. Thread-safe: capture() runs on
/// callers' threads, before_launch() and fallback on the worker.
class StreamOrder {
 public:
  StreamOrder(StreamOrderOps& ops, int device, void* comm_stream) : ops_(ops), device_(device), comm_(comm_stream) {}

  /// On the calling thread at enqueue: records an event on its current stream.
  std::shared_ptr<CapturedStream> capture() {
    void* stream = ops_.current_stream(device_);
    void* event = ops_.event_create(device_);
    auto c = std::make_shared<CapturedStream>(ops_, event, stream);  // owns the event from here on
    ops_.event_record(event, stream);
    return c;
  }

  /// On the worker, before the op of the call captured as `c`: the
  /// communicator's stream waits for it. The next launch() then needs no
  /// other ordering.
  void before_op(const std::shared_ptr<CapturedStream>& c) {
    ops_.stream_wait(comm_, c->event());
    std::lock_guard<std::mutex> g(mu_);
    ordered_ = true;
  }

  /// Right before a launch on the communicator's stream: unless before_op()
  /// ordered this op already, orders it after the current stream of the calling
  /// thread (a backend op called directly). Consumes the before_op() ordering,
  /// so the next op of the same call (a composite op) orders itself again,
  /// harmlessly.
  void before_launch() {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (ordered_) {
        ordered_ = false;
        return;
      }
    }
    if (!fallback_) fallback_ = ops_.event_create(device_);
    ops_.event_record(fallback_, ops_.current_stream(device_));
    ops_.stream_wait(comm_, fallback_);
  }

  ~StreamOrder() {
    if (fallback_) ops_.event_destroy(fallback_);
  }
  StreamOrder(const StreamOrder&) = delete;
  StreamOrder& operator=(const StreamOrder&) = delete;

 private:
  StreamOrderOps& ops_;
  int device_;
  void* comm_;
  std::mutex mu_;
  bool ordered_ = false;
  void* fallback_ = nullptr;  // worker-only
};

}  // namespace loom::collectives::detail
