// Bus bandwidth (nccl-tests definition) of allreduce, reduce_scatter and
// all_gather through our gloo and mpi ProcessGroups and of Open MPI's own
// blocking calls on the same buffers (raw MPI_Allreduce, MPI_Reduce_scatter_block,
// MPI_Allgather), f32, sizes MIN_KIB .. MAX_MIB doubling.
// Run: mpirun -np N bench_collectives [MAX_MIB [REPS [MIN_KIB]]]   (defaults 64, 5, 1024)
// Every variant gets one untimed warm-up call, then REPS timed rounds in which
// the variants take turns (so machine noise hits them alike); a call's time is
// the max over ranks after a barrier, and each figure is the median of its REPS.
// One line per figure: op backend ranks bytes time_us algbw_GBps busbw_GBps, the
// ratio to raw MPI_Allreduce's busbw at that size (vs_raw_ar), the ratio to the
// same op's raw MPI call (vs_raw_op), and the page faults rank 0 took per call
// (minflt: fresh memory the call touched). Then README's table (lines starting
// with '|'): per size and op, raw / mpi / gloo busbw, gloo / raw MPI_Allreduce,
// and gloo-tcp (a second gloo group with LOOM_GLOO_CMA=0: every byte over TCP).
// LOOM_BENCH_NO_GLOO=1 leaves both gloo groups out.
#include <mpi.h>

#include <sys/resource.h>
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

