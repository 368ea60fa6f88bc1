#include "collectives/mpi/mpi_backend.h"

#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "tensor/logging.h"

namespace loom::collectives {

bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

namespace {

// Initialises MPI once (MPI_THREAD_MULTIPLE asked) and finalises it at exit if
// we were the ones who initialised it.
struct MpiRuntime {
  int provided = MPI_THREAD_SINGLE;
  bool owned = false;
  MpiRuntime() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        LOOM_THROW(CommError, "mpi backend: MPI_Init_thread failed; start the program with mpirun");
      owned = true;
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED)
      LOOM_THROW(CommError, "mpi backend: MPI provides thread level ", provided,
                 " but the worker thread needs MPI_THREAD_SERIALIZED or better; initialise MPI with "
                 "MPI_Init_thread(MPI_THREAD_MULTIPLE) or let loom do it");
    if (provided < MPI_THREAD_MULTIPLE)
      LOOM_WARN("mpi backend: MPI_THREAD_MULTIPLE unavailable; MPI calls are serialised through one lock");
  }
  ~MpiRuntime() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned && !finalized) MPI_Finalize();
  }
};

MpiRuntime& runtime() {
  static MpiRuntime rt;
  return rt;
}

// Held around MPI calls when the library is not MPI_THREAD_MULTIPLE.
std::mutex& serial_mutex() {
  static std::mutex m;
  return m;
}

MPI_Datatype mpi_type(DType d, bool reducing) {
  switch (d) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::f16:
    case DType::bf16:
      LOOM_CHECK(!reducing, "mpi backend: 16-bit floats reach reductions unconverted");
      return MPI_UINT16_T;
    case DType::u8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kProduct: return MPI_PROD;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kMax: return MPI_MAX;
  }
  return MPI_SUM;
}

void check_rc(int rc, const char* op) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    LOOM_THROW(CommError, "mpi ", op, ": ", std::string(msg, static_cast<size_t>(len)));
  }
}

class MpiBackend : public Backend {
 public:
  explicit MpiBackend(const BackendContext& ctx) : rank_(ctx.rank), size_(ctx.size) {
    MpiRuntime& rt = runtime();
    serial_ = rt.provided < MPI_THREAD_MULTIPLE;
    int world = 0, wrank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    const int my_global = ctx.global_ranks[static_cast<size_t>(ctx.rank)];
    LOOM_CHECK_T(CommError, my_global == wrank && ctx.global_ranks.back() < world, "mpi backend: group rank ",
                 ctx.rank, " is world rank ", my_global, " but MPI says this process is rank ", wrank, " of ", world,
                 "; with the mpi backend the world group must be MPI_COMM_WORLD (start with mpirun -np N)");
    if (ctx.size == world) {
      check_rc(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "comm_dup");
    } else {
      MPI_Group wg, g;
      MPI_Comm_group(MPI_COMM_WORLD, &wg);
      MPI_Group_incl(wg, ctx.size, ctx.global_ranks.data(), &g);
      check_rc(MPI_Comm_create_group(MPI_COMM_WORLD, g, 0, &comm_), "comm_create_group");
      MPI_Group_free(&g);
      MPI_Group_free(&wg);
    }
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~MpiBackend() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !broken_) MPI_Comm_free(&comm_);
  }

  std::string name() const override { return "mpi"; }

  void allreduce(Tensor& t, ReduceOp op, Millis timeout) override {
    run("allreduce", timeout, [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.dtype(), true),
                            mpi_op(op), comm_, r);
    });
  }
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) override {
    run("reduce_scatter", timeout, [&](MPI_Request* r) {
      return MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), static_cast<int>(out.numel()),
                                       mpi_type(in.dtype(), true), mpi_op(op), comm_, r);
    });
  }
  void all_gather(Tensor& out, const Tensor& in, Millis timeout) override {
    run("all_gather", timeout, [&](MPI_Request* r) {
      MPI_Datatype ty = mpi_type(in.dtype(), false);
      return MPI_Iallgather(in.data_ptr(), static_cast<int>(in.numel()), ty, out.data_ptr(),
                            static_cast<int>(in.numel()), ty, comm_, r);
    });
  }
  void broadcast(Tensor& t, int root, Millis timeout) override {
    run("broadcast", timeout, [&](MPI_Request* r) {
      return MPI_Ibcast(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.dtype(), false), root, comm_, r);
    });
  }
  void barrier(Millis timeout) override {
    run("barrier", timeout, [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
  }
  void send(const Tensor& t, int dst, int tag, Millis timeout) override {
    run("send", timeout, [&](MPI_Request* r) {
      return MPI_Isend(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.dtype(), false), dst, tag, comm_, r);
    });
  }
  void recv(Tensor& t, int src, int tag, Millis timeout) override {
    run("recv", timeout, [&](MPI_Request* r) {
      return MPI_Irecv(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.dtype(), false), src, tag, comm_, r);
    });
  }
  void all_to_all(Tensor& out, const Tensor& in, Millis timeout) override {
    run("all_to_all", timeout, [&](MPI_Request* r) {
      MPI_Datatype ty = mpi_type(in.dtype(), false);
      int n = static_cast<int>(in.numel() / size_);
      return MPI_Ialltoall(in.data_ptr(), n, ty, out.data_ptr(), n, ty, comm_, r);
    });
  }

 private:
  // Starts a non-blocking call and polls it until done or the timeout.
  template <typename Start>
  void run(const char* op, Millis timeout, Start&& start) {
    LOOM_CHECK_T(CommError, !broken_, "mpi ", op, ": the communicator is unusable after an earlier timeout");
    MPI_Request req = MPI_REQUEST_NULL;
    {
      std::unique_lock<std::mutex> lk(serial_mutex(), std::defer_lock);
      if (serial_) lk.lock();
      check_rc(start(&req), op);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int done = 0;
    for (uint64_t spin = 0;; ++spin) {
      {
        std::unique_lock<std::mutex> lk(serial_mutex(), std::defer_lock);
        if (serial_) lk.lock();
        check_rc(MPI_Test(&req, &done, MPI_STATUS_IGNORE), op);
      }
      if (done) return;
      if ((spin & 255) == 0 && std::chrono::steady_clock::now() > deadline) {
        broken_ = true;  // the request cannot be cancelled; the communicator is left as is
        LOOM_THROW(Timeout, "mpi ", op, ": not complete after ", timeout.count(), " ms");
      }
      if (spin > 4096) std::this_thread::yield();
    }
  }

  int rank_, size_;
  bool serial_ = false;
  bool broken_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace

std::unique_ptr<Backend> make_mpi_backend(const BackendContext& ctx) { return std::make_unique<MpiBackend>(ctx); }

}  // namespace loom::collectives
