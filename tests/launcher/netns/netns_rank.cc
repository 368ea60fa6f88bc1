// A rank for the network-namespace tests (tests/launcher/netns_test.sh): joins
// the gloo world through init_process_group, checks one all-reduce and, with
// "hold DIR", keeps all-reducing (every 50 ms) until DIR/release exists, so the
// test can probe the stores' ports and cut a link while the job runs.
// Usage: netns_rank [hold DIR]   (exit 0 when the checks passed)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "collectives/init.h"

using namespace loom;
using namespace loom::collectives;

int main(int argc, char** argv) {
  const bool hold = argc > 2 && std::string(argv[1]) == "hold";
  const std::filesystem::path dir = hold ? argv[2] : "";
  int rank = -1;
  try {
    auto pg = init_process_group("gloo");
    rank = pg->rank();
    const int64_t n = pg->size();
    Tensor t = from_vector(std::vector<int64_t>{rank + 1}, {1});
    pg->allreduce(t)->wait();
    if (t.to_vector<int64_t>()[0] != n * (n + 1) / 2) {
      std::fprintf(stderr, "rank %d: FAILED allreduce: %lld, want %lld\n", rank,
                   static_cast<long long>(t.to_vector<int64_t>()[0]), static_cast<long long>(n * (n + 1) / 2));
      return 1;
    }
    std::printf("rank %d: allreduce ok\n", rank);
    std::fflush(stdout);
    if (hold) {
      std::ofstream(dir / ("ready." + std::to_string(rank))) << "ready\n";
      for (;;) {
        // Rank 0 decides; the max all-reduce tells every rank at the same step.
        int64_t stop = rank == 0 && std::filesystem::exists(dir / "release") ? 1 : 0;
        Tensor f = from_vector(std::vector<int64_t>{stop}, {1});
        pg->allreduce(f, {ReduceOp::kMax})->wait();
        if (f.to_vector<int64_t>()[0] != 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      std::printf("rank %d: released\n", rank);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    return 1;
  }
}
