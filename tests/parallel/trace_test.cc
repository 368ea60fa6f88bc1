// The timeline of real multi-rank training (recipes::TraceWindow over DDP and FullyShard): the merged file parses as
// JSON with a track per rank, every collective of the collective trace appears with its sequence number, spans nest,
// a rank's compute spans do not overlap; a rank that sleeps 200 ms in forward is named the straggler and the other's
// waits grow by about that much; a collective timeout writes the timeline and names the rank whose last event is
// oldest. Runs under mpirun on 2 ranks (a world of one skips, visibly).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "parallel/ddp.h"
#include "parallel/fully_shard.h"
#include "recipes/trace_window.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::world;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

std::string test_dir(const std::string& name) {
  const char* b = std::getenv("LOOM_TEST_BACKEND");
  return std::string(LOOM_BINARY_DIR) + "/trace_test/" + name + "_" + (b && *b ? b : "gloo") + "_np" +
         std::to_string(world()->size());
}

// A model under DDP or FullyShard with AdamW; steps(win, from, to) trains steps from..to, window `win` around each.
struct Trainer {
  Trainer(const std::string& wrapper, const std::shared_ptr<nn::CausalLM>& m) : model(m) {
    auto g = world();
    if (wrapper == "ddp") {
      ddp = std::make_unique<DistributedDataParallel>(model, g);
      opt = std::make_unique<nn::AdamW>(nn::weight_decay_groups(model->named_parameters(), 1e-2, 0.1),
                                        nn::AdamWOptions{});
    } else {
      fsdp = std::make_unique<FullyShard>(model, g);
      opt = std::make_unique<nn::AdamW>(fsdp->param_groups(1e-2, 0.1), nn::AdamWOptions{});
    }
  }
  void steps(recipes::TraceWindow& win, int from, int to, const std::function<void(int)>& before = {}) {
    auto g = world();
    for (int step = from; step <= to; ++step) {
      if (before) before(step);
      win.begin_step(step);
      ptest::Batch b = ptest::rows(ptest::global_batch(step), g->rank(), g->size());
      opt->zero_grad();
      Tensor loss = model->loss(b.idx, b.targets);
      loss.backward();
      {
        trace::Span s("optimizer", trace::kStep);
        opt->step();
      }
      win.end_step(step);
    }
  }
  std::shared_ptr<nn::CausalLM> model;
  std::unique_ptr<DistributedDataParallel> ddp;
  std::unique_ptr<FullyShard> fsdp;
  std::unique_ptr<nn::AdamW> opt;
};

// Properly nested spans per (rank, thread): no span starts inside another and ends after it.
void expect_nested(const std::vector<trace::Event>& ev) {
  std::map<std::pair<int, int>, std::vector<const trace::Event*>> by_thread;
  for (const auto& e : ev)
    if (e.ph == 'X') by_thread[{e.rank, e.tid}].push_back(&e);
  for (auto& [key, v] : by_thread) {
    std::stable_sort(v.begin(), v.end(), [](const trace::Event* a, const trace::Event* b) {
      return a->ts_ns != b->ts_ns ? a->ts_ns < b->ts_ns : a->dur_ns > b->dur_ns;
    });
    std::vector<const trace::Event*> stack;
    for (const trace::Event* e : v) {
      while (!stack.empty() && stack.back()->end_ns() <= e->ts_ns) stack.pop_back();
      if (!stack.empty()) {
        EXPECT_LE(e->end_ns(), stack.back()->end_ns())
            << "rank " << key.first << " thread " << key.second << ": '" << e->name << "' [" << e->ts_ns << ", "
            << e->end_ns() << ") starts inside '" << stack.back()->name << "' [" << stack.back()->ts_ns << ", "
            << stack.back()->end_ns() << ") and ends after it";
      }
      stack.push_back(e);
    }
  }
}

