// How the nccl backend orders its stream against the caller's
// (collectives/nccl/stream_order.h), on the CPU with fake streams and events, and
// the ProcessGroup's Backend::on_enqueue hook it relies on: called on the
// caller's thread at enqueue, its action run on the worker right before the op.
// The same ordering on a real device is tests/collectives/nccl_test.cc (gpu).
#include "collectives/nccl/stream_order.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/process_group.h"

namespace loom::collectives {
namespace {

using detail::CapturedStream;
using detail::StreamOrder;
using detail::StreamOrderOps;

// Streams are small integers; an event remembers the stream it was recorded on.
// Each thread has its own current stream (a StreamGuard), 1 by default.
thread_local intptr_t tls_current = 1;

class FakeOps : public StreamOrderOps {
 public:
  void* current_stream(int) override { return reinterpret_cast<void*>(tls_current); }
  void* event_create(int) override {
    std::lock_guard<std::mutex> g(mu);
    const intptr_t id = ++next_event;
    live.insert({id, 0});
    return reinterpret_cast<void*>(id);
  }
  void event_record(void* event, void* stream) override {
    std::lock_guard<std::mutex> g(mu);
    live.at(reinterpret_cast<intptr_t>(event)) = reinterpret_cast<intptr_t>(stream);
  }
  void stream_wait(void* stream, void* event) override {
    std::lock_guard<std::mutex> g(mu);
    // What the waiting stream now waits for: the stream the event was recorded on.
    waits.push_back({reinterpret_cast<intptr_t>(stream), live.at(reinterpret_cast<intptr_t>(event))});
  }
  void event_destroy(void* event) noexcept override {
    std::lock_guard<std::mutex> g(mu);
    live.erase(reinterpret_cast<intptr_t>(event));
  }
  std::mutex mu;
  intptr_t next_event = 100;
  std::map<intptr_t, intptr_t> live;                 // event -> stream it was last recorded on (0: none)
  std::vector<std::pair<intptr_t, intptr_t>> waits;  // (waiting stream, stream waited for)
};

constexpr intptr_t kComm = 50;  // the communicator's stream

TEST(NcclStreamOrder, CollectiveWaitsForTheCallersStreamNotTheWorkers) {
  FakeOps ops;
  StreamOrder order(ops, 0, reinterpret_cast<void*>(kComm));
  std::shared_ptr<CapturedStream> captured;
  std::thread caller([&] {
    tls_current = 7;  // the caller runs under a StreamGuard of stream 7
    captured = order.capture();
  });
  caller.join();
  EXPECT_EQ(reinterpret_cast<intptr_t>(captured->stream()), 7);
  std::thread worker([&] {  // the worker's current stream is the default, 1
    order.before_op(captured);
    order.before_launch();
  });
  worker.join();
  ASSERT_EQ(ops.waits.size(), 1u);
  EXPECT_EQ(ops.waits[0], (std::pair<intptr_t, intptr_t>{kComm, 7}));
}

TEST(NcclStreamOrder, TheEventIsRecordedAtEnqueueNotWhenTheWorkerRuns) {
  FakeOps ops;
  StreamOrder order(ops, 0, reinterpret_cast<void*>(kComm));
  tls_current = 7;
  std::shared_ptr<CapturedStream> captured = order.capture();
  const intptr_t event = reinterpret_cast<intptr_t>(captured->event());
  EXPECT_EQ(ops.live.at(event), 7);  // recorded on the caller's stream already
  tls_current = 9;                   // the caller moves on to another stream before the worker runs
  order.before_op(captured);
  order.before_launch();
  ASSERT_EQ(ops.waits.size(), 1u);
  EXPECT_EQ(ops.waits[0].second, 7);
  tls_current = 1;
}

TEST(NcclStreamOrder, DirectCallWaitsForTheCallingThreadsStream) {
  FakeOps ops;
  StreamOrder order(ops, 0, reinterpret_cast<void*>(kComm));
  tls_current = 3;
  order.before_launch();  // a backend op called without a ProcessGroup
  order.before_launch();
  tls_current = 1;
  ASSERT_EQ(ops.waits.size(), 2u);
  EXPECT_EQ(ops.waits[0], (std::pair<intptr_t, intptr_t>{kComm, 3}));
  EXPECT_EQ(ops.waits[1], (std::pair<intptr_t, intptr_t>{kComm, 3}));
}

TEST(NcclStreamOrder, OrderingIsConsumedByOneLaunch) {
  // A composite op (two launches for one call): the second orders itself again.
  FakeOps ops;
  StreamOrder order(ops, 0, reinterpret_cast<void*>(kComm));
  tls_current = 7;
  auto captured = order.capture();
  tls_current = 1;
  order.before_op(captured);
  order.before_launch();
  order.before_launch();
  ASSERT_EQ(ops.waits.size(), 2u);
  EXPECT_EQ(ops.waits[0].second, 7);
  EXPECT_EQ(ops.waits[1].second, 1);
}

TEST(NcclStreamOrder, CapturedEventsAreDestroyedWithTheirCall) {
  FakeOps ops;
  {
    StreamOrder order(ops, 0, reinterpret_cast<void*>(kComm));
    auto a = order.capture();
    auto b = order.capture();
    EXPECT_EQ(ops.live.size(), 2u);
    a.reset();  // a call cancelled before it ran
    EXPECT_EQ(ops.live.size(), 1u);
    order.before_op(b);
    order.before_launch();
    b.reset();
    order.before_launch();  // creates the fallback event
    EXPECT_EQ(ops.live.size(), 1u);
  }
  EXPECT_TRUE(ops.live.empty());
}

// ---------------------------------------------------------------- ProcessGroup's hook

struct HookLog {
  std::mutex mu;
  std::vector<std::string> events;
  void add(const std::string& e) {
    std::lock_guard<std::mutex> g(mu);
    events.push_back(e);
  }
};
HookLog* hook_log = nullptr;
std::thread::id caller_id;

class HookBackend : public Backend {
 public:
  std::string name() const override { return "hook_test"; }
  std::function<void()> on_enqueue() override {
    const int n = ++enqueued_;
    hook_log->add("enqueue " + std::to_string(n) +
                  (std::this_thread::get_id() == caller_id ? " on caller" : " on another thread"));
    return [n] {
      hook_log->add("before " + std::to_string(n) +
                    (std::this_thread::get_id() == caller_id ? " on caller" : " on worker"));
    };
  }
  void allreduce(Tensor&, ReduceOp, Millis) override { hook_log->add("allreduce"); }
  void reduce_scatter(Tensor&, const Tensor&, ReduceOp, Millis) override {}
  void all_gather(Tensor&, const Tensor&, Millis) override {}
  void broadcast(Tensor&, int, Millis) override {}
  void barrier(Millis) override { hook_log->add("barrier"); }
  void send(const Tensor&, int, int, Millis) override {}
  void recv(Tensor&, int, int, Millis) override {}
  void all_to_all(Tensor&, const Tensor&, Millis) override {}

