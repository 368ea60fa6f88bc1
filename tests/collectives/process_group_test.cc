// ProcessGroup over the gloo backend with ranks as threads: every op, dtype and
// reduce op against closed forms; async Work; trace; sub-groups; checks.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "collectives/process_group.h"
#include "tests/collectives/rank_threads.h"

using namespace loom;
using namespace loom::collectives;
using namespace loom::collectives::testing;
using namespace std::chrono_literals;

namespace {

const std::vector<DType> kAllDTypes = {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64};

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

// x as stored in dtype d (the rounding a correct f32-accumulating reduction ends with).
double in_dtype(DType d, double x) { return read(make(d, {x}))[0]; }

// Rank r's element i: small integers, exact in every dtype.
double value(int r, int64_t i) { return r + 1 + static_cast<double>(i % 3); }

double closed_form(ReduceOp op, int n, int64_t i) {
  double s = 0, p = 1, lo = 1e300, hi = -1e300;
  for (int r = 0; r < n; ++r) {
    double v = value(r, i);
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

std::vector<double> rank_values(int r, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = value(r, i);
  return v;
}

}  // namespace

TEST(ProcessGroupGloo, AllreduceEveryDtypeAndReduceOpMatchesClosedForm) {
  const int n = 3;
  const int64_t len = 1001;
  run_ranks(n, [&](ProcessGroup& pg) {
    for (DType d : kAllDTypes) {
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProduct}) {
        if (op == ReduceOp::kAvg && !is_floating(d)) continue;
        Tensor t = make(d, rank_values(pg.rank(), len));
        pg.allreduce(t, {op})->wait();
        std::vector<double> got = read(t);
        for (int64_t i = 0; i < len; ++i)
          ASSERT_EQ(got[static_cast<size_t>(i)], in_dtype(d, closed_form(op, n, i)))
              << dtype_name(d) << " " << reduce_op_name(op) << " i=" << i;
      }
    }
  });
}

TEST(ProcessGroupGloo, AvgOnIntegersIsRejected) {
  run_ranks(1, [](ProcessGroup& pg) {
    Tensor t = make(DType::i32, {1, 2});
    EXPECT_THROW(pg.allreduce(t, {ReduceOp::kAvg}), InvalidArgument);
  });
}

TEST(ProcessGroupGloo, Bf16SumAccumulatesInF32) {
  // 256 + 1 + 1 + 1: bf16 accumulation gives 256 at every step; f32 gives 259,
  // which rounds to 260 in bf16 (and 259 exactly in f16).
  run_ranks(4, [](ProcessGroup& pg) {
    for (DType d : {DType::bf16, DType::f16}) {
      Tensor t = make(d, {pg.rank() == 0 ? 256.0 : 1.0});
      pg.allreduce(t)->wait();
      EXPECT_EQ(read(t)[0], d == DType::bf16 ? 260.0 : 259.0) << dtype_name(d);
    }
  });
}

TEST(ProcessGroupGloo, ReduceScatterEveryDtypeMatchesClosedForm) {
  for (int n : {2, 4}) {
    const int64_t chunk = 257;
    run_ranks(n, [&](ProcessGroup& pg) {
      for (DType d : kAllDTypes) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
          if (op == ReduceOp::kAvg && !is_floating(d)) continue;
          Tensor in = make(d, rank_values(pg.rank(), chunk * n));
          Tensor out = make(d, std::vector<double>(chunk, -7));
          pg.reduce_scatter(out, in, {op})->wait();
          std::vector<double> got = read(out);
          for (int64_t j = 0; j < chunk; ++j) {
            int64_t i = pg.rank() * chunk + j;
            ASSERT_EQ(got[static_cast<size_t>(j)], in_dtype(d, closed_form(op, n, i)))
                << "n=" << n << " " << dtype_name(d) << " " << reduce_op_name(op) << " j=" << j;
          }
        }
      }
    });
  }
}

