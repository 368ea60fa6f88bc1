// Bus bandwidth (nccl-tests definition) of allreduce, all_gather and
// reduce_scatter through our gloo and mpi ProcessGroups, and of raw
// MPI_Allreduce, 4 KiB .. max bytes. Run: mpirun -np N bench_collectives [MAX_MIB [REPS]]
// Every variant gets one untimed warm-up call, then REPS timed rounds in which
// the variants take turns (so machine noise hits them alike); a call's time is
// the max over ranks after a barrier, and each figure is the median of its REPS.
// One line per figure: op backend ranks bytes time_us algbw_GBps busbw_GBps; then README's table of allreduce busbw,
// in markdown (the lines starting with '|'), for the sizes from LOOM_BENCH_TABLE_MIN_MIB (default 64) up, and the
// largest size always. README's command: for n in 2 4; do mpirun ... -np $n ...; done | grep '^|' | awk '!seen[$0]++'.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "collectives/tcp_store.h"

using namespace loom;
using namespace loom::collectives;

namespace {

// Seconds of `calls` back-to-back calls of f per call, the max over ranks.
double time_once(const std::function<void()>& f, int calls) {
  MPI_Barrier(MPI_COMM_WORLD);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) f();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls;
  double worst = 0;
  MPI_Allreduce(&s, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

struct Variant {
  const char* op;
  const char* backend;
  size_t bytes;
  double factor;
  std::function<void()> f;
  std::vector<double> times;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Prints one figure's line (rank 0); returns its busbw in GB/s.
double report(int rank, const char* op, const char* backend, int n, size_t bytes, double s, double factor) {
  double algbw = static_cast<double>(bytes) / s / 1e9;
  if (rank == 0) {
    std::printf("%-14s %-5s %d %10zu %12.1f %8.3f %8.3f\n", op, backend, n, bytes, s * 1e6, algbw, algbw * factor);
    std::fflush(stdout);
  }
  return algbw * factor;
}

std::string size_str(size_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= (1u << 10) && bytes % (1u << 10) == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  const size_t max_bytes = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256) << 20;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  {
    const char* port = std::getenv("MASTER_PORT");
    TCPStoreOptions so;
    so.is_server = rank == 0;
    auto store = std::make_shared<TCPStore>("127.0.0.1", port ? std::atoi(port) : 29533, so);
    ProcessGroupOptions po = default_process_group_options();
    po.publish_progress = true;
    // LOOM_BENCH_NO_GLOO=1 leaves the gloo group out (its threads then cannot
    // compete with the others for the cores).
    const bool with_gloo = !std::getenv("LOOM_BENCH_NO_GLOO");
    std::unique_ptr<ProcessGroup> gloo_pg =
        with_gloo ? std::make_unique<ProcessGroup>(store, rank, n, "gloo", po, "bench_gloo") : nullptr;
    ProcessGroup mpi(store, rank, n, "mpi", po, "bench_mpi");
    std::vector<ProcessGroup*> groups{&mpi};
    if (with_gloo) groups.push_back(gloo_pg.get());
    if (rank == 0) std::printf("# op backend ranks bytes time_us algbw_GBps busbw_GBps\n");
    const double ar = 2.0 * (n - 1) / n, ag = static_cast<double>(n - 1) / n;
    std::map<size_t, std::map<std::string, double>> allreduce_busbw;  // bytes -> backend -> GB/s
    for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
      const int64_t count = static_cast<int64_t>(bytes / 4);
      // Small buffers are timed over several back-to-back calls per round.
      const int calls = bytes <= (1u << 20) ? 20 : bytes <= (16u << 20) ? 3 : 1;
      Tensor buf = empty({count}, DType::f32);
      Tensor chunk = empty({count / n}, DType::f32);
      Tensor full = empty({count / n * n}, DType::f32);
      std::memset(buf.data_ptr(), 0, buf.nbytes());
      std::memset(chunk.data_ptr(), 0, chunk.nbytes());
      std::memset(full.data_ptr(), 0, full.nbytes());
      const size_t gathered = static_cast<size_t>(full.nbytes());
      std::vector<Variant> vs;
      vs.push_back({"allreduce",
                    "raw",
                    bytes,
                    ar,
                    [&] {
                      MPI_Allreduce(MPI_IN_PLACE, buf.data_ptr(), static_cast<int>(count), MPI_FLOAT, MPI_SUM,
                                    MPI_COMM_WORLD);
                    },
                    {}});
      for (ProcessGroup* pg : groups) {
        const char* b = pg == &mpi ? "mpi" : "gloo";
        vs.push_back({"allreduce", b, bytes, ar, [&buf, pg] { pg->allreduce(buf)->wait(); }, {}});
        vs.push_back({"all_gather", b, gathered, ag, [&full, &chunk, pg] { pg->all_gather(full, chunk)->wait(); }, {}});
        vs.push_back(
            {"reduce_scatter", b, gathered, ag, [&full, &chunk, pg] { pg->reduce_scatter(chunk, full)->wait(); }, {}});
      }
      for (auto& v : vs) v.f();  // warm-up
      for (int r = 0; r < reps; ++r)
        for (auto& v : vs) v.times.push_back(time_once(v.f, calls));
      for (auto& v : vs) {
        const double busbw = report(rank, v.op, v.backend, n, v.bytes, median(v.times), v.factor);
        if (std::string(v.op) == "allreduce") allreduce_busbw[bytes][v.backend] = busbw;
      }
      // The figures count only if the result is right: rank r contributes
      // r + 1 everywhere, so every element must be n (n + 1) / 2 (exact in f32).
      for (ProcessGroup* pg : groups) {
        float* p = static_cast<float*>(buf.data_ptr());
        std::fill(p, p + count, static_cast<float>(rank + 1));
        pg->allreduce(buf)->wait();
        const float want = static_cast<float>(n * (n + 1) / 2);
        const int64_t bad = std::count_if(p, p + count, [want](float x) { return x != want; });
        if (bad) {
          std::fprintf(stderr, "rank %d: %s allreduce of %zu bytes: %lld elements differ from %g\n", rank,
                       pg == &mpi ? "mpi" : "gloo", bytes, static_cast<long long>(bad), want);
          MPI_Abort(MPI_COMM_WORLD, 1);
        }
        float* f = static_cast<float*>(full.data_ptr());
        std::fill(f, f + full.numel(), static_cast<float>(rank + 1));
        pg->reduce_scatter(chunk, full)->wait();
        const float* q = static_cast<const float*>(chunk.data_ptr());
        if (std::count_if(q, q + chunk.numel(), [want](float x) { return x != want; })) {
          std::fprintf(stderr, "rank %d: %s reduce_scatter of %zu bytes is wrong\n", rank, pg == &mpi ? "mpi" : "gloo",
                       gathered);
          MPI_Abort(MPI_COMM_WORLD, 1);
        }
      }
    }
    if (rank == 0) {
      const char* min_env = std::getenv("LOOM_BENCH_TABLE_MIN_MIB");
      const size_t table_min = (min_env ? std::strtoull(min_env, nullptr, 10) : 64) << 20;
      std::printf("# README table: allreduce busbw (GB/s), f32, median of %d rounds, this run\n", reps);
      std::printf("| ranks, bytes | raw MPI_Allreduce | loom mpi allreduce | loom gloo allreduce |\n");
      std::printf("|---|---|---|---|\n");
      for (const auto& [bytes, by] : allreduce_busbw) {
        if (bytes < table_min && bytes != allreduce_busbw.rbegin()->first) continue;
        auto cell = [&by](const char* b) {
          char buf[32];
          auto it = by.find(b);
          if (it == by.end()) return std::string("—");
          std::snprintf(buf, sizeof buf, "%.2f", it->second);
          return std::string(buf);
        };
        std::printf("| %d, %s | %s | %s | %s |\n", n, size_str(bytes).c_str(), cell("raw").c_str(), cell("mpi").c_str(),
                    cell("gloo").c_str());
      }
      std::fflush(stdout);
    }
    if (with_gloo) gloo_pg->barrier()->wait();
    mpi.barrier()->wait();
  }
  MPI_Finalize();
  return 0;
}
