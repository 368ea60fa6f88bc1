// The timeline recorder and what is computed from it: exposed communication on a synthetic timeline with a known
// answer (exact), the straggler on a synthetic two-rank timeline, Chrome JSON round trips, and that spans opened by
// gradient hooks nest (a child whose hook fires before its parent's ends up inside it).
#include "tensor/trace_events.h"

#include <gtest/gtest.h>

#include <thread>

#include "tensor/error.h"
#include "tensor/trace_json.h"

namespace loom::trace {
namespace {

constexpr int64_t kMs = 1000000;

Event span(const char* cat, int64_t b_ms, int64_t e_ms, int rank = 0, int tid = 1) {
  Event e;
  e.name = cat;
  e.cat = cat;
  e.ts_ns = b_ms * kMs;
  e.dur_ns = (e_ms - b_ms) * kMs;
  e.rank = rank;
  e.tid = tid;
  return e;
}

Event enqueue(const std::string& group, int64_t seq, int64_t t_ms, int rank) {
  Event e;
  e.name = "enqueue allreduce";
  e.cat = kEnqueue;
  e.ph = 'i';
  e.ts_ns = t_ms * kMs;
  e.rank = rank;
  e.args = {num("seq", seq), str("group", group)};
  return e;
}

TEST(ExposedComm, SyntheticTimelineHasTheExactAnswer) {
  // Comm on the worker thread: [0,10) and [5,15) overlap (union 15 ms), [20,30): 25 ms. The training thread waited
  // [8,12), [25,27) and [26,28) (union 4 + 3 = 7 ms). Compute spans do not count.
  std::vector<Event> ev = {span(kComm, 0, 10, 0, 2), span(kComm, 5, 15, 0, 2), span(kComm, 20, 30, 0, 2),
                           span(kWait, 8, 12),       span(kWait, 25, 27),      span(kWait, 26, 28),
                           span(kForward, 0, 20),    span(kBackward, 20, 40)};
  ExposedComm x = exposed_comm(ev, 0, 40 * kMs);
  EXPECT_DOUBLE_EQ(x.comm_s, 0.025);
  EXPECT_DOUBLE_EQ(x.blocked_s, 0.007);
  EXPECT_DOUBLE_EQ(x.hidden_s, 0.018);
  EXPECT_DOUBLE_EQ(x.hidden_frac, 0.018 / 0.025);
  // Clipped to [10, 26): comm [10,15) + [20,26) = 11 ms, waits [10,12) + [25,26) = 3 ms.
  ExposedComm c = exposed_comm(ev, 10 * kMs, 26 * kMs);
  EXPECT_DOUBLE_EQ(c.comm_s, 0.011);
  EXPECT_DOUBLE_EQ(c.blocked_s, 0.003);
  EXPECT_DOUBLE_EQ(c.hidden_frac, 8.0 / 11.0);
  // Blocked longer than the comm ran (waiting for a late peer's enqueue): nothing hidden, never negative.
  ExposedComm b = exposed_comm({span(kComm, 0, 5, 0, 2), span(kWait, 0, 9)}, 0, 10 * kMs);
  EXPECT_DOUBLE_EQ(b.hidden_s, 0.0);
  EXPECT_DOUBLE_EQ(b.hidden_frac, 0.0);
  EXPECT_DOUBLE_EQ(exposed_comm({}, 0, kMs).hidden_frac, 0.0);
}

TEST(Straggler, TheLateRankIsNamedAndTheOthersBlock) {
  // Rank 1 issues every collective 200 ms after rank 0; rank 0 waits for it.
  std::vector<Event> ev;
  for (int s = 0; s < 3; ++s) {
    ev.push_back(enqueue("world", s, 1000 * s, 0));
    ev.push_back(enqueue("world", s, 1000 * s + 200, 1));
    ev.push_back(span(kWait, 1000 * s, 1000 * s + 210, 0));
    ev.push_back(span(kWait, 1000 * s + 200, 1000 * s + 210, 1));
  }
  ev.push_back(enqueue("world", 3, 3000, 0));  // rank 1 never issued #3: not matched, not counted
  ev.push_back(span(kForward, 3000, 3100, 0));
  StragglerReport r = find_straggler(ev, 2);
  EXPECT_EQ(r.straggler, 1);
  EXPECT_NEAR(r.late_s[1], 0.6, 1e-12);
  EXPECT_EQ(r.late_s[0], 0.0);
  EXPECT_NEAR(r.blocked_s[0], 0.63, 1e-12);
  EXPECT_NEAR(r.blocked_s[1], 0.03, 1e-12);
  EXPECT_EQ(r.oldest_last_event, 1);  // rank 1's last event ended at 2210 ms, rank 0's at 3100 ms
}

TEST(TraceRecorder, OffRecordsNothingOnRecordsSpansThatRoundTripThroughChromeJson) {
  clear();
  set_enabled(false);
  { Span s("off", kStep); }
  record_instant("off", kEnqueue);
  EXPECT_TRUE(collect().empty());

  set_enabled(true);
  set_thread_name("train");
  {
    Span outer("outer", kStep);
    outer.arg(num("step", 7));
    Span inner("inner", kForward);
  }
  std::thread([] {
    set_thread_name("comm test");
    record_span("allreduce", kComm, now_ns(), now_ns() + 1000, {num("seq", 3), str("group", "world")});
  }).join();
  set_enabled(false);
  std::vector<Event> ev = collect();
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].name, "outer");  // sorted by begin; parent first
  EXPECT_EQ(ev[1].name, "inner");
  EXPECT_GE(ev[1].ts_ns, ev[0].ts_ns);
  EXPECT_LE(ev[1].end_ns(), ev[0].end_ns());
  EXPECT_NE(ev[2].tid, ev[0].tid);