TEST(ProcessGroupGloo, AllGatherFlatAndListEveryDtype) {
  const int n = 4;
  const int64_t len = 33;
  run_ranks(n, [&](ProcessGroup& pg) {
    for (DType d : kAllDTypes) {
      Tensor in = make(d, rank_values(pg.rank(), len));
      Tensor flat = make(d, std::vector<double>(len * n, 0));
      std::vector<Tensor> list;
      for (int r = 0; r < n; ++r) list.push_back(make(d, std::vector<double>(len, 0)));
      auto w1 = pg.all_gather(flat, in);
      auto w2 = pg.all_gather(list, in);
      w1->wait();
      w2->wait();
      std::vector<double> f = read(flat);
      for (int r = 0; r < n; ++r) {
        std::vector<double> l = read(list[static_cast<size_t>(r)]);
        for (int64_t i = 0; i < len; ++i) {
          ASSERT_EQ(f[static_cast<size_t>(r * len + i)], value(r, i)) << dtype_name(d);
          ASSERT_EQ(l[static_cast<size_t>(i)], value(r, i)) << dtype_name(d);
        }
      }
    }
  });
}

TEST(ProcessGroupGloo, BroadcastFromNonZeroRoot) {
  run_ranks(3, [](ProcessGroup& pg) {
    for (DType d : kAllDTypes) {
      Tensor t = make(d, rank_values(pg.rank(), 100));
      pg.broadcast(t, {.root = 1})->wait();
      EXPECT_EQ(read(t), read(make(d, rank_values(1, 100)))) << dtype_name(d);
    }
  });
}

TEST(ProcessGroupGloo, BarrierWaitsForTheSlowestRank) {
  run_ranks(3, [](ProcessGroup& pg) {
    auto t0 = std::chrono::steady_clock::now();
    if (pg.rank() == 2) std::this_thread::sleep_for(300ms);
    pg.barrier()->wait();
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 250ms);
  });
}

TEST(ProcessGroupGloo, SendRecvRingPassesEachRanksTensor) {
  const int n = 4;
  run_ranks(n, [&](ProcessGroup& pg) {
    const int r = pg.rank(), right = (r + 1) % n, left = (r + n - 1) % n;
    Tensor mine = make(DType::f64, rank_values(r, 50));
    Tensor got = make(DType::f64, std::vector<double>(50, 0));
    if (r % 2 == 0) {
      pg.send(mine, right, {.tag = 5})->wait();
      pg.recv(got, left, {.tag = 5})->wait();
    } else {
      pg.recv(got, left, {.tag = 5})->wait();
      pg.send(mine, right, {.tag = 5})->wait();
    }
    EXPECT_EQ(read(got), rank_values(left, 50));
  });
}

TEST(ProcessGroupGloo, AllToAllTransposesChunks) {
  const int n = 4;
  const int64_t c = 3;
  run_ranks(n, [&](ProcessGroup& pg) {
    std::vector<double> in(n * c), expect(n * c);
    for (int j = 0; j < n; ++j)
      for (int64_t k = 0; k < c; ++k) {
        in[static_cast<size_t>(j * c + k)] = pg.rank() * 100 + j * 10 + k;
        expect[static_cast<size_t>(j * c + k)] = j * 100 + pg.rank() * 10 + k;
      }
    Tensor out = make(DType::i64, std::vector<double>(n * c, 0));
    pg.all_to_all(out, make(DType::i64, in))->wait();
    EXPECT_EQ(read(out), expect);
  });
}

TEST(ProcessGroupGloo, NewGroupReducesOnlyOverItsMembers) {
  run_ranks(4, [](ProcessGroup& pg) {
    auto sub = pg.new_group({1, 3});
    if (pg.rank() == 1 || pg.rank() == 3) {
      ASSERT_NE(sub, nullptr);
      EXPECT_EQ(sub->size(), 2);
      EXPECT_EQ(sub->rank(), pg.rank() == 1 ? 0 : 1);
      Tensor t = make(DType::f32, {static_cast<double>(pg.rank())});
      sub->allreduce(t)->wait();
      EXPECT_EQ(read(t)[0], 4.0);
    } else {
      EXPECT_EQ(sub, nullptr);
    }
    Tensor w = make(DType::f32, {1});
    pg.allreduce(w)->wait();  // the world group still works
    EXPECT_EQ(read(w)[0], 4.0);
  });
}

