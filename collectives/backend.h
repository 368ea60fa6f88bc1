// Backend: the synchronous transport under a ProcessGroup (gloo, mpi, nccl).
// The group's worker thread calls it one op at a time with contiguous tensors;
// a registry maps backend names to factories.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/store.h"
#include "collectives/types.h"
#include "tensor/tensor.h"

namespace loom::collectives {

/// What a backend needs to connect its group.
struct BackendContext {
  int rank = 0;                   // rank within the group
  int size = 1;                   // group size
  std::vector<int> global_ranks;  // group rank -> world rank
  std::shared_ptr<Store> store;   // already prefixed for this group
  std::string group_name;
  Millis timeout{300000};   // connect/rendezvous timeout
  std::string hostname;     // address to listen on (gloo); empty: auto
  std::string iface;        // network interface (gloo); wins over hostname
  std::string master_addr;  // rank 0's store; gloo listens on the route there
  int master_port = 0;
};

/// Every op blocks until done or until timeout, then throws Timeout (or
/// CommError). Tensors are contiguous; dtypes f16/bf16 reach reductions only
/// when handles_half_and_avg() (else the ProcessGroup converts to f32 and
/// turns kAvg into kSum).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual bool handles_half_and_avg() const { return false; }
  /// Called by the ProcessGroup on the calling thread when it enqueues an op,
  /// before the call returns; what it returns (may be empty) runs on the worker
  /// thread right before that op. The nccl backend records an event on the
  /// caller's current CUDA stream here and makes its own stream wait for it
  /// there, so a collective orders after the caller's work whichever stream
  /// the caller had set (collectives/nccl/stream_order.h). Default: nothing.
  virtual std::function<void()> on_enqueue() { return {}; }
  virtual void allreduce(Tensor& t, ReduceOp op, Millis timeout) = 0;
  /// in: size * out.numel() elements; out gets this rank's reduced chunk.
  virtual void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) = 0;
  /// out: size * in.numel() elements, rank-major.
  virtual void all_gather(Tensor& out, const Tensor& in, Millis timeout) = 0;
  virtual void broadcast(Tensor& t, int root, Millis timeout) = 0;
  virtual void barrier(Millis timeout) = 0;
  virtual void send(const Tensor& t, int dst, int tag, Millis timeout) = 0;
  virtual void recv(Tensor& t, int src, int tag, Millis timeout) = 0;
  /// in and out: size equal chunks; chunk j of in goes to rank j.
  virtual void all_to_all(Tensor& out, const Tensor& in, Millis timeout) = 0;
};

using BackendFactory = std::function<std::unique_ptr<Backend>(const BackendContext&)>;

/// Registers (or replaces) a backend under name.
void register_backend(const std::string& name, BackendFactory factory);
/// True when a backend of that name is available in this build.
bool has_backend(const std::string& name);
/// Names of the available backends ("gloo", "mpi", and "nccl" with CUDA).
std::vector<std::string> backend_names();
/// Builds a backend; throws InvalidArgument listing the available names.
std::unique_ptr<Backend> create_backend(const std::string& name, const BackendContext& ctx);

}  // namespace loom::collectives