  const std::string text = to_chrome_json(ev, 3, thread_names(), 5000);
  std::vector<Event> back = from_chrome_json(text, "test");
  ASSERT_EQ(back.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(back[i].name, ev[i].name);
    EXPECT_EQ(back[i].rank, 3);
    EXPECT_NEAR(static_cast<double>(back[i].ts_ns), static_cast<double>(ev[i].ts_ns + 5000), 1.0);
  }
  EXPECT_EQ(back[0].num_arg("step"), 7);
  EXPECT_EQ(back[2].num_arg("seq"), 3);
  EXPECT_EQ(back[2].str_arg("group"), "world");
  EXPECT_NE(text.find("\"thread_name\""), std::string::npos);

  // Merged: both ranks' tracks, and the summary.
  const std::string merged = merge_chrome_json({text, to_chrome_json(ev, 1, {}, 0)});
  std::vector<Event> all = from_chrome_json(merged, "merged");
  EXPECT_EQ(all.size(), 6u);
  EXPECT_NE(merged.find("\"straggler\""), std::string::npos);
  EXPECT_THROW(from_chrome_json("{\"traceEvents\": 3}", "bad.json"), IoError);
  EXPECT_THROW(merge_chrome_json({text, "not json"}), IoError);
  clear();
}

TEST(TraceRecorder, HookOpenedSpansNest) {
  clear();
  set_enabled(true);
  const size_t base = open_spans();
  {
    Span pass("backward", kBackward);
    // The child's hook fires before its parent's (they share an output): the child moves inside the parent.
    open_span("backward h.1.mlp", kBackward, 4, "h.1.mlp");
    open_span("backward h.1", kBackward, 3, "h.1");
    open_span("backward h.1.attn", kBackward, 4, "h.1.attn");  // closes mlp (same depth)
    open_span("backward h.0", kBackward, 3, "h.0");            // closes attn and h.1
    open_span("backward h.0.ln", kBackward, 4, "h.0.ln");
    close_to(base);
  }
  set_enabled(false);
  std::vector<Event> ev = collect();
  ASSERT_EQ(ev.size(), 6u);
  auto find = [&](const std::string& n) -> const Event& {
    for (const auto& e : ev)
      if (e.name == n) return e;
    ADD_FAILURE() << "no span " << n;
    return ev[0];
  };
  auto inside = [](const Event& c, const Event& p) { return c.ts_ns >= p.ts_ns && c.end_ns() <= p.end_ns(); };
  EXPECT_TRUE(inside(find("backward h.1.mlp"), find("backward h.1")));
  EXPECT_TRUE(inside(find("backward h.1.attn"), find("backward h.1")));
  EXPECT_TRUE(inside(find("backward h.0.ln"), find("backward h.0")));
  EXPECT_LE(find("backward h.1").end_ns(), find("backward h.0").ts_ns);
  for (const auto& e : ev) EXPECT_TRUE(inside(e, find("backward"))) << e.name;
  clear();
}

}  // namespace
}  // namespace loom::trace