TEST(ProcessGroupGloo, CallsReturnBeforeTheCollectiveCompletes) {
  run_ranks(2, [](ProcessGroup& pg) {
    if (pg.rank() == 1) std::this_thread::sleep_for(300ms);
    Tensor t = make(DType::f32, {1});
    auto w = pg.allreduce(t);
    if (pg.rank() == 0) {
      EXPECT_FALSE(w->is_completed());
    }
    w->wait(5000ms);
    EXPECT_TRUE(w->is_completed());
    EXPECT_EQ(w->exception(), nullptr);
    EXPECT_EQ(read(t)[0], 2.0);
  });
}

TEST(ProcessGroupGloo, TraceRecordsOpsSequenceAndTimes) {
  run_ranks(2, [](ProcessGroup& pg) {
    Tensor t = make(DType::f32, std::vector<double>(10, 1));
    pg.barrier()->wait();
    pg.allreduce(t)->wait();
    Tensor o = make(DType::f32, std::vector<double>(20, 0));
    pg.all_gather(o, t)->wait();
    auto tr = pg.trace();
    ASSERT_EQ(tr.size(), 3u);
    EXPECT_EQ(tr[0].op, "barrier");
    EXPECT_EQ(tr[1].op, "allreduce");
    EXPECT_EQ(tr[2].op, "all_gather");
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(tr[i].seq, i);
      EXPECT_EQ(tr[i].state, TraceState::kDone);
      EXPECT_LE(tr[i].enqueue_ns, tr[i].start_ns);
      EXPECT_LE(tr[i].start_ns, tr[i].end_ns);
      if (i > 0) {
        EXPECT_LE(tr[i - 1].end_ns, tr[i].start_ns);  // in order on the worker
      }
    }
    EXPECT_EQ(tr[1].numel, 10);
    EXPECT_EQ(pg.seq(), 3u);
  });
}

TEST(ProcessGroupGloo, TraceKeepsTheLast64) {
  run_ranks(2, [](ProcessGroup& pg) {
    Tensor t = make(DType::f32, {1});
    for (int i = 0; i < 70; ++i) pg.allreduce(t);
    pg.barrier()->wait();
    auto tr = pg.trace();
    ASSERT_EQ(tr.size(), 64u);
    EXPECT_EQ(tr.back().seq, 70u);
    EXPECT_EQ(tr.front().seq, 7u);
  });
}

