// The per-op profiler (tensor/profiler.h): self vs total accounting of nested scopes,
// phases, what start()/stop() clear, that only the recording thread records, and that
// the instrumented tensor ops show up. No assertion on how long anything took beyond
// lower bounds a busy-wait guarantees; the accounting identities are checked exactly.
#include "tensor/profiler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "tensor/ops.h"

namespace loom::profiler {
namespace {

/// Spins for at least ms milliseconds of steady-clock time.
void busy_wait_ms(double ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(ms);
  while (std::chrono::steady_clock::now() < until) {
  }
}

/// The stat for (phase, name), or nullptr.
const OpStat* find(const std::vector<OpStat>& stats, const std::string& phase, const std::string& name) {
  for (const auto& s : stats)
    if (s.phase == phase && s.name == name) return &s;
  return nullptr;
}

double sum_self(const std::vector<OpStat>& stats) {
  double t = 0;
  for (const auto& s : stats) t += s.self_ms;
  return t;
}

// The identities hold to rounding: self and total are sums of integer nanoseconds.
constexpr double kExact = 1e-6;

TEST(Profiler, NestedScopesSubtractChildrenFromSelfTime) {
  start();
  {
    Scope outer("outer");
    busy_wait_ms(2);
    {
      Scope inner("inner");
      busy_wait_ms(3);
    }
    {
      Scope inner("inner");
      busy_wait_ms(1);
    }
    busy_wait_ms(1);
  }
  const auto stats = stop();
  ASSERT_EQ(stats.size(), 2u);
  const OpStat* outer = find(stats, "forward", "outer");
  const OpStat* inner = find(stats, "forward", "inner");
  ASSERT_NE(outer, nullptr);
  ASSERT_NE(inner, nullptr);
  EXPECT_EQ(outer->calls, 1);
  EXPECT_EQ(inner->calls, 2);
  // Exclusive = inclusive minus the children's inclusive time; a leaf's self is its total.
  EXPECT_NEAR(outer->self_ms, outer->total_ms - inner->total_ms, kExact);
  EXPECT_NEAR(inner->self_ms, inner->total_ms, kExact);
  EXPECT_LE(outer->self_ms, outer->total_ms);
  EXPECT_NEAR(sum_self(stats), outer->total_ms, kExact);
  // Lower bounds only (the busy-waits last at least this long; the machine may be slower).
  EXPECT_GE(inner->total_ms, 4.0);
  EXPECT_GE(outer->self_ms, 3.0);
  EXPECT_GE(outer->total_ms, 7.0);
  // Sorted by self time, largest first.
  EXPECT_TRUE(std::is_sorted(stats.begin(), stats.end(),
                             [](const OpStat& a, const OpStat& b) { return a.self_ms > b.self_ms; }));
}

TEST(Profiler, GrandchildTimeIsSubtractedFromItsParentOnly) {
  start();
  {
    Scope a("a");
    busy_wait_ms(1);
    {
      Scope b("b");
      busy_wait_ms(1);
      {
        Scope c(std::string("c"));  // the std::string overload
        busy_wait_ms(2);
      }
    }
  }
  const auto stats = stop();
  const OpStat* a = find(stats, "forward", "a");
  const OpStat* b = find(stats, "forward", "b");
  const OpStat* c = find(stats, "forward", "c");
  ASSERT_TRUE(a && b && c);
  EXPECT_NEAR(a->self_ms, a->total_ms - b->total_ms, kExact);
  EXPECT_NEAR(b->self_ms, b->total_ms - c->total_ms, kExact);
  EXPECT_NEAR(c->self_ms, c->total_ms, kExact);
  EXPECT_GE(c->total_ms, 2.0);
  EXPECT_GE(b->total_ms, c->total_ms);
  EXPECT_GE(a->total_ms, b->total_ms);
  // Every nanosecond inside the top-level scope is in exactly one self time.
  EXPECT_NEAR(sum_self(stats), a->total_ms, kExact);
}

TEST(Profiler, PhaseKeysTheStatsAndIsRestored) {
  start();
  { Scope s("op"); }
  {
    Phase backward("backward");
    { Scope s("op"); }
    {
      Phase optimizer("optimizer");
      Scope s("op");
    }
    Scope s("op");  // back in "backward"
  }
  {
    Scope s("op");  // back in "forward"
  }
  const auto stats = stop();
  ASSERT_EQ(stats.size(), 3u);
  ASSERT_NE(find(stats, "forward", "op"), nullptr);
  ASSERT_NE(find(stats, "backward", "op"), nullptr);
  ASSERT_NE(find(stats, "optimizer", "op"), nullptr);
  EXPECT_EQ(find(stats, "forward", "op")->calls, 2);
  EXPECT_EQ(find(stats, "backward", "op")->calls, 2);
  EXPECT_EQ(find(stats, "optimizer", "op")->calls, 1);
}

TEST(Profiler, NothingIsRecordedWhenNotActive) {
  EXPECT_FALSE(active());
  EXPECT_TRUE(stop().empty());
  {
    Scope s("ignored");
    busy_wait_ms(0.1);
  }
  start();
  EXPECT_TRUE(active());
  { Scope s("kept"); }
  const auto stats = stop();
  EXPECT_FALSE(active());
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].name, "kept");
  EXPECT_TRUE(stop().empty());  // a second stop() has nothing
}

