// The gloo backend's segmented rings (allreduce, reduce_scatter, all_gather)
// with ranks as threads: 2, 3 and 4 ranks, sizes that divide neither by the
// world size nor by the segment, segments of a few elements with a receive
// window of 1 and 3 (so scratch slots are reused), every dtype and reduce op,
// against closed forms; `in` stays untouched; back-to-back async collectives.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

#include "collectives/process_group.h"
#include "tests/collectives/rank_threads.h"

using namespace loom;
using namespace loom::collectives;
using namespace loom::collectives::testing;

namespace {

const std::vector<DType> kAllDTypes = {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64};
const std::vector<ReduceOp> kAllOps = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax,
                                       ReduceOp::kProduct};

// Sets LOOM_GLOO_SEGMENT_BYTES, LOOM_GLOO_WINDOW and LOOM_GLOO_CMA (read when
// a backend is built) for its lifetime. Ranks as threads share one process, so
// with CMA on they read each other's memory with process_vm_readv on their own
// pid, the code path separate processes take on one host.
class RingEnv {
 public:
  RingEnv(std::optional<size_t> segment_bytes, std::optional<size_t> window, bool cma = true) {
    set("LOOM_GLOO_SEGMENT_BYTES", segment_bytes);
    set("LOOM_GLOO_WINDOW", window);
    set("LOOM_GLOO_CMA", cma ? std::nullopt : std::optional<size_t>(0));
  }
  ~RingEnv() {
    ::unsetenv("LOOM_GLOO_SEGMENT_BYTES");
    ::unsetenv("LOOM_GLOO_WINDOW");
    ::unsetenv("LOOM_GLOO_CMA");
  }
  std::string str() const { return description_; }

 private:
  void set(const char* name, std::optional<size_t> v) {
    if (v) {
      ::setenv(name, std::to_string(*v).c_str(), 1);
      description_ += std::string(name) + "=" + std::to_string(*v) + " ";
    } else {
      ::unsetenv(name);
    }
  }
  std::string description_;
};

Tensor make(DType d, const std::vector<double>& v) {
  Tensor t = empty({static_cast<int64_t>(v.size())}, d);
  LOOM_DISPATCH_ALL(d, "make", [&] {
    auto* p = static_cast<scalar_t*>(t.data_ptr());
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(v[i]));
  });
  return t;
}

std::vector<double> read(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  LOOM_DISPATCH_ALL(t.dtype(), "read", [&] {
    const auto* p = static_cast<const scalar_t*>(t.data_ptr());
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(static_cast<acc_t<scalar_t>>(p[i]));
  });
  return out;
}

double in_dtype(DType d, double x) { return read(make(d, {x}))[0]; }

// Rank r's element i. Sums, mins and maxes see a value that changes with the
// position (period 61, so a segment or block boundary off by fewer than 61
// elements shows); products see small factors so they stay exact in bf16/f16.
double value(ReduceOp op, int r, int64_t i) {
  if (op == ReduceOp::kProduct) return 1 + static_cast<double>((i + r) % 3);
  return r + 1 + static_cast<double>(i % 61);
}

double closed_form(ReduceOp op, int n, int64_t i) {
  double s = 0, p = 1, lo = 1e300, hi = -1e300;
  for (int r = 0; r < n; ++r) {
    const double v = value(op, r, i);
    s += v;
    p *= v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  switch (op) {
    case ReduceOp::kSum:
      return s;
    case ReduceOp::kAvg:
      return s / n;
    case ReduceOp::kProduct:
      return p;
    case ReduceOp::kMin:
      return lo;
    case ReduceOp::kMax:
      return hi;
  }
  return 0;
}

std::vector<double> rank_values(ReduceOp op, int r, int64_t begin, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = value(op, r, begin + i);
  return v;
}

// Exact except kAvg, whose 1/n scaling may round differently from the division.
void expect_reduced(double got, DType d, ReduceOp op, int n, int64_t i, const std::string& what) {
  const double want = in_dtype(d, closed_form(op, n, i));
  if (op == ReduceOp::kAvg) {
    const double tol = (d == DType::bf16 ? 1e-2 : d == DType::f16 ? 1e-3 : 1e-6) * std::fabs(want);
    ASSERT_NEAR(got, want, tol) << what << " i=" << i;
  } else {
    ASSERT_EQ(got, want) << what << " i=" << i;
  }
}

// Ring shapes worth covering, over TCP (LOOM_GLOO_CMA=0) and with CMA:
// segments of 1-2 elements with a window of one (every scratch slot reused at
// once), odd segments with a window of 3, and the defaults (one segment at
// these sizes).
struct RingShape {
  std::optional<size_t> segment_bytes, window;
  bool cma;
};
const std::vector<RingShape> kShapes = {{8, 1, false}, {20, 3, false}, {std::nullopt, std::nullopt, false},
                                        {8, 1, true},  {20, 3, true},  {std::nullopt, std::nullopt, true}};

}  // namespace