TEST(ProcessGroupGloo, SkippedCollectiveTimesOutWithDiagnosisAndTrace) {
  auto opts = fast_options();
  opts.timeout = 1000ms;
  opts.trace_dir = std::filesystem::temp_directory_path() / ("loom_trace_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(opts.trace_dir);
  std::atomic<int> done{0};
  run_ranks(
      3,
      [&](ProcessGroup& pg) {
        pg.barrier()->wait();
        if (pg.rank() == 2) {  // skips the allreduce, stays alive until the others gave up
          while (done.load() < 2) std::this_thread::sleep_for(10ms);
          return;
        }
        Tensor t = make(DType::f32, std::vector<double>(8, 1));
        auto t0 = std::chrono::steady_clock::now();
        auto w = pg.allreduce(t);
        try {
          w->wait();
          ADD_FAILURE() << "allreduce should time out";
        } catch (const Timeout& e) {
          auto took = std::chrono::steady_clock::now() - t0;
          EXPECT_GE(took, 900ms);
          EXPECT_LT(took, 4000ms);
          std::string m = e.what();
          EXPECT_NE(m.find("allreduce(float32, 8 elements, sum) #1"), std::string::npos) << m;
          EXPECT_NE(m.find("group 'world'") == std::string::npos ? m.find("'world'") : 0, std::string::npos) << m;
          EXPECT_NE(m.find("rank 2 never entered allreduce #1"), std::string::npos) << m;
          EXPECT_NE(m.find("never arrived: [2]"), std::string::npos) << m;
          size_t at = m.find("written to ");
          ASSERT_NE(at, std::string::npos) << m;
          std::string path = m.substr(at + 11, m.find('\n', at) - at - 11);
          std::ifstream f(path);
          std::stringstream ss;
          ss << f.rdbuf();
          EXPECT_NE(ss.str().find("allreduce"), std::string::npos) << path;
        }
        // The group refuses further calls instead of hanging.
        EXPECT_THROW(pg.barrier()->wait(), CommError);
        ++done;
      },
      opts);
  std::filesystem::remove_all(opts.trace_dir);
}

TEST(ProcessGroupGloo, CollectiveCheckReportsMismatchedOps) {
  auto opts = fast_options();
  opts.check = true;
  run_ranks(
      2,
      [&](ProcessGroup& pg) {
        Tensor t = make(DType::f32, std::vector<double>(4, 1));
        pg.allreduce(t)->wait();  // agreeing call passes the check
        std::shared_ptr<Work> w = pg.rank() == 0 ? pg.allreduce(t) : pg.broadcast(t);
        try {
          w->wait();
          ADD_FAILURE() << "mismatch not detected";
        } catch (const InvalidArgument& e) {
          std::string m = e.what();
          EXPECT_NE(m.find("broadcast(float32, 4 elements, root 0)"), std::string::npos) << m;
          EXPECT_NE(m.find("allreduce(float32, 4 elements, sum)"), std::string::npos) << m;
        }
        Tensor d = make(pg.rank() == 0 ? DType::f32 : DType::f64, {1});
        EXPECT_THROW(pg.allreduce(d)->wait(), InvalidArgument);
      },
      opts);
}

TEST(ProcessGroupGloo, BadArgumentsThrowAtTheCall) {
  run_ranks(2, [](ProcessGroup& pg) {
    Tensor a = make(DType::f32, std::vector<double>(6, 0));
    Tensor b = make(DType::f32, std::vector<double>(5, 0));
    EXPECT_THROW(pg.reduce_scatter(b, a), InvalidArgument);
    EXPECT_THROW(pg.all_gather(a, b), InvalidArgument);
    EXPECT_THROW(pg.broadcast(a, {.root = 2}), InvalidArgument);
    EXPECT_THROW(pg.send(a, pg.rank()), InvalidArgument);
    EXPECT_THROW(pg.new_group({1, 0}), InvalidArgument);
    EXPECT_THROW(pg.allreduce(make(DType::u8, {1})), InvalidArgument);
  });
}

TEST(Backends, RegistryListsGlooAndMpiAndRejectsUnknown) {
  EXPECT_TRUE(has_backend("gloo"));
  EXPECT_TRUE(has_backend("mpi"));
  try {
    create_backend("carrier-pigeon", BackendContext{});
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("gloo"), std::string::npos);
  }
}

namespace {

// A backend stuck inside a blocking call that ignores its timeout — what the ProcessGroup's watchdog exists for. Every
// op returns at once (moving no data) until `stall` is set; then ops block until `released`, whatever their timeout.
struct StallLatch {
  std::mutex mu;
  std::condition_variable cv;
  bool stall = false, released = false;
};
StallLatch& stall_latch() {
  static StallLatch l;
  return l;
}

class StallingBackend : public Backend {
 public:
  std::string name() const override { return "stall_test"; }
  void allreduce(Tensor&, ReduceOp, Millis) override { op(); }
  void reduce_scatter(Tensor&, const Tensor&, ReduceOp, Millis) override { op(); }
  void all_gather(Tensor&, const Tensor&, Millis) override { op(); }
  void broadcast(Tensor&, int, Millis) override { op(); }
  void barrier(Millis) override { op(); }
  void send(const Tensor&, int, int, Millis) override { op(); }
  void recv(Tensor&, int, int, Millis) override { op(); }
  void all_to_all(Tensor&, const Tensor&, Millis) override { op(); }

 private:
  static void op() {
    StallLatch& l = stall_latch();
    std::unique_lock<std::mutex> lk(l.mu);
    l.cv.wait(lk, [&] { return !l.stall || l.released; });
  }
};

}  // namespace