void check_timeline(const std::string& wrapper) {
  auto g = world();
  if (g->size() < 2) GTEST_SKIP() << "needs 2 ranks (mpirun -np 2)";
  const std::string dir = test_dir(wrapper);
  auto model = ptest::tiny_model(Family::kGPT2);
  recipes::TraceWindow win(*g, 2, 3, dir, model.get());
  Trainer trainer(wrapper, model);
  int64_t seq_begin = -1, seq_end = -1;
  trainer.steps(win, 1, 4, [&](int step) {
    if (step == 2) seq_begin = static_cast<int64_t>(g->seq());
    // The last collective before step 4 is the barrier with which the window's files were written (not traced).
    if (step == 4) seq_end = static_cast<int64_t>(g->seq()) - 2;
  });
  g->barrier()->wait();
  const std::string text = slurp(dir + "/trace.json");
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << dir << "/trace.json is not valid JSON";
  ASSERT_TRUE(doc["traceEvents"].is_array());
  std::set<int> pids;
  for (const auto& e : doc["traceEvents"]) pids.insert(e.value("pid", -1));
  for (int r = 0; r < g->size(); ++r) EXPECT_TRUE(pids.count(r)) << "no track for rank " << r;
  std::vector<trace::Event> ev = trace::from_chrome_json(text, "trace.json");

  // Every collective of this rank's collective trace issued in the window: an enqueue on the training thread and an
  // execution span on the worker, with the same sequence number.
  std::set<int64_t> comm_seqs, enq_seqs;
  for (const auto& e : ev) {
    if (e.rank != g->rank() || e.str_arg("group") != g->name()) continue;
    if (e.cat == trace::kComm && e.num_arg("p2p") == 0) comm_seqs.insert(e.num_arg("seq"));
    if (e.cat == trace::kEnqueue) enq_seqs.insert(e.num_arg("seq"));
  }
  int checked = 0;
  for (const auto& c : g->trace()) {
    const auto s = static_cast<int64_t>(c.seq);
    if (s < seq_begin || s > seq_end) continue;
    ++checked;
    EXPECT_TRUE(comm_seqs.count(s)) << c.op << " #" << s << " has no execution span on rank " << g->rank();
    EXPECT_TRUE(enq_seqs.count(s)) << c.op << " #" << s << " has no enqueue event on rank " << g->rank();
  }
  EXPECT_GE(checked, 2) << "the window [" << seq_begin << ", " << seq_end
                        << "] held fewer than one collective per step";
  for (int64_t s : comm_seqs) EXPECT_TRUE(s >= seq_begin && s <= seq_end) << "span of #" << s << " outside the window";

  // And in every group (FullyShard's and the mesh's too): each execution span has its enqueue, same group and seq.
  std::set<std::tuple<int, std::string, int64_t>> enqueued;
  for (const auto& e : ev)
    if (e.cat == trace::kEnqueue) enqueued.insert({e.rank, e.str_arg("group"), e.num_arg("seq")});
  for (const auto& e : ev)
    if (e.cat == trace::kComm && e.num_arg("p2p") == 0) {
      EXPECT_TRUE(enqueued.count({e.rank, e.str_arg("group"), e.num_arg("seq")}))
          << "rank " << e.rank << ": " << e.name << " #" << e.num_arg("seq") << " in group '" << e.str_arg("group")
          << "' ran but was never enqueued";
    }

  expect_nested(ev);
  // Compute spans (module forward/backward) of one rank: all on one thread, and the outermost ones disjoint.
  for (int r = 0; r < g->size(); ++r) {
    std::vector<const trace::Event*> compute;
    for (const auto& e : ev)
      if (e.rank == r && (e.cat == trace::kForward || e.cat == trace::kBackward)) compute.push_back(&e);
    ASSERT_FALSE(compute.empty()) << "rank " << r << " has no compute spans";
    std::set<int> tids;
    int forwards = 0, backwards = 0;
    for (const auto* e : compute) {
      tids.insert(e->tid);
      forwards += e->cat == trace::kForward && e->name.rfind("forward transformer.h.", 0) == 0;
      backwards += e->cat == trace::kBackward && e->name.rfind("backward transformer.h.", 0) == 0;
    }
    EXPECT_EQ(tids.size(), 1u) << "rank " << r << "'s compute spans are on " << tids.size() << " threads";
    EXPECT_GT(forwards, 0) << "rank " << r << ": no block forward spans";
    EXPECT_GT(backwards, 0) << "rank " << r << ": no block backward spans";
    int64_t last_end = INT64_MIN;
    for (const auto* e : compute) {
      if (e->ts_ns < last_end) continue;  // nested inside the previous outermost span (checked by expect_nested)
      EXPECT_GE(e->ts_ns, last_end);
      last_end = e->end_ns();
    }
  }
}