TEST(GlooRing, AllreduceOddSizesEveryDtypeAndOp) {
  for (int n : {2, 3, 4})
    for (const RingShape& sh : kShapes) {
      RingEnv env(sh.segment_bytes, sh.window, sh.cma);
      run_ranks(n, [&](ProcessGroup& pg) {
        for (int64_t len : {1, 2, 3, 5, 61, 203})
          for (DType d : kAllDTypes)
            for (ReduceOp op : kAllOps) {
              if (op == ReduceOp::kAvg && !is_floating(d)) continue;
              Tensor t = make(d, rank_values(op, pg.rank(), 0, len));
              pg.allreduce(t, {op})->wait();
              const std::vector<double> got = read(t);
              const std::string what = env.str() + "n=" + std::to_string(n) + " len=" + std::to_string(len) + " " +
                                       dtype_name(d) + " " + reduce_op_name(op);
              for (int64_t i = 0; i < len; ++i) expect_reduced(got[static_cast<size_t>(i)], d, op, n, i, what);
            }
      });
    }
}

TEST(GlooRing, ReduceScatterOddChunksEveryDtypeAndOpLeavesInAlone) {
  for (int n : {2, 3, 4})
    for (const RingShape& sh : kShapes) {
      RingEnv env(sh.segment_bytes, sh.window, sh.cma);
      run_ranks(n, [&](ProcessGroup& pg) {
        for (int64_t chunk : {1, 2, 7, 61, 67})
          for (DType d : kAllDTypes)
            for (ReduceOp op : kAllOps) {
              if (op == ReduceOp::kAvg && !is_floating(d)) continue;
              const std::vector<double> mine = rank_values(op, pg.rank(), 0, chunk * n);
              Tensor in = make(d, mine);
              Tensor out = make(d, std::vector<double>(static_cast<size_t>(chunk), -7));
              pg.reduce_scatter(out, in, {op})->wait();
              const std::vector<double> got = read(out);
              const std::string what = env.str() + "n=" + std::to_string(n) + " chunk=" + std::to_string(chunk) + " " +
                                       dtype_name(d) + " " + reduce_op_name(op);
              for (int64_t j = 0; j < chunk; ++j)
                expect_reduced(got[static_cast<size_t>(j)], d, op, n, pg.rank() * chunk + j, what);
              ASSERT_EQ(read(in), read(make(d, mine))) << what << ": reduce_scatter changed its input";
            }
      });
    }
}

TEST(GlooRing, AllGatherOddSizesEveryDtype) {
  for (int n : {2, 3, 4})
    for (const RingShape& sh : kShapes) {
      RingEnv env(sh.segment_bytes, sh.window, sh.cma);
      run_ranks(n, [&](ProcessGroup& pg) {
        for (int64_t len : {1, 2, 7, 61, 67})
          for (DType d : kAllDTypes) {
            // Rank r's element i: r * 61 + i % 61 (exact in every dtype for 4 ranks).
            auto v = [](int r, int64_t i) { return static_cast<double>(r * 61 + i % 61); };
            std::vector<double> mine(static_cast<size_t>(len));
            for (int64_t i = 0; i < len; ++i) mine[static_cast<size_t>(i)] = v(pg.rank(), i);
            Tensor in = make(d, mine);
            Tensor out = make(d, std::vector<double>(static_cast<size_t>(len * n), -1));
            pg.all_gather(out, in)->wait();
            const std::vector<double> got = read(out);
            for (int r = 0; r < n; ++r)
              for (int64_t i = 0; i < len; ++i)
                ASSERT_EQ(got[static_cast<size_t>(r * len + i)], v(r, i))
                    << env.str() << "n=" << n << " len=" << len << " " << dtype_name(d) << " r=" << r << " i=" << i;
            ASSERT_EQ(read(in), mine) << "all_gather changed its input";
          }
      });
    }
}

