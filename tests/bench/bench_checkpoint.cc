// Checkpoint save and load throughput on 2 ranks (a model of --mb MB of f32 parameters, replicated: each rank writes
// half), next to `dd` writing the same number of bytes to the same directory in the same run, and the time an async
// save blocks training.
//   mpirun -np 2 bench_checkpoint [--mb 512] [--dir DIR] [--staging-mb 64] [--reps 5]
// Prints one line per figure (rank 0). The machine may be shared: dd and the save alternate `reps` times and each
// figure is given as best / median. Load is measured with the files evicted from the page cache (posix_fadvise
// DONTNEED after the fsync'd save), so it reads from the disk where the kernel allows.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "collectives/init.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;
using namespace loom;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Smallest and median of v (seconds).
std::pair<double, double> best_median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2]};
}

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

// Seconds dd takes to write `bytes` (fsync'd) to path; exits when dd fails.
double dd_seconds(const std::string& path, int64_t bytes) {
  const int64_t bs = 4 << 20;
  const std::string cmd = "dd if=/dev/zero of=" + path + " bs=4M count=" + std::to_string((bytes + bs - 1) / bs) +
                          " conv=fsync status=none";
  const auto t0 = Clock::now();
  const int rc = std::system(cmd.c_str());
  const double s = since(t0);
  std::error_code ec;
  fs::remove(path, ec);
  if (rc != 0) {
    std::fprintf(stderr, "bench_checkpoint: '%s' failed\n", cmd.c_str());
    std::exit(1);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t mb = 512, staging_mb = 64;
  int reps = 5;
  std::string dir = "bench_checkpoint_tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--mb") mb = std::atoll(argv[i + 1]);
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--staging-mb") staging_mb = std::atoll(argv[i + 1]);
    if (a == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
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

  // dd (one stream of all the bytes; one stream per rank of its share at once, as the ranks write), a synchronous
  // save, and a load with the files evicted, in turn.
  std::vector<double> dd1, ddw, save, load;
  {
    checkpoint::CheckpointOptions o;
    o.keep_last = 1;
    checkpoint::Checkpointer ck(dir + "/sync", pg, o);
    for (int rep = 0; rep < reps; ++rep) {
      barrier();
      if (rank == 0) dd1.push_back(dd_seconds(dir + "/dd_all.bin", total));
      barrier();
      auto t0 = Clock::now();
      dd_seconds(dir + "/dd_rank" + std::to_string(rank) + ".bin", total / world);
      barrier();
      ddw.push_back(since(t0));
      checkpoint::TrainState st;
      st.step = rep;
      t0 = Clock::now();
      ck.save(target, st);
      barrier();
      save.push_back(since(t0));
      if (rank == 0) evict(dir + "/sync");
      barrier();
      t0 = Clock::now();
      ck.load(target);
      barrier();
      load.push_back(since(t0));
    }
  }

  // Async: the first save allocates the snapshot, the next ones reuse it (median blocking time of those).
  double block_first = 0, block = 0, async_total = 0;
  {
    checkpoint::CheckpointOptions o;
    o.async = true;
    o.staging_bytes = staging_mb << 20;
    o.keep_last = 1;
    checkpoint::Checkpointer ck(dir + "/async", pg, o);
    std::vector<double> blocks;
    for (int rep = 0; rep <= reps; ++rep) {
      checkpoint::TrainState st;
      st.step = rep;
      barrier();
      ck.save(target, st);
      if (rep == 0)
        block_first = ck.last_blocking_seconds();
      else
        blocks.push_back(ck.last_blocking_seconds());
      ck.wait();
      barrier();
      async_total = ck.last_total_seconds();
    }
    block = best_median(blocks).second;
  }

  // The floor of a snapshot: both ranks copying their share at once into memory already mapped.
  double copy_s = 0;
  {
    std::vector<char> a(static_cast<size_t>(total / world), 1), b(static_cast<size_t>(total / world), 2);
    barrier();
    const auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), a.size());
    barrier();
    copy_s = since(t0);
  }

  if (rank == 0) {
    const double MBt = total / 1e6;  // MB/s in 10^6 bytes, as dd prints
    const auto [dd1_b, dd1_m] = best_median(dd1);
    const auto [ddw_b, ddw_m] = best_median(ddw);
    const auto [save_b, save_m] = best_median(save);
    const auto [load_b, load_m] = best_median(load);
    std::printf("bench_checkpoint: %d ranks, %lld MiB of f32 state (%d tensors), %d reps (best / median), dir %s\n",
                world, static_cast<long long>(total >> 20), n, reps, fs::absolute(dir).c_str());
    std::printf("dd one stream, all bytes, conv=fsync:    %8.1f / %8.1f MB/s\n", MBt / dd1_b, MBt / dd1_m);
    std::printf("dd %d streams of 1/%d at once, fsync:     %8.1f / %8.1f MB/s\n", world, world, MBt / ddw_b,
                MBt / ddw_m);
    std::printf("checkpoint save (sync, fsync, commit):   %8.1f / %8.1f MB/s  (%.0f%% / %.0f%% of dd one stream)\n",
                MBt / save_b, MBt / save_m, 100.0 * dd1_b / save_b, 100.0 * dd1_m / save_m);
    std::printf("checkpoint load (page cache evicted):    %8.1f / %8.1f MB/s\n", MBt / load_b, MBt / load_m);
    std::printf("async save blocking, first (allocates):  %8.3f s\n", block_first);
    std::printf("async save blocking, reused snapshot:    %8.3f s  (%.1f%% of the median sync save)\n", block,
                100.0 * block / save_m);
    std::printf("memcpy of each rank's share, both at once: %6.3f s  (%.1f%% of the median sync save)\n", copy_s,
                100.0 * copy_s / save_m);
    std::printf("async save total (background, %lld MiB staging): %.3f s\n", static_cast<long long>(staging_mb),
                async_total);
    fs::remove_all(dir);
  }
  barrier();
  return 0;
}