TEST(Trace, DDPTimelineIsCompleteAndNested) { check_timeline("ddp"); }
TEST(Trace, FSDPTimelineIsCompleteAndNested) { check_timeline("fsdp"); }

TEST(Trace, RankSleepingInForwardIsTheStraggler) {
  auto g = world();
  if (g->size() < 2) GTEST_SKIP() << "needs 2 ranks (mpirun -np 2)";
  auto model = ptest::tiny_model(Family::kGPT2);
  bool sleepy = false;
  if (g->rank() == 1)
    model->register_forward_pre_hook([&](nn::Module&) {
      if (sleepy) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    });
  // Steps 1-2 as they are (window a), steps 3-4 with rank 1 sleeping 200 ms in forward (window b).
  recipes::TraceWindow a(*g, 1, 2, test_dir("straggler_a"), model.get());
  recipes::TraceWindow b(*g, 3, 4, test_dir("straggler_b"), model.get());
  Trainer trainer("ddp", model);
  trainer.steps(a, 1, 2);
  sleepy = true;
  trainer.steps(b, 3, 4);
  if (g->rank() != 0) return;
  const trace::StragglerReport& ra = a.report();
  const trace::StragglerReport& rb = b.report();
  EXPECT_EQ(rb.straggler, 1);
  EXPECT_GE(rb.late_s[1], 0.2) << "rank 1 issued its collectives less than 100 ms late per step";
  // Rank 0 waits for rank 1 in every step's all-reduce: about 200 ms more per step (asserted loosely).
  EXPECT_GE(rb.blocked_s[0] - ra.blocked_s[0], 2 * 0.1)
      << "rank 0 blocked " << ra.blocked_s[0] << " s without the sleep and " << rb.blocked_s[0] << " s with it";
}

TEST(Trace, TimeoutWritesTheTimelineAndNamesTheRankWhoseLastEventIsOldest) {
  auto g = world();
  if (g->size() != 2) GTEST_SKIP() << "needs exactly 2 ranks (mpirun -np 2)";
  const char* b = std::getenv("LOOM_TEST_BACKEND");
  if (b && std::string(b) == "mpi")
    GTEST_SKIP() << "an MPI collective that never completes cannot be abandoned (its thread stays inside MPI)";
  auto sub = g->new_group({0, 1});
  Tensor t = ops::ones({4});
  sub->allreduce(t)->wait();  // both ranks' last collective in `sub`
  if (g->rank() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // rank 1's last event is now clearly older
    collectives::AllreduceOptions o;
    o.timeout = collectives::Millis(1500);
    std::string msg;
    try {
      sub->allreduce(t, o)->wait();
    } catch (const Timeout& e) {
      msg = e.what();
    }
    ASSERT_FALSE(msg.empty()) << "the allreduce rank 1 never joined did not time out";
    EXPECT_NE(msg.find("oldest last event: rank 1"), std::string::npos) << msg;
    const std::string key = "(Chrome trace JSON) written to ";
    const size_t at = msg.find(key);
    ASSERT_NE(at, std::string::npos) << msg;
    const std::string path = msg.substr(at + key.size(), msg.find('\n', at) - at - key.size());
    std::vector<trace::Event> ev = trace::from_chrome_json(slurp(path), path);
    int comm = 0;
    for (const auto& e : ev) comm += e.cat == trace::kComm;
    EXPECT_GE(comm, 2) << path << " lacks the group's collectives";
  }
  g->barrier()->wait();
}

}  // namespace
}  // namespace loom::parallel
