#include "collectives/nccl/nccl_backend.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <thread>

#include "collectives/nccl/stream_order.h"
#include "tensor/cuda_runtime.h"

namespace loom::collectives {

namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) LOOM_THROW(CommError, "nccl backend: ", what, ": ", cudaGetErrorString(e));
}
void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) LOOM_THROW(CommError, "nccl ", what, ": ", ncclGetErrorString(r));
}

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::f16:
      return ncclFloat16;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kProduct:
      return ncclProd;
  }
  return ncclSum;
}

/// Makes `device` current for its scope (on a caller's thread too) and restores the previous one.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    cuda_check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
    cur_ = device;
  }
  ~DeviceScope() {
    if (prev_ != cur_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0, cur_ = 0;
};

/// The stream ordering's device operations on CUDA events.
class CudaStreamOrderOps : public detail::StreamOrderOps {
 public:
  void* current_stream(int device) override { return loom::cuda::current_stream(device).handle(); }
  void* event_create(int device) override {
    DeviceScope scope(device);  // an event belongs to the device current at its creation
    cudaEvent_t e = nullptr;
    cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    return e;
  }
  void event_record(void* event, void* stream) override {
    cuda_check(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)), "cudaEventRecord");
  }
  void stream_wait(void* stream, void* event) override {
    cuda_check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0),
               "cudaStreamWaitEvent");
  }
  void event_destroy(void* event) noexcept override { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }
};

