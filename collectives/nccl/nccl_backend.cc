#include "collectives/nccl/nccl_backend.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <thread>

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

class NcclBackend : public Backend {
 public:
  explicit NcclBackend(const BackendContext& ctx) : size_(ctx.size) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
      LOOM_THROW(CommError, "nccl backend: no CUDA device is visible; use the gloo backend on CPU");
    const char* lr = std::getenv("LOCAL_RANK");
    device_ = (lr ? std::atoi(lr) : ctx.rank) % count;
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
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
  }
  ~NcclBackend() override {
    if (comm_) ncclCommAbort(comm_);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "nccl"; }
  bool handles_half_and_avg() const override { return true; }

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
  // Orders our stream after the work queued so far on the device's current
  // compute stream (tensor/cuda_runtime.h; on the ProcessGroup's worker thread
  // that is the device's default compute stream unless a StreamGuard is set
  // there), launches, marks the tensors as used on our stream so the caching
  // allocator does not hand their memory to compute before NCCL is done with
  // it, and waits for completion polling so that the timeout holds.
  template <typename F>
  void run(const char* op, std::initializer_list<const Tensor*> tensors, Millis timeout, F&& launch) {
    for (const Tensor* t : tensors) {
      LOOM_CHECK(t->device().is_cuda(), "nccl ", op, ": a tensor of shape ", shape_str(t->sizes()),
                 " is on the CPU; move it to cuda:", device_, " or use gloo");
      LOOM_CHECK(t->device().index == device_, "nccl ", op, ": a tensor of shape ", shape_str(t->sizes()), " is on ",
                 t->device().str(), " but this rank's communicator is on cuda:", device_);
    }
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    auto compute = static_cast<cudaStream_t>(loom::cuda::current_stream(device_).handle());
    cuda_check(cudaEventRecord(ready_, compute), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
    nccl_check(launch(), op);
    const loom::cuda::Stream ours = loom::cuda::Stream::borrow(stream_, device_);
    for (const Tensor* t : tensors) loom::cuda::record_stream(*t, ours);
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
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_nccl_backend(const BackendContext& ctx) { return std::make_unique<NcclBackend>(ctx); }

}  // namespace loom::collectives