 private:
  std::atomic<int> enqueued_{0};
};

TEST(ProcessGroupOnEnqueue, RunsOnTheCallerAndItsActionOnTheWorkerBeforeTheOp) {
  HookLog log;
  hook_log = &log;
  caller_id = std::this_thread::get_id();
  register_backend("hook_test", [](const BackendContext&) { return std::make_unique<HookBackend>(); });
  {
    ProcessGroup pg(std::make_shared<HashStore>(), 0, 1, "hook_test");
    Tensor t = from_vector(std::vector<float>{1, 2}, {2});
    auto w1 = pg.allreduce(t);
    auto w2 = pg.barrier();
    w1->wait();
    w2->wait();
  }
  hook_log = nullptr;
  // The enqueues happen on the caller in call order; each action runs on the
  // worker, right before its op.
  const std::vector<std::string> want_worker = {"before 1 on worker", "allreduce", "before 2 on worker", "barrier"};
  std::vector<std::string> enq, worker;
  for (const auto& e : log.events) (e.rfind("enqueue", 0) == 0 ? enq : worker).push_back(e);
  EXPECT_EQ(enq, (std::vector<std::string>{"enqueue 1 on caller", "enqueue 2 on caller"}));
  EXPECT_EQ(worker, want_worker);
}

}  // namespace
}  // namespace loom::collectives