// Page faults of this process so far (minor: fresh pages the kernel had to map and zero).
long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Seconds of `calls` back-to-back calls of f per call, the max over ranks;
// *faults gets rank 0's minor page faults per call.
double time_once(const std::function<void()>& f, int calls, double* faults) {
  MPI_Barrier(MPI_COMM_WORLD);
  const long f0 = minor_faults();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) f();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls;
  *faults = static_cast<double>(minor_faults() - f0) / calls;
  double worst = 0;
  MPI_Allreduce(&s, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

struct Variant {
  const char* op = "";
  const char* backend = "";
  size_t bytes = 0;
  double factor = 1;
  std::function<void()> f;
  std::vector<double> times, faults;
  double busbw = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
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
  const size_t max_bytes = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 64) << 20;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  const size_t min_bytes = (argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1024) << 10;
  {
    const char* port = std::getenv("MASTER_PORT");
    TCPStoreOptions so;
    so.is_server = rank == 0;
    auto store = std::make_shared<TCPStore>("127.0.0.1", port ? std::atoi(port) : 29533, so);
    ProcessGroupOptions po = default_process_group_options();
    po.publish_progress = true;
    // LOOM_BENCH_NO_GLOO=1 leaves the gloo groups out (their threads then
    // cannot compete with the others for the cores). Two gloo groups: the
    // default (on one host its rings read the peers' memory) and "gloo-tcp"
    // with LOOM_GLOO_CMA=0, every byte over TCP as between hosts.
    const bool with_gloo = !std::getenv("LOOM_BENCH_NO_GLOO");
    std::unique_ptr<ProcessGroup> gloo_pg, gloo_tcp;
    if (with_gloo) {
      gloo_pg = std::make_unique<ProcessGroup>(store, rank, n, "gloo", po, "bench_gloo");
      const char* was = std::getenv("LOOM_GLOO_CMA");
      const std::string saved = was ? was : "";
      ::setenv("LOOM_GLOO_CMA", "0", 1);
      gloo_tcp = std::make_unique<ProcessGroup>(store, rank, n, "gloo", po, "bench_gloo_tcp");
      if (was) {
        ::setenv("LOOM_GLOO_CMA", saved.c_str(), 1);
      } else {
        ::unsetenv("LOOM_GLOO_CMA");
      }
    }
    ProcessGroup mpi(store, rank, n, "mpi", po, "bench_mpi");
    std::vector<ProcessGroup*> groups{&mpi};
    if (with_gloo) {
      groups.push_back(gloo_pg.get());
      groups.push_back(gloo_tcp.get());
    }
    auto backend_of = [&](ProcessGroup* pg) { return pg == &mpi ? "mpi" : pg == gloo_pg.get() ? "gloo" : "gloo-tcp"; };
    if (rank == 0)
      std::printf(
          "# op            backend ranks      bytes      time_us algbw_GBps busbw_GBps vs_raw_ar vs_raw_op minflt\n");
    const double ar = 2.0 * (n - 1) / n, ag = static_cast<double>(n - 1) / n;
    // bytes -> op -> backend -> busbw (GB/s)
    std::map<size_t, std::map<std::string, std::map<std::string, double>>> busbw;
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
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
      const int ccount = static_cast<int>(chunk.numel());
      std::vector<Variant> vs;
      auto add = [&vs](const char* op, const char* backend, size_t b, double factor, std::function<void()> f) {
        Variant v;
        v.op = op;
        v.backend = backend;
        v.bytes = b;
        v.factor = factor;
        v.f = std::move(f);
        vs.push_back(std::move(v));
      };
      add("allreduce", "raw", bytes, ar, [&] {
        MPI_Allreduce(MPI_IN_PLACE, buf.data_ptr(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      });
      add("reduce_scatter", "raw", gathered, ag, [&] {
        MPI_Reduce_scatter_block(full.data_ptr(), chunk.data_ptr(), ccount, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      });
      add("all_gather", "raw", gathered, ag, [&] {
        MPI_Allgather(chunk.data_ptr(), ccount, MPI_FLOAT, full.data_ptr(), ccount, MPI_FLOAT, MPI_COMM_WORLD);
      });
      for (ProcessGroup* pg : groups) {
        const char* b = backend_of(pg);
        add("allreduce", b, bytes, ar, [&buf, pg] { pg->allreduce(buf)->wait(); });
        add("reduce_scatter", b, gathered, ag, [&full, &chunk, pg] { pg->reduce_scatter(chunk, full)->wait(); });
        add("all_gather", b, gathered, ag, [&full, &chunk, pg] { pg->all_gather(full, chunk)->wait(); });
      }
      for (auto& v : vs) v.f();  // warm-up
      for (int r = 0; r < reps; ++r)
        for (auto& v : vs) {
          double faults = 0;
          v.times.push_back(time_once(v.f, calls, &faults));
          v.faults.push_back(faults);
        }
      for (auto& v : vs) {
        v.busbw = static_cast<double>(v.bytes) / median(v.times) / 1e9 * v.factor;
        busbw[bytes][v.op][v.backend] = v.busbw;
      }
      for (auto& v : vs) {
        if (rank != 0) continue;
        const double t = median(v.times), algbw = static_cast<double>(v.bytes) / t / 1e9;
        std::printf("%-14s %-7s %5d %10zu %12.1f %10.3f %10.3f %9.2f %9.2f %6.0f\n", v.op, v.backend, n, v.bytes,
                    t * 1e6, algbw, v.busbw, v.busbw / busbw[bytes]["allreduce"]["raw"],
                    v.busbw / busbw[bytes][v.op]["raw"], median(v.faults));
        std::fflush(stdout);
      }
      // The figures count only if the results are right: rank r contributes
      // r + 1 everywhere, so every reduced element must be n (n + 1) / 2 (exact
      // in f32), and every gathered block r must be r + 1.
      const float want = static_cast<float>(n * (n + 1) / 2);
      auto fail = [&](const char* b, const char* op) {
        std::fprintf(stderr, "rank %d: %s %s of %zu bytes: wrong result\n", rank, b, op, bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
      };
      for (ProcessGroup* pg : groups) {
        float* p = static_cast<float*>(buf.data_ptr());
        std::fill(p, p + count, static_cast<float>(rank + 1));
        pg->allreduce(buf)->wait();
        if (std::count_if(p, p + count, [want](float x) { return x != want; })) fail(backend_of(pg), "allreduce");
        float* f = static_cast<float*>(full.data_ptr());
        std::fill(f, f + full.numel(), static_cast<float>(rank + 1));
        pg->reduce_scatter(chunk, full)->wait();
        const float* q = static_cast<const float*>(chunk.data_ptr());
        if (std::count_if(q, q + chunk.numel(), [want](float x) { return x != want; }))
          fail(backend_of(pg), "reduce_scatter");
        float* c = static_cast<float*>(chunk.data_ptr());
        std::fill(c, c + chunk.numel(), static_cast<float>(rank + 1));
        pg->all_gather(full, chunk)->wait();
        for (int r = 0; r < n; ++r)
          if (std::count_if(f + r * chunk.numel(), f + (r + 1) * chunk.numel(),
                            [r](float x) { return x != static_cast<float>(r + 1); }))
            fail(backend_of(pg), "all_gather");
      }
    }
    if (rank == 0) {
      std::printf(
          "# README table: busbw (GB/s), f32, %d ranks, median of %d rounds, this run; last column: loom gloo's "
          "busbw over raw MPI_Allreduce's at the same size\n",
          n, reps);
      std::printf(
          "| ranks, bytes | op | raw MPI | loom mpi | loom gloo | gloo / raw MPI_Allreduce | loom gloo, TCP only |\n");
      std::printf("|---|---|---|---|---|---|---|\n");
      const char* raw_name[] = {"MPI_Allreduce", "MPI_Reduce_scatter_block", "MPI_Allgather"};
      const char* ops[] = {"allreduce", "reduce_scatter", "all_gather"};
      for (const auto& [bytes, by_op] : busbw)
        for (int o = 0; o < 3; ++o) {
          const auto& by = by_op.at(ops[o]);
          auto cell = [&by](const char* b) {
            char txt[32];
            auto it = by.find(b);
            if (it == by.end()) return std::string("—");
            std::snprintf(txt, sizeof txt, "%.2f", it->second);
            return std::string(txt);
          };
          char ratio[32] = "—";
          if (by.count("gloo"))
            std::snprintf(ratio, sizeof ratio, "%.2f", by.at("gloo") / by_op.at("allreduce").at("raw"));
          std::printf("| %d, %s | %s (raw: %s) | %s | %s | **%s** | %s | %s |\n", n, size_str(bytes).c_str(), ops[o],
                      raw_name[o], cell("raw").c_str(), cell("mpi").c_str(), cell("gloo").c_str(), ratio,
                      cell("gloo-tcp").c_str());
        }
      std::fflush(stdout);
    }
    if (with_gloo) {
      gloo_pg->barrier()->wait();
      gloo_tcp->barrier()->wait();
    }
    mpi.barrier()->wait();
  }
  MPI_Finalize();
  return 0;
}
