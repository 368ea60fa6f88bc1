// Multi-process check of a backend: started by run_tcp.sh (torchrun-style
// variables) or by mpirun. Each op is compared with its closed form and, under
// mpirun, with Open MPI's own MPI_Allreduce/MPI_Allgather on the same data.
// Usage: collectives_mp BACKEND   (exit 0 when every check passed)
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "collectives/init.h"
#include "collectives/mpi/mpi_backend.h"

using namespace loom;
using namespace loom::collectives;

namespace {
int failures = 0;
void expect(bool ok, const char* what, int rank) {
  if (!ok) {
    std::fprintf(stderr, "rank %d: FAILED %s\n", rank, what);
    ++failures;
  }
}
}  // namespace

int main(int argc, char** argv) {
  const std::string backend = argc > 1 ? argv[1] : "gloo";
  const bool mpi = launched_by_mpirun();
  if (mpi) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  }
  int rank = -1;
  try {
    auto pg = init_process_group(backend);
    rank = pg->rank();
    const int n = pg->size();
    const int64_t len = 100003;  // odd, not a multiple of the group size
    // allreduce sum, f32: rank r holds sin(i) * (r + 1).
    std::vector<float> x(len);
    for (int64_t i = 0; i < len; ++i) x[i] = std::sin(static_cast<float>(i)) * static_cast<float>(rank + 1);
    Tensor t = from_vector(x, {len});
    pg->allreduce(t)->wait();
    std::vector<float> got = t.to_vector<float>();
    bool ok = true;
    for (int64_t i = 0; i < len && ok; ++i) {
      float want = std::sin(static_cast<float>(i)) * static_cast<float>(n * (n + 1) / 2);
      ok = std::fabs(got[i] - want) <= 1e-5f * (1 + std::fabs(want));
    }
    expect(ok, "allreduce f32 vs closed form", rank);
    if (mpi) {
      std::vector<float> ref(len);
      MPI_Allreduce(x.data(), ref.data(), static_cast<int>(len), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      bool same = true;
      for (int64_t i = 0; i < len && same; ++i) same = std::fabs(got[i] - ref[i]) <= 1e-5f * (1 + std::fabs(ref[i]));
      expect(same, "allreduce f32 vs MPI_Allreduce", rank);
    }
    // allreduce max, i64.
    Tensor m = from_vector(std::vector<int64_t>(7, rank * 10), {7});
    pg->allreduce(m, {ReduceOp::kMax})->wait();
    expect(m.to_vector<int64_t>()[6] == (n - 1) * 10, "allreduce max i64", rank);
    // all_gather i32 vs MPI_Allgather.
    std::vector<int32_t> mine(513);
    for (size_t i = 0; i < mine.size(); ++i) mine[i] = rank * 1000 + static_cast<int32_t>(i);
    Tensor all = from_vector(std::vector<int32_t>(mine.size() * n, -1), {static_cast<int64_t>(mine.size()) * n});
    pg->all_gather(all, from_vector(mine, {static_cast<int64_t>(mine.size())}))->wait();
    std::vector<int32_t> ag = all.to_vector<int32_t>();
    bool agok = true;
    for (int r = 0; r < n; ++r)
      for (size_t i = 0; i < mine.size(); ++i) agok &= ag[r * mine.size() + i] == r * 1000 + static_cast<int32_t>(i);
    expect(agok, "all_gather i32 vs closed form", rank);
    if (mpi) {
      std::vector<int32_t> ref(mine.size() * n);
      MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_INT32_T, ref.data(), static_cast<int>(mine.size()),
                    MPI_INT32_T, MPI_COMM_WORLD);
      expect(ref == ag, "all_gather i32 vs MPI_Allgather", rank);
    }
    // reduce_scatter f64 sum: in[i] = i + r -> out[j] = n*(rank*c + j) + n(n-1)/2.
    const int64_t c = 1000;
    std::vector<double> in(c * n);
    for (int64_t i = 0; i < c * n; ++i) in[i] = static_cast<double>(i + rank);
    Tensor out = from_vector(std::vector<double>(c, 0), {c});
    pg->reduce_scatter(out, from_vector(in, {c * n}))->wait();
    std::vector<double> rs = out.to_vector<double>();
    bool rsok = true;
    for (int64_t j = 0; j < c; ++j) rsok &= rs[j] == n * static_cast<double>(rank * c + j) + n * (n - 1) / 2.0;
    expect(rsok, "reduce_scatter f64", rank);
    // Rank-ordered allreduce (avg) and reduce_scatter (sum), f32 values that cancel so the order of addition shows in
    // the bits (on 3+ ranks a ring adds in another order): every rank must get ((v0 + v1) + v2) + ... exactly.
    {
      const int64_t m = 257;
      auto value = [](int r, int64_t i) {  // +big, small, -big, small, …: big + small rounds to big in f32
        if (r % 2) return static_cast<float>(1 + i % 3);
        return static_cast<float>((r % 4 == 0 ? 1.0e8 : -1.0e8) * static_cast<double>(1 + i % 7));
      };
      std::vector<float> mine(m * n), want_ar(m * n), want_rs(m);
      for (int64_t i = 0; i < m * n; ++i) {
        mine[i] = value(rank, i);
        float acc = value(0, i);
        for (int r = 1; r < n; ++r) acc += value(r, i);
        want_ar[i] = acc * (1.0f / static_cast<float>(n));
      }
      for (int64_t j = 0; j < m; ++j) {
        float acc = value(0, rank * m + j);
        for (int r = 1; r < n; ++r) acc += value(r, rank * m + j);
        want_rs[j] = acc;
      }
      Tensor ar = from_vector(mine, {m * n});
      pg->allreduce(ar, {.op = ReduceOp::kAvg, .rank_ordered = true})->wait();
      expect(ar.to_vector<float>() == want_ar, "rank-ordered allreduce avg f32, bit for bit", rank);
      Tensor rso = from_vector(std::vector<float>(m, 0.f), {m});
      pg->reduce_scatter(rso, from_vector(mine, {m * n}), {.op = ReduceOp::kSum, .rank_ordered = true})->wait();
      expect(rso.to_vector<float>() == want_rs, "rank-ordered reduce_scatter sum f32, bit for bit", rank);
    }
    // broadcast from the last rank, then a barrier.
    Tensor b = from_vector(std::vector<float>(9, static_cast<float>(rank)), {9});
    pg->broadcast(b, {.root = n - 1})->wait();
    expect(b.to_vector<float>()[8] == static_cast<float>(n - 1), "broadcast", rank);
    pg->barrier()->wait();
    // sub-group of even ranks.
    std::vector<int> evens;
    for (int r = 0; r < n; r += 2) evens.push_back(r);
    auto sub = pg->new_group(evens);
    if (sub) {
      Tensor s = from_vector(std::vector<float>{1.f}, {1});
      sub->allreduce(s)->wait();
      expect(s.to_vector<float>()[0] == static_cast<float>(evens.size()), "sub-group allreduce", rank);
      sub.reset();
    }
    pg->barrier()->wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    ++failures;
  }
  if (mpi) MPI_Finalize();
  if (failures == 0 && rank == 0) std::printf("collectives_mp %s: all checks passed\n", backend.c_str());
  return failures == 0 ? 0 : 1;
}