TEST(GlooRing, DefaultSegmentsOnMegabytesAndBackToBackAsyncCollectives) {
  // 3 MiB + 5 elements of f32 on 3 ranks: about 1 MiB per block, so the default
  // 1 MiB segments split each block in two uneven parts. Then 12 collectives
  // are enqueued before any wait, so a fast rank runs ahead into the next ones.
  const int n = 3;
  const int64_t len = (int64_t{3} << 18) + 5;
  run_ranks(n, [&](ProcessGroup& pg) {
    Tensor t = make(DType::f32, rank_values(ReduceOp::kSum, pg.rank(), 0, len));
    pg.allreduce(t)->wait();
    const std::vector<double> got = read(t);
    for (int64_t i = 0; i < len; ++i)
      ASSERT_EQ(got[static_cast<size_t>(i)], closed_form(ReduceOp::kSum, n, i)) << "i=" << i;
    Tensor in = make(DType::i64, rank_values(ReduceOp::kMax, pg.rank(), 0, len - 5));
    Tensor out = empty({(len - 5) / n}, DType::i64);
    pg.reduce_scatter(out, in, {ReduceOp::kMax})->wait();
    const std::vector<double> rs = read(out);
    for (int64_t j = 0; j < out.numel(); ++j)
      ASSERT_EQ(rs[static_cast<size_t>(j)], closed_form(ReduceOp::kMax, n, pg.rank() * out.numel() + j)) << j;

    std::vector<Tensor> ar, rso, ago;
    std::vector<std::shared_ptr<Work>> works;
    for (int c = 0; c < 4; ++c) {
      ar.push_back(make(DType::f32, rank_values(ReduceOp::kSum, pg.rank(), c, 1000 + c)));
      works.push_back(pg.allreduce(ar.back()));
      rso.push_back(make(DType::f32, std::vector<double>(static_cast<size_t>(33 + c), 0)));
      works.push_back(
          pg.reduce_scatter(rso.back(), make(DType::f32, rank_values(ReduceOp::kSum, pg.rank(), c, (33 + c) * n))));
      ago.push_back(make(DType::f32, std::vector<double>(static_cast<size_t>((20 + c) * n), 0)));
      works.push_back(pg.all_gather(ago.back(), make(DType::f32, std::vector<double>(20 + c, pg.rank() + c))));
    }
    for (auto& w : works) w->wait();
    for (int c = 0; c < 4; ++c) {
      const std::vector<double> a = read(ar[static_cast<size_t>(c)]);
      for (int64_t i = 0; i < 1000 + c; ++i)
        ASSERT_EQ(a[static_cast<size_t>(i)], closed_form(ReduceOp::kSum, n, c + i)) << "allreduce " << c;
      const std::vector<double> r = read(rso[static_cast<size_t>(c)]);
      for (int64_t j = 0; j < 33 + c; ++j)
        ASSERT_EQ(r[static_cast<size_t>(j)], closed_form(ReduceOp::kSum, n, c + pg.rank() * (33 + c) + j))
            << "reduce_scatter " << c;
      const std::vector<double> g = read(ago[static_cast<size_t>(c)]);
      for (int rr = 0; rr < n; ++rr)
        for (int64_t i = 0; i < 20 + c; ++i)
          ASSERT_EQ(g[static_cast<size_t>(rr * (20 + c) + i)], rr + c) << "all_gather " << c;
    }
  });
}

TEST(GlooRing, BadSegmentSettingIsAnError) {
  RingEnv env(std::nullopt, std::nullopt);
  ::setenv("LOOM_GLOO_SEGMENT_BYTES", "-3", 1);
  try {
    run_ranks(1, [](ProcessGroup&) {});
    FAIL() << "a negative LOOM_GLOO_SEGMENT_BYTES was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LOOM_GLOO_SEGMENT_BYTES"), std::string::npos) << e.what();
  }
}
