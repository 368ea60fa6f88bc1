// Bus bandwidth (nccl-tests definition) of allreduce, all_gather and
// reduce_scatter through our gloo and mpi ProcessGroups, and of raw
// MPI_Allreduce, 4 KiB .. max bytes. Run: mpirun -np N bench_collectives [MAX_MIB]
// One line per figure: op backend ranks bytes time_us algbw_GBps busbw_GBps.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>

#include "collectives/process_group.h"
#include "collectives/tcp_store.h"

using namespace loom;
using namespace loom::collectives;

namespace {

// Mean seconds per call after a warm-up, the max over ranks.
double time_it(const std::function<void()>& f, int iters) {
  f();
  MPI_Barrier(MPI_COMM_WORLD);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  double worst = 0;
  MPI_Allreduce(&s, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

void report(int rank, const char* op, const char* backend, int n, size_t bytes, double s, double factor) {
  if (rank != 0) return;
  double algbw = static_cast<double>(bytes) / s / 1e9;
  std::printf("%-14s %-5s %d %10zu %12.1f %8.3f %8.3f\n", op, backend, n, bytes, s * 1e6, algbw, algbw * factor);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const size_t max_bytes = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256) << 20;
  {
    const char* port = std::getenv("MASTER_PORT");
    TCPStoreOptions so;
    so.is_server = rank == 0;
    auto store = std::make_shared<TCPStore>("127.0.0.1", port ? std::atoi(port) : 29533, so);
    ProcessGroupOptions po = default_process_group_options();
    po.publish_progress = true;
    ProcessGroup gloo(store, rank, n, "gloo", po, "bench_gloo");
    ProcessGroup mpi(store, rank, n, "mpi", po, "bench_mpi");
    if (rank == 0) std::printf("# op backend ranks bytes time_us algbw_GBps busbw_GBps\n");
    const double ar = 2.0 * (n - 1) / n, ag = static_cast<double>(n - 1) / n;
    for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
      const int64_t count = static_cast<int64_t>(bytes / 4);
      const int iters = bytes <= (1u << 20) ? 50 : bytes <= (16u << 20) ? 10 : 3;
      Tensor buf = empty({count}, DType::f32);
      Tensor chunk = empty({count / n}, DType::f32);
      Tensor full = empty({count / n * n}, DType::f32);
      std::memset(buf.data_ptr(), 0, buf.nbytes());
      std::memset(chunk.data_ptr(), 0, chunk.nbytes());
      std::memset(full.data_ptr(), 0, full.nbytes());
      const size_t gathered = static_cast<size_t>(full.nbytes());
      report(rank, "allreduce", "raw", n, bytes, time_it([&] {
               MPI_Allreduce(MPI_IN_PLACE, buf.data_ptr(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
             }, iters), ar);
      for (ProcessGroup* pg : {&mpi, &gloo}) {
        const char* b = pg == &mpi ? "mpi" : "gloo";
        report(rank, "allreduce", b, n, bytes, time_it([&] { pg->allreduce(buf)->wait(); }, iters), ar);
        report(rank, "all_gather", b, n, gathered, time_it([&] { pg->all_gather(full, chunk)->wait(); }, iters), ag);
        report(rank, "reduce_scatter", b, n, gathered,
               time_it([&] { pg->reduce_scatter(chunk, full)->wait(); }, iters), ag);
      }
    }
    gloo.barrier()->wait();
    mpi.barrier()->wait();
  }
  MPI_Finalize();
  return 0;
}