TEST(Profiler, StartClearsWhatWasRecordedBefore) {
  start();
  { Scope s("old"); }
  EXPECT_EQ(stop().size(), 1u);
  start();
  { Scope s("new"); }
  auto stats = stop();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].name, "new");

  // start() while recording clears too; a scope open across it is not counted.
  start();
  {
    Scope open_across("open_across");
    { Scope s("old"); }
    start();
    { Scope s("new"); }
  }
  stats = stop();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].name, "new");
}

TEST(Profiler, ScopeOpenAcrossStopIsDropped) {
  start();
  {
    Scope s("open");
    EXPECT_TRUE(stop().empty());  // still open: not counted
    start();
  }  // closes after a restart: ignored
  { Scope s("after"); }
  const auto stats = stop();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].name, "after");
}

TEST(Profiler, OnlyTheStartingThreadRecords) {
  start();
  bool other_active = true;
  std::thread other([&] {
    other_active = active();
    Scope s("other_thread");
    busy_wait_ms(1);
  });
  other.join();
  { Scope s("main_thread"); }
  const auto stats = stop();
  EXPECT_FALSE(other_active);
  EXPECT_EQ(find(stats, "forward", "other_thread"), nullptr);
  EXPECT_NE(find(stats, "forward", "main_thread"), nullptr);
  EXPECT_EQ(stats.size(), 1u);
}

TEST(Profiler, InstrumentedTensorOpsAppear) {
  const Tensor x = ops::full({64, 32}, 0.5);
  const Tensor w = ops::full({16, 32}, 0.25);
  const Tensor b = ops::full({16}, 1.0);
  start();
  Tensor y = ops::linear(x, w, b);
  Tensor z = ops::add(y, y);
  Tensor t = ops::contiguous(ops::transpose(z, 0, 1));
  Tensor s = ops::sum(t);
  const auto stats = stop();
  for (const char* name : {"linear", "add", "alloc", "contiguous", "copy_", "sum"})
    EXPECT_NE(find(stats, "forward", name), nullptr) << name;
  // Each op allocates its output inside its own scope: alloc is nested, linear's total covers it.
  const OpStat* linear = find(stats, "forward", "linear");
  ASSERT_NE(linear, nullptr);
  EXPECT_EQ(linear->calls, 1);
  EXPECT_LE(linear->self_ms, linear->total_ms);
  EXPECT_GE(find(stats, "forward", "alloc")->calls, 4);
  // Nothing ran outside an op here but the ops themselves: self times add up to the top-level totals.
  double top = 0;
  for (const char* name : {"linear", "add", "contiguous", "sum"}) top += find(stats, "forward", name)->total_ms;
  EXPECT_NEAR(sum_self(stats), top, kExact);
  EXPECT_EQ(s.item(), 2.0 * 64 * 16 * (32 * 0.5 * 0.25 + 1.0));  // numerics untouched (exact in f32)
}

TEST(Profiler, FormatTableListsEveryStatAndTheRemainder) {
  std::vector<OpStat> stats = {{"forward", "linear", 3, 6.0, 8.0}, {"backward", "LinearBackward", 3, 2.0, 9.0}};
  const std::string t = format_table(stats, 10.0);
  EXPECT_NE(t.find("linear"), std::string::npos);
  EXPECT_NE(t.find("LinearBackward"), std::string::npos);
  EXPECT_NE(t.find("60.0%"), std::string::npos) << t;  // 6 of 10 ms
  EXPECT_NE(t.find("(outside any scope)"), std::string::npos);
  EXPECT_NE(t.find("2.000"), std::string::npos) << t;  // 10 - (6 + 2) ms outside
  EXPECT_EQ(format_table(stats).find("(outside any scope)"), std::string::npos);
}

}  // namespace
}  // namespace loom::profiler
