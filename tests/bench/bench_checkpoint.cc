// Checkpoint save and load throughput on 2 ranks (a model of --mb MB of f32 parameters, each rank writing half), next
// to `dd` writing the same number of bytes to the same directory in the same run, and the time an async save blocks
// training. Run: mpirun -np 2 bench_checkpoint [--mb 512] [--dir DIR] [--staging-mb 64] Prints one line per figure
// (rank 0). Load is measured with the files evicted from the page cache (posix_fadvise DONTNEED after the fsync'd
// save), so it reads from the disk where the kernel allows.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "checkpoint/checkpoint.h"
#include "collectives/init.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;
using namespace loom;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void evict(const std::string& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Seconds dd takes to write `bytes` (fsync'd) to path; -1 when dd fails.
double dd_seconds(const std::string& path, int64_t bytes) {
  const int64_t bs = 4 << 20;
  const std::string cmd = "dd if=/dev/zero of=" + path + " bs=4M count=" + std::to_string((bytes + bs - 1) / bs) +
                          " conv=fsync status=none";
  const auto t0 = Clock::now();
  const int rc = std::system(cmd.c_str());
  const double s = since(t0);
  std::error_code ec;
  fs::remove(path, ec);
  return rc == 0 ? s : -1;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t mb = 512, staging_mb = 64;
  std::string dir = "bench_checkpoint_tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mb") mb = std::atoll(argv[i + 1]);
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--staging-mb") staging_mb = std::atoll(argv[i + 1]);
  }
  const bool launched = std::getenv("RANK") || std::getenv("OMPI_COMM_WORLD_RANK");
  std::shared_ptr<collectives::ProcessGroup> pg =
      launched ? collectives::init_process_group("gloo")
               : std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0, 1, "gloo");
  const int rank = pg->rank(), world = pg->size();
  auto barrier = [&] { pg->barrier()->wait(); };

  // The model: 64 MB f32 tensors, replicated on every rank (DDP layout: each rank writes 1/world of each).
  nn::Module model("Big");
  const int64_t per = 16 << 20;  // elements per tensor (64 MB)
  const int n = static_cast<int>((mb + 63) / 64);
  for (int i = 0; i < n; ++i) {
    Tensor t = ops::zeros({per}, DType::f32);
    float* p = t.data<float>();
    for (int64_t k = 0; k < per; ++k) p[k] = static_cast<float>((k * 2654435761u + i) % 1000003) * 1e-6f;
    model.register_parameter(std::string("w").append(std::to_string(i)), t);
  }
  const int64_t total = static_cast<int64_t>(n) * per * 4;
  checkpoint::Target target;
  target.module = &model;
  target.coords.dp_rank = rank;
  target.coords.dp_size = world;
  if (rank == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  barrier();
  const double MB = 1e6;

  // dd: one stream of all the bytes, and one stream per rank of its share at once (as the ranks write).
  double dd1 = 1e30;
  if (rank == 0)
    for (int rep = 0; rep < 2; ++rep) dd1 = std::min(dd1, dd_seconds(dir + "/dd_all.bin", total));
  barrier();
  barrier();
  const auto tdd = Clock::now();
  dd_seconds(dir + "/dd_rank" + std::to_string(rank) + ".bin", total / world);
  barrier();
  const double ddw = since(tdd);

  // Synchronous save (best of 2), then load with the files evicted from the page cache.
  double save_s = 1e30;
  std::string saved;
  for (int rep = 0; rep < 2; ++rep) {
    checkpoint::Checkpointer ck(dir + "/sync", pg, {});
    checkpoint::TrainState st;
    st.step = rep;
    barrier();
    const auto t0 = Clock::now();
    saved = ck.save(target, st);
    barrier();
    save_s = std::min(save_s, since(t0));
  }
  if (rank == 0) evict(dir + "/sync");
  barrier();
  double load_s = 0;
  {
    checkpoint::Checkpointer ck(dir + "/sync", pg, {});
    barrier();
    const auto t0 = Clock::now();
    ck.load(target);
    barrier();
    load_s = since(t0);
  }

  // Async: the first save allocates the snapshot, the next ones reuse it; blocking time of the third.
  double block_first = 0, block = 0, async_total = 0;
  {
    checkpoint::CheckpointOptions o;
    o.async = true;
    o.staging_bytes = staging_mb << 20;
    checkpoint::Checkpointer ck(dir + "/async", pg, o);
    for (int rep = 0; rep < 3; ++rep) {
      checkpoint::TrainState st;
      st.step = rep;
      ck.save(target, st);
      (rep == 0 ? block_first : block) = ck.last_blocking_seconds();
      ck.wait();
      barrier();
      async_total = ck.last_total_seconds();
    }
  }
  if (rank == 0) {
    std::printf("bench_checkpoint: %d ranks, %lld MB of f32 state (%d tensors), dir %s\n", world,
                static_cast<long long>(total / (1 << 20)), n, fs::absolute(dir).c_str());
    std::printf("dd one stream (best of 2), %lld MB, fsync:          %8.1f MB/s\n",
                static_cast<long long>(total / (1 << 20)), total / MB / dd1);
    std::printf("dd %d streams of 1/%d at once, fsync:   %8.1f MB/s\n", world, world, total / MB / ddw);
    std::printf("checkpoint save (sync, fsync, commit):  %8.1f MB/s  (%.3f s; %.0f%% of dd one stream)\n",
                total / MB / save_s, save_s, 100.0 * dd1 / save_s);
    std::printf("checkpoint load (page cache evicted):   %8.1f MB/s  (%.3f s)\n", total / MB / load_s, load_s);
    std::printf("async save blocking, first (allocates): %8.3f s  (%.1f%% of sync save)\n", block_first,
                100.0 * block_first / save_s);
    std::printf("async save blocking, reused snapshot:   %8.3f s  (%.1f%% of sync save)\n", block,
                100.0 * block / save_s);
    std::printf("async save total (background, %lld MB staging): %.3f s\n", static_cast<long long>(staging_mb),
                async_total);
    fs::remove_all(dir);
  }
  barrier();
  return 0;
}