// The back-stop: a backend that never returns from allreduce #1 (rank 1 never called it). After the collective
// timeout plus the watchdog's grace, the watchdog fails the Work itself with a Timeout naming the group, the op and its
// sequence number, the ranks that never arrived and the trace file it wrote; the call queued behind it is cancelled and
// later calls are refused, so the caller gets a report instead of a hang.
TEST(ProcessGroupWatchdog, BackendThatNeverReturnsIsFailedWithDiagnosisAndTrace) {
  register_backend("stall_test", [](const BackendContext&) { return std::make_unique<StallingBackend>(); });
  StallLatch& latch = stall_latch();
  {
    std::lock_guard<std::mutex> g(latch.mu);
    latch.stall = latch.released = false;
  }
  auto opts = fast_options();
  opts.timeout = 300ms;
  opts.watchdog_grace = 300ms;
  opts.trace_dir = std::filesystem::temp_directory_path() / ("loom_watchdog_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(opts.trace_dir);
  auto store = std::make_shared<HashStore>(Millis(20000));
  {
    // Two ranks of one group; the stalling backend has no rendezvous, so one thread drives both.
    ProcessGroup rank0(store, 0, 2, "stall_test", opts, "wd_group");
    ProcessGroup rank1(store, 1, 2, "stall_test", opts, "wd_group");
    struct Release {  // declared after the groups: lets their worker threads out before they are joined
      StallLatch& l;
      ~Release() {
        {
          std::lock_guard<std::mutex> g(l.mu);
          l.released = true;
        }
        l.cv.notify_all();
      }
    } release{latch};
    rank0.barrier()->wait();  // #0 on both ranks
    rank1.barrier()->wait();
    {
      std::lock_guard<std::mutex> g(latch.mu);
      latch.stall = true;
    }
    Tensor t = make(DType::f32, std::vector<double>(8, 1));
    Tensor u = make(DType::f32, std::vector<double>(4, 1));
    const auto t0 = std::chrono::steady_clock::now();
    auto stuck = rank0.allreduce(t);   // #1: the backend never returns; rank 1 never calls it
    auto queued = rank0.broadcast(u);  // #2: waits behind it in the queue
    try {
      stuck->wait(30s);  // the caller's own bound: reached only when the watchdog did not fire
      ADD_FAILURE() << "the stuck allreduce completed";
    } catch (const Timeout& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("the backend did not return (watchdog)"), std::string::npos) << m;
      EXPECT_GE(std::chrono::steady_clock::now() - t0, 600ms) << "fired before the timeout plus grace";
      EXPECT_NE(m.find("ProcessGroup 'wd_group'"), std::string::npos) << m;
      EXPECT_NE(m.find("allreduce(float32, 8 elements, sum) #1 timed out"), std::string::npos) << m;
      EXPECT_NE(m.find("ranks that never arrived: [1]"), std::string::npos) << m;
      EXPECT_NE(m.find("rank 1 never entered allreduce #1 (its last was barrier() #0)"), std::string::npos) << m;
      const size_t at = m.find("written to ");
      ASSERT_NE(at, std::string::npos) << m;
      const std::string path = m.substr(at + 11, m.find('\n', at) - at - 11);
      std::ifstream f(path);
      ASSERT_TRUE(f.good()) << "no trace file at " << path;
      std::stringstream ss;
      ss << f.rdbuf();
      EXPECT_NE(ss.str().find("allreduce"), std::string::npos) << ss.str();
      EXPECT_NE(ss.str().find("group wd_group"), std::string::npos) << ss.str();
    }
    try {
      queued->wait(10s);  // the watchdog cancels the queue just after it fails the stuck call
      ADD_FAILURE() << "the queued broadcast ran after a timeout";
    } catch (const Timeout& e) {
      ADD_FAILURE() << "the queued broadcast behind the stuck one was not cancelled: " << e.what();
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos) << e.what();
    }
    auto refused = rank0.barrier();
    ASSERT_TRUE(refused->is_completed()) << "the broken group accepted a new call";
    try {
      refused->wait(1s);
      ADD_FAILURE() << "the broken group ran a new call";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("refused: the group is broken"), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove_all(opts.trace_dir);
}
