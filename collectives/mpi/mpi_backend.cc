#include "collectives/mpi/mpi_backend.h"

#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "collectives/reduce.h"
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
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::f16:
    case DType::bf16:
      LOOM_CHECK(!reducing, "mpi backend: 16-bit floats reach reductions unconverted");
      return MPI_UINT16_T;
    case DType::u8:
      return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return MPI_SUM;
    case ReduceOp::kProduct:
      return MPI_PROD;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
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
    LOOM_CHECK_T(CommError, my_global == wrank && ctx.global_ranks.back() < world, "mpi backend: group rank ", ctx.rank,
                 " is world rank ", my_global, " but MPI says this process is rank ", wrank, " of ", world,
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
    // The ring allreduce's point-to-point traffic gets its own communicator so
    // its messages never match the user's send/recv tags.
    check_rc(MPI_Comm_dup(comm_, &ring_comm_), "comm_dup");
    MPI_Comm_set_errhandler(ring_comm_, MPI_ERRORS_RETURN);
  }
  ~MpiBackend() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && !broken_) {
      MPI_Comm_free(&ring_comm_);
      MPI_Comm_free(&comm_);
    }
  }

  std::string name() const override { return "mpi"; }

  void allreduce(Tensor& t, ReduceOp op, Millis timeout) override {
    // Open MPI's MPI_Iallreduce (libnbc) picks recursive doubling for large
    // buffers on few ranks, which moves twice the bytes of the ring that the
    // blocking MPI_Allreduce uses: about half raw MPI's bus bandwidth. Large
    // buffers therefore go through our own non-blocking ring.
    if (size_ > 1 && static_cast<int64_t>(t.nbytes()) >= ring_min_bytes_ && t.numel() >= size_)
      return ring_allreduce(t, op, timeout);
    run("allreduce", timeout, [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t.dtype(), true),
                            mpi_op(op), comm_, r);
    });
  }
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) override {
    // Same reason as allreduce: libnbc's MPI_Ireduce_scatter_block is far
    // below a ring on large buffers.
    if (size_ > 1 && static_cast<int64_t>(in.nbytes()) >= ring_min_bytes_)
      return ring_reduce_scatter(out, in, op, timeout);
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
  // Buffers of at least this many bytes take the ring allreduce; the
  // LOOM_MPI_RING_MIN_BYTES environment variable overrides it (a huge value
  // turns the ring off).
  static int64_t ring_min_bytes_from_env() {
    const char* v = std::getenv("LOOM_MPI_RING_MIN_BYTES");
    return v && *v ? std::strtoll(v, nullptr, 10) : int64_t{1} << 20;
  }

  using Clock = std::chrono::steady_clock;

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
    wait_all(&req, 1, op, Clock::now() + timeout, timeout);
  }

  // Polls n requests until all are done, or throws Timeout after deadline.
  void wait_all(MPI_Request* reqs, int n, const char* op, Clock::time_point deadline, Millis timeout) {
    int done = 0;
    for (uint64_t spin = 0;; ++spin) {
      {
        std::unique_lock<std::mutex> lk(serial_mutex(), std::defer_lock);
        if (serial_) lk.lock();
        check_rc(MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE), op);
      }
      if (done) return;
      if ((spin & 255) == 0 && Clock::now() > deadline) {
        broken_ = true;  // the requests cannot be cancelled; the communicator is left as is
        LOOM_THROW(Timeout, "mpi ", op, ": not complete after ", timeout.count(), " ms");
      }
      if (spin > 4096) std::this_thread::yield();
    }
  }

  // Bandwidth-optimal ring allreduce of t in place: size_ - 1 reduce-scatter
  // steps (receive the left neighbour's partial chunk into scratch_ and reduce
  // it into ours) then size_ - 1 all-gather steps (receive finished chunks in
  // place). Each rank sends and receives 2 (size_ - 1) / size_ of the buffer.
  void ring_allreduce(Tensor& t, ReduceOp op, Millis timeout) {
    const char* name = "allreduce";
    LOOM_CHECK_T(CommError, !broken_, "mpi ", name, ": the communicator is unusable after an earlier timeout");
    const auto deadline = Clock::now() + timeout;
    const int n = size_;
    const int64_t count = t.numel();
    const size_t esize = t.nbytes() / static_cast<size_t>(count);
    const MPI_Datatype ty = mpi_type(t.dtype(), true);
    auto* base = static_cast<unsigned char*>(t.data_ptr());
    auto begin = [&](int c) { return count * c / n; };
    auto len = [&](int c) { return begin(c + 1) - begin(c); };
    auto ptr = [&](int c) { return base + static_cast<size_t>(begin(c)) * esize; };
    scratch_.resize(static_cast<size_t>(len(n - 1) + 1) * esize);
    auto step = [&](int send_c, int recv_c, void* recv_to) {
      ring_step(ptr(send_c), len(send_c), recv_to, len(recv_c), ty, name, deadline, timeout);
    };
    for (int s = 0; s < n - 1; ++s) {
      const int send_c = (rank_ - s + n) % n, recv_c = (rank_ - s - 1 + n) % n;
      step(send_c, recv_c, scratch_.data());
      detail::reduce_into(ptr(recv_c), scratch_.data(), static_cast<size_t>(len(recv_c)), t.dtype(), op);
    }
    for (int s = 0; s < n - 1; ++s) {
      const int send_c = (rank_ + 1 - s + n) % n, recv_c = (rank_ - s + n) % n;
      step(send_c, recv_c, ptr(recv_c));
    }
  }

  // Ring reduce-scatter (out = reduced chunk rank_ of in), the first half of
  // ring_allreduce done out of place: the partial sum travels round the ring
  // in scratch buffers and the last step lands it in out.
  void ring_reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) {
    const char* name = "reduce_scatter";
    LOOM_CHECK_T(CommError, !broken_, "mpi ", name, ": the communicator is unusable after an earlier timeout");
    const auto deadline = Clock::now() + timeout;
    const int n = size_;
    const int64_t c = out.numel();
    const size_t cbytes = out.nbytes();
    const MPI_Datatype ty = mpi_type(in.dtype(), true);
    const auto* src = static_cast<const unsigned char*>(in.data_ptr());
    auto chunk = [&](int k) { return src + static_cast<size_t>(k) * cbytes; };
    scratch_.resize(2 * cbytes);
    unsigned char* recv_buf = scratch_.data();
    unsigned char* send_buf = scratch_.data() + cbytes;
    for (int s = 0; s < n - 1; ++s) {
      const int send_c = (rank_ - s - 1 + 2 * n) % n, recv_c = (rank_ - s - 2 + 2 * n) % n;
      const bool last = s == n - 2;  // then recv_c == rank_
      unsigned char* to = last ? static_cast<unsigned char*>(out.data_ptr()) : recv_buf;
      ring_step(s == 0 ? chunk(send_c) : send_buf, c, to, c, ty, name, deadline, timeout);
      detail::reduce_into(to, chunk(recv_c), static_cast<size_t>(c), in.dtype(), op);
      std::swap(recv_buf, send_buf);
    }
  }

  // One ring step on ring_comm_: send to the right neighbour while receiving
  // from the left one, polled until both finish or the deadline.
  void ring_step(const void* send, int64_t send_n, void* recv, int64_t recv_n, MPI_Datatype ty, const char* name,
                 Clock::time_point deadline, Millis timeout) {
    const int right = (rank_ + 1) % size_, left = (rank_ + size_ - 1) % size_;
    MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    {
      std::unique_lock<std::mutex> lk(serial_mutex(), std::defer_lock);
      if (serial_) lk.lock();
      check_rc(MPI_Irecv(recv, static_cast<int>(recv_n), ty, left, 0, ring_comm_, &reqs[0]), name);
      check_rc(MPI_Isend(send, static_cast<int>(send_n), ty, right, 0, ring_comm_, &reqs[1]), name);
    }
    wait_all(reqs, 2, name, deadline, timeout);
  }

  int rank_, size_;
  bool serial_ = false;
  bool broken_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm ring_comm_ = MPI_COMM_NULL;
  int64_t ring_min_bytes_ = ring_min_bytes_from_env();
  std::vector<unsigned char> scratch_;  // the ring's receive buffer, reused
};

}  // namespace

std::unique_ptr<Backend> make_mpi_backend(const BackendContext& ctx) { return std::make_unique<MpiBackend>(ctx); }

}  // namespace loom::collectives
