// The pool of never-destroyed side streams (tensor/stream_pool.h) that the nccl
// backend takes its stream from, and why: with the caching allocator over a host
// backend whose event_record fails on a destroyed stream (as cudaEventRecord
// does), memory record_stream()'d on a stream whose user is gone is freed
// cleanly when the stream came from the pool, and fails when it was destroyed.
#include "tensor/stream_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "tensor/caching_allocator.h"
#include "tensor/error.h"

namespace loom {
namespace {

/// Streams are numbered handles; the test destroys some. Counts creations.
struct FakeStreams {
  intptr_t next = 1;
  int created = 0;
  std::set<StreamHandle> destroyed;
  StreamHandle create() {
    ++created;
    return reinterpret_cast<StreamHandle>(next++);
  }
};

TEST(StreamPool, GivenBackStreamsAreReusedNotRecreated) {
  FakeStreams fs;
  StreamPool pool([&](int) { return fs.create(); });
  StreamHandle a = pool.acquire(0);
  StreamHandle b = pool.acquire(0);
  EXPECT_NE(a, b);
  EXPECT_EQ(pool.leased(0), 2u);
  pool.release(0, a);
  EXPECT_EQ(pool.acquire(0), a);  // the one given back, not a new one
  EXPECT_EQ(fs.created, 2);
  // A hundred groups created and destroyed one after another need one stream more.
  pool.release(0, a);
  pool.release(0, b);
  for (int i = 0; i < 100; ++i) pool.release(0, pool.acquire(0));
  EXPECT_EQ(fs.created, 2);
  EXPECT_EQ(pool.created(0), 2u);
  EXPECT_EQ(pool.leased(0), 0u);
}

TEST(StreamPool, DevicesHaveSeparateStreams) {
  FakeStreams fs;
  std::vector<int> devices;
  StreamPool pool([&](int d) {
    devices.push_back(d);
    return fs.create();
  });
  StreamHandle s0 = pool.acquire(0);
  pool.release(0, s0);
  StreamHandle s1 = pool.acquire(1);  // device 0's free stream is not device 1's
  EXPECT_NE(s0, s1);
  EXPECT_EQ(devices, (std::vector<int>{0, 1}));
  EXPECT_EQ(pool.created(1), 1u);
}

TEST(StreamPool, ReleasingAForeignOrTwiceReleasedStreamIsAnError) {
  FakeStreams fs;
  StreamPool pool([&](int) { return fs.create(); });
  StreamHandle s = pool.acquire(0);
  EXPECT_THROW(pool.release(1, s), InvalidArgument);  // wrong device
  EXPECT_THROW(pool.release(0, reinterpret_cast<StreamHandle>(999)), InvalidArgument);
  pool.release(0, s);
  EXPECT_THROW(pool.release(0, s), InvalidArgument);
}

TEST(StreamPool, ConcurrentLeasesGetDistinctStreams) {
  FakeStreams fs;
  std::mutex mu;
  StreamPool pool([&](int) {
    std::lock_guard<std::mutex> g(mu);
    return fs.create();
  });
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::atomic<int> clashes{0};
  std::mutex held_mu;
  std::set<StreamHandle> held;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        StreamHandle s = pool.acquire(0);
        {
          std::lock_guard<std::mutex> g(held_mu);
          if (!held.insert(s).second) ++clashes;
        }
        {
          std::lock_guard<std::mutex> g(held_mu);
          held.erase(s);
        }
        pool.release(0, s);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(clashes.load(), 0);
  EXPECT_LE(pool.created(0), static_cast<size_t>(kThreads));
  EXPECT_EQ(pool.leased(0), 0u);
}

// ---------------------------------------------------------------- with the allocator

/// malloc memory; events that complete at once but cannot be recorded on a
/// destroyed stream, as with CUDA.
class HostMemory : public AllocatorBackend {
 public:
  explicit HostMemory(const FakeStreams& fs) : fs_(fs) {}
  void* alloc(size_t bytes) override { return std::malloc(bytes); }
  void free(void* p) override { std::free(p); }
  void* event_create() override { return new int(0); }
  void event_record(void*, StreamHandle stream) override {
    LOOM_CHECK(fs_.destroyed.count(stream) == 0, "event_record on destroyed stream ", stream);
  }
  bool event_query(void*) override { return true; }
  void event_destroy(void* e) override { delete static_cast<int*>(e); }

 private:
  const FakeStreams& fs_;
};

TEST(StreamPool, MemoryUsedOnAPooledStreamIsFreedAfterItsUserIsGone) {
  FakeStreams fs;
  StreamPool pool([&](int) { return fs.create(); });
  CachingAllocator alloc(std::make_unique<HostMemory>(fs), "cuda:0");
  const StreamHandle compute = fs.create();
  void* tensor = alloc.allocate(4096, compute);
  {
    // A communicator: leases a stream, uses the tensor on it, goes away.
    StreamHandle comm = pool.acquire(0);
    EXPECT_TRUE(alloc.record_stream(tensor, comm));
    pool.release(0, comm);  // the group's destructor; the stream itself lives on
  }
  EXPECT_NO_THROW(alloc.free(tensor));  // records an event on the (living) pooled stream
  EXPECT_EQ(alloc.stats().num_frees, 1);
}

TEST(StreamPool, ADestroyedStreamWouldFailTheFreeThePoolAvoids) {
  // What the nccl backend did before it took its stream from the pool: it
  // destroyed its own stream with the group, and the later free failed (from a
  // Storage's deleter: std::terminate).
  FakeStreams fs;
  CachingAllocator alloc(std::make_unique<HostMemory>(fs), "cuda:0");
  const StreamHandle compute = fs.create();
  void* tensor = alloc.allocate(4096, compute);
  const StreamHandle comm = fs.create();
  EXPECT_TRUE(alloc.record_stream(tensor, comm));
  fs.destroyed.insert(comm);  // ~NcclBackend: cudaStreamDestroy
  EXPECT_THROW(alloc.free(tensor), Error);
}

}  // namespace
}  // namespace loom