class NcclBackend : public Backend {
 public:
  explicit NcclBackend(const BackendContext& ctx) : size_(ctx.size) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
      LOOM_THROW(CommError, "nccl backend: no CUDA device is visible; use the gloo backend on CPU");
    const char* lr = std::getenv("LOCAL_RANK");
    device_ = (lr ? std::atoi(lr) : ctx.rank) % count;
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    ncclUniqueId id;
    if (ctx.rank == 0) {
      nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      ctx.store->set("nccl_unique_id",
                     Bytes(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof(id)));
    } else {
      ctx.store->wait({"nccl_unique_id"}, ctx.timeout);
      Bytes b = ctx.store->get("nccl_unique_id");
      LOOM_CHECK_T(CommError, b.size() == sizeof(id), "nccl backend: unique id of ", b.size(), " bytes");
      std::memcpy(&id, b.data(), sizeof(id));
    }
    nccl_check(ncclCommInitRank(&comm_, ctx.size, id, ctx.rank), "ncclCommInitRank");
    // A pooled stream, never destroyed: tensors record_stream()'d on it may be
    // freed after this backend is gone (tensor/stream_pool.h).
    pooled_ = std::make_unique<loom::cuda::Stream>(loom::cuda::acquire_pooled_stream(device_));
    stream_ = static_cast<cudaStream_t>(pooled_->handle());
    order_ = std::make_unique<detail::StreamOrder>(ops_, device_, stream_);
  }
  ~NcclBackend() override {
    if (comm_) ncclCommAbort(comm_);
    order_.reset();
    if (pooled_) {
      // Everything queued on the stream has run (or was aborted with the
      // communicator) before the next owner gets it.
      cudaSetDevice(device_);
      (void)cudaStreamSynchronize(stream_);
      (void)cudaGetLastError();
      try {
        loom::cuda::release_pooled_stream(*pooled_);
      } catch (...) {  // a destructor must not throw; the stream then stays leased
      }
    }
  }

  std::string name() const override { return "nccl"; }
  bool handles_half_and_avg() const override { return true; }

  /// On the caller's thread: an event on its current stream of our device; the
  /// op it belongs to waits for it (collectives/nccl/stream_order.h).
  std::function<void()> on_enqueue() override {
    DeviceScope scope(device_);  // the caller's current device is left as it was
    std::shared_ptr<detail::CapturedStream> captured = order_->capture();
    return [this, captured] { order_->before_op(captured); };
  }

  void allreduce(Tensor& t, ReduceOp op, Millis timeout) override {
    run("allreduce", {&t}, timeout, [&] {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()),
                           nccl_op(op), comm_, stream_);
    });
  }
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) override {
    run("reduce_scatter", {&in, &out}, timeout, [&] {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), static_cast<size_t>(out.numel()), nccl_type(in.dtype()),
                               nccl_op(op), comm_, stream_);
    });
  }
  void all_gather(Tensor& out, const Tensor& in, Millis timeout) override {
    run("all_gather", {&in, &out}, timeout, [&] {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), static_cast<size_t>(in.numel()), nccl_type(in.dtype()), comm_,
                           stream_);
    });
  }
  void broadcast(Tensor& t, int root, Millis timeout) override {
    run("broadcast", {&t}, timeout, [&] {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), root,
                           comm_, stream_);
    });
  }
  void barrier(Millis timeout) override {
    // A one-element allreduce on a scratch buffer, as c10d does.
    void* scratch = nullptr;
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    order_->before_launch();
    cuda_check(cudaMallocAsync(&scratch, sizeof(float), stream_), "cudaMallocAsync");
    nccl_check(ncclAllReduce(scratch, scratch, 1, ncclFloat32, ncclSum, comm_, stream_), "barrier");
    cudaFreeAsync(scratch, stream_);
    sync("barrier", timeout);
  }
  void send(const Tensor& t, int dst, int, Millis timeout) override {
    run("send", {&t}, timeout, [&] {
      return ncclSend(t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), dst, comm_, stream_);
    });
  }
  void recv(Tensor& t, int src, int, Millis timeout) override {
    run("recv", {&t}, timeout, [&] {
      return ncclRecv(t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), src, comm_, stream_);
    });
  }
  void all_to_all(Tensor& out, const Tensor& in, Millis timeout) override {
    const size_t n = static_cast<size_t>(in.numel() / size_), es = in.element_size();
    run("all_to_all", {&in, &out}, timeout, [&] {
      ncclGroupStart();
      for (int r = 0; r < size_; ++r) {
        ncclSend(static_cast<uint8_t*>(in.data_ptr()) + r * n * es, n, nccl_type(in.dtype()), r, comm_, stream_);
        ncclRecv(static_cast<uint8_t*>(out.data_ptr()) + r * n * es, n, nccl_type(in.dtype()), r, comm_, stream_);
      }
      return ncclGroupEnd();
    });
  }

 private:
  // Orders our stream after the caller's stream (the event on_enqueue()
  // captured; for a direct call, the current stream of this thread), launches,
  // marks the tensors as used on our stream so the caching allocator does not
  // hand their memory to other work before NCCL is done with it (the stream is
  // pooled, so it outlives any tensor), and waits for completion polling so
  // that the timeout holds: the Work finishes only after the collective did.
  template <typename F>
  void run(const char* op, std::initializer_list<const Tensor*> tensors, Millis timeout, F&& launch) {
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    // First, so that a call rejected below still consumes its on_enqueue() ordering.
    order_->before_launch();
    for (const Tensor* t : tensors) {
      LOOM_CHECK(t->device().is_cuda(), "nccl ", op, ": a tensor of shape ", shape_str(t->sizes()),
                 " is on the CPU; move it to cuda:", device_, " or use gloo");
      LOOM_CHECK(t->device().index == device_, "nccl ", op, ": a tensor of shape ", shape_str(t->sizes()), " is on ",
                 t->device().str(), " but this rank's communicator is on cuda:", device_);
    }
    nccl_check(launch(), op);
    for (const Tensor* t : tensors) loom::cuda::record_stream(*t, *pooled_);
    sync(op, timeout);
  }
  void sync(const char* op, Millis timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) cuda_check(e, op);
      ncclResult_t async_err = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async_err);
      nccl_check(async_err, op);
      if (std::chrono::steady_clock::now() > deadline) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        LOOM_THROW(Timeout, "nccl ", op, ": not complete after ", timeout.count(), " ms; communicator aborted");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  int size_;
  int device_ = 0;
  std::unique_ptr<loom::cuda::Stream> pooled_;  // borrowed from the pool; given back in the destructor
  cudaStream_t stream_ = nullptr;
  CudaStreamOrderOps ops_;
  std::unique_ptr<detail::StreamOrder> order_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_nccl_backend(const BackendContext& ctx) { return std::make_unique<NcclBackend>(ctx); }

}  // namespace loom::collectives
