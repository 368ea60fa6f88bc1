// The caching allocator's policy driven on the host: a backend over malloc that
// counts its calls and can be made to run out of memory, and events whose
// completion the test decides (a stream "finishes" when the test says so).
#include "tensor/caching_allocator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "tensor/error.h"

namespace loom {
namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;

/// What the host backend did, shared between the allocator (which owns the
/// backend) and the test.
struct HostState {
  int64_t allocs = 0, frees = 0, refused = 0;
  size_t capacity = SIZE_MAX;  // bytes the "device" has
  size_t in_use = 0;
  std::map<char*, size_t> live;  // segments handed out
  int64_t events_created = 0, events_destroyed = 0, events_recorded = 0;
  std::map<StreamHandle, int64_t> queued, finished;  // per stream: tickets recorded, tickets passed
  std::vector<std::vector<StreamHandle>> waits;      // the streams of each wait_streams call
  bool default_wait = false;                         // wait_streams: AllocatorBackend's (polls events)
  std::mutex mutex;

  /// The stream passes every event recorded on it so far.
  void finish(StreamHandle s) {
    std::lock_guard<std::mutex> lock(mutex);
    finished[s] = queued[s];
  }
};

class HostBackend : public AllocatorBackend {
 public:
  explicit HostBackend(std::shared_ptr<HostState> st) : st_(std::move(st)) {}
  void* alloc(size_t bytes) override {
    std::lock_guard<std::mutex> lock(st_->mutex);
    if (bytes > st_->capacity - st_->in_use) {
      ++st_->refused;
      return nullptr;
    }
    char* p = static_cast<char*>(std::malloc(bytes));
    if (!p) return nullptr;
    ++st_->allocs;
    st_->in_use += bytes;
    st_->live[p] = bytes;
    return p;
  }
  void free(void* ptr) override {
    std::lock_guard<std::mutex> lock(st_->mutex);
    auto it = st_->live.find(static_cast<char*>(ptr));
    if (it == st_->live.end()) {
      ADD_FAILURE() << "backend free of a pointer it never returned";
      return;
    }
    st_->in_use -= it->second;
    st_->live.erase(it);
    ++st_->frees;
    std::free(ptr);
  }
  struct Event {
    StreamHandle stream = nullptr;
    int64_t ticket = -1;  // -1: never recorded
  };
  void* event_create() override {
    ++st_->events_created;
    events_.push_back(std::make_unique<Event>());
    return events_.back().get();
  }
  void event_record(void* event, StreamHandle stream) override {
    std::lock_guard<std::mutex> lock(st_->mutex);
    auto* e = static_cast<Event*>(event);
    e->stream = stream;
    e->ticket = ++st_->queued[stream];
    ++st_->events_recorded;
  }
  bool event_query(void* event) override {
    std::lock_guard<std::mutex> lock(st_->mutex);
    auto* e = static_cast<Event*>(event);
    return e->ticket < 0 || st_->finished[e->stream] >= e->ticket;
  }
  void event_destroy(void*) override { ++st_->events_destroyed; }
  /// A host wait that the streams finish at once (a synchronise), unless default_wait.
  void wait_streams(const std::vector<StreamHandle>& streams) override {
    if (st_->default_wait) return AllocatorBackend::wait_streams(streams);
    st_->waits.push_back(streams);
    for (StreamHandle s : streams) st_->finish(s);
  }
  std::string describe_memory() override { return "the host test device has 8 MiB in all"; }

 private:
  std::shared_ptr<HostState> st_;
  std::vector<std::unique_ptr<Event>> events_;
};

StreamHandle stream(int i) { return reinterpret_cast<StreamHandle>(static_cast<uintptr_t>(0x1000 * i)); }
const StreamHandle s1 = stream(1), s2 = stream(2), s3 = stream(3);

struct Fixture {
  std::shared_ptr<HostState> st = std::make_shared<HostState>();
  std::unique_ptr<CachingAllocator> a = std::make_unique<CachingAllocator>(std::make_unique<HostBackend>(st), "cuda:7");
};

char* cp(void* p) { return static_cast<char*>(p); }

TEST(CachingAllocator, SteadyStateTrainingStepsDoNoBackendAllocsAfterTheFirst) {
  Fixture f;
  // Parameters and optimizer state live across steps.
  std::vector<void*> persistent;
  for (size_t n : {768 * KiB, 3 * MiB, 12 * MiB + 100, size_t{4000}}) persistent.push_back(f.a->allocate(n, s1));
  const int64_t base_allocated = f.a->stats().allocated_bytes;
  int64_t backend_allocs_after_first = -1;
  for (int step = 0; step < 8; ++step) {
    // Forward: activations of mixed sizes, some freed early (temporaries).
    std::vector<void*> saved;
    for (int layer = 0; layer < 4; ++layer) {
      saved.push_back(f.a->allocate(6 * MiB, s1));             // (B, T, C) activations
      void* tmp = f.a->allocate(18 * MiB + 4096, s1);          // attention scores, a temporary
      saved.push_back(f.a->allocate(200 * KiB + 7, s1));       // layer-norm statistics
      void* small_tmp = f.a->allocate(1000 + 17 * layer, s1);  // a scalar-ish reduction
      f.a->free(tmp);
      f.a->free(small_tmp);
    }
    // Backward: gradients appear while activations go, in reverse.
    std::vector<void*> grads;
    for (int layer = 3; layer >= 0; --layer) {
      grads.push_back(f.a->allocate(3 * MiB, s1));
      void* tmp = f.a->allocate(18 * MiB + 4096, s1);
      f.a->free(tmp);
      f.a->free(saved[2 * layer + 1]);
      f.a->free(saved[2 * layer]);
    }
    for (void* g : grads) f.a->free(g);  // optimizer step consumed them
    EXPECT_EQ(f.a->stats().allocated_bytes, base_allocated) << "step " << step;
    if (step == 0) {
      backend_allocs_after_first = f.st->allocs;
    } else {
      EXPECT_EQ(f.st->allocs, backend_allocs_after_first) << "step " << step << " called the backend";
    }
  }
  EXPECT_EQ(f.st->frees, 0);
  const AllocatorStats s = f.a->stats();
  EXPECT_EQ(s.num_backend_allocs, backend_allocs_after_first);
  EXPECT_EQ(s.num_allocs, 4 + 8 * (4 * 4 + 4 * 2));
  EXPECT_EQ(s.num_frees, 8 * (4 * 4 + 4 * 2));
  for (void* p : persistent) f.a->free(p);
  EXPECT_EQ(f.a->stats().allocated_bytes, 0);
}

TEST(CachingAllocator, SplitsASegmentAndCoalescesFreedNeighbours) {
  Fixture f;
  void* a = f.a->allocate(1000, s1);  // -> 1024
  void* b = f.a->allocate(2048, s1);
  void* c = f.a->allocate(1, s1);  // -> 512
  EXPECT_EQ(f.st->allocs, 1) << "three small requests share one 2 MiB segment";
  EXPECT_EQ(cp(b), cp(a) + 1024);
  EXPECT_EQ(cp(c), cp(b) + 2048);
  EXPECT_EQ(f.a->stats().allocated_bytes, 1024 + 2048 + 512);
  EXPECT_EQ(f.a->stats().reserved_bytes, static_cast<int64_t>(2 * MiB));

  // Best fit: the 2048-byte hole serves 1536 bytes rather than the tail of the segment.
  f.a->free(b);
  void* d = f.a->allocate(1500, s1);
  EXPECT_EQ(d, b);
  void* e = f.a->allocate(512, s1);  // the 512 left of the hole
  EXPECT_EQ(cp(e), cp(b) + 1536);

  // Free in an order that needs merging with the previous and the next block.
  for (void* p : {a, e, c, d}) f.a->free(p);
  EXPECT_EQ(f.a->stats().allocated_bytes, 0);
  // Coalesced whole again: two 1 MiB requests fill it exactly, back to back.
  void* m1 = f.a->allocate(1 * MiB, s1);
  void* m2 = f.a->allocate(1 * MiB, s1);
  EXPECT_EQ(m1, a);
  EXPECT_EQ(cp(m2), cp(m1) + MiB);
  EXPECT_EQ(f.st->allocs, 1);
  f.a->free(m2);
  f.a->free(m1);
  f.a->empty_cache();
  EXPECT_EQ(f.st->frees, 1) << "the segment was whole again, so empty_cache returned it";
  EXPECT_EQ(f.a->stats().reserved_bytes, 0);
  EXPECT_TRUE(f.st->live.empty());
}

TEST(CachingAllocator, LargeRequestsUseSegmentsRoundedTo2MiBAndSplitOnlyUsefulRemainders) {
  Fixture f;
  void* p = f.a->allocate(5 * MiB, s1);
  ASSERT_EQ(f.st->live.size(), 1u);
  EXPECT_EQ(f.st->live.begin()->second, 6 * MiB);
  // The 1 MiB left over is too small for the large pool: the block keeps it.
  EXPECT_EQ(f.a->stats().allocated_bytes, static_cast<int64_t>(6 * MiB));
  f.a->free(p);
  void* q = f.a->allocate(3 * MiB, s1);  // from the cached 6 MiB, split 3 + 3
  EXPECT_EQ(q, p);
  EXPECT_EQ(f.a->stats().allocated_bytes, static_cast<int64_t>(3 * MiB));
  void* r = f.a->allocate(2 * MiB + 512 * KiB, s1);  // the 3 MiB remainder; 0.5 MiB stays with it
  EXPECT_EQ(cp(r), cp(q) + 3 * MiB);
  EXPECT_EQ(f.a->stats().allocated_bytes, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(f.st->allocs, 1);
  // A small request does not take large-pool memory, even when it is free.
  f.a->free(r);
  void* s = f.a->allocate(4 * KiB, s1);
  EXPECT_EQ(f.st->allocs, 2);
  EXPECT_EQ(f.st->live[cp(s)], 2 * MiB);
  f.a->free(s);
  f.a->free(q);
}

TEST(CachingAllocator, FreeListsArePerStream) {
  Fixture f;
  void* p = f.a->allocate(64 * KiB, s1);
  f.a->free(p);
  void* q = f.a->allocate(64 * KiB, s2);
  EXPECT_EQ(f.st->allocs, 2) << "a block cached for s1 must not serve s2";
  EXPECT_NE(q, p);
  void* r = f.a->allocate(64 * KiB, s1);
  EXPECT_EQ(r, p) << "s1's cached block serves s1";
  EXPECT_EQ(f.st->allocs, 2);
  // A freed block goes back to the list of the stream it was allocated on.
  f.a->free(q);
  void* t = f.a->allocate(64 * KiB, s2);
  EXPECT_EQ(t, q);
  f.a->free(t);
  f.a->free(r);
  // Nor the other way round: a block cached for s3 does not serve s1.
  void* u = f.a->allocate(1536 * KiB, s3);
  f.a->free(u);
  void* w = f.a->allocate(1536 * KiB, s1);
  EXPECT_NE(w, u);
  EXPECT_EQ(f.st->allocs, 4);
  f.a->free(w);
}

TEST(CachingAllocator, RecordStreamDefersReuseUntilEveryUsingStreamPassedTheFree) {
  Fixture f;
  void* p = f.a->allocate(2 * MiB, s1);  // a whole segment, nothing to split off
  EXPECT_TRUE(f.a->record_stream(cp(p) + 4096, s2)) << "an interior pointer names its block";
  EXPECT_TRUE(f.a->record_stream(p, s3));
  EXPECT_TRUE(f.a->record_stream(p, s1)) << "the allocating stream itself needs no event";
  f.a->free(p);
  EXPECT_EQ(f.st->events_recorded, 2);
  EXPECT_EQ(f.a->stats().allocated_bytes, 0);

  void* q = f.a->allocate(2 * MiB, s1);
  EXPECT_NE(q, p) << "s2 and s3 may still use p";
  EXPECT_EQ(f.st->allocs, 2);
  f.a->free(q);
  f.st->finish(s2);
  void* r = f.a->allocate(2 * MiB, s1);
  EXPECT_EQ(r, q) << "s3 has not passed the free yet";
  f.a->free(r);
  f.a->empty_cache();
  EXPECT_EQ(f.st->frees, 1) << "the pending block's segment stays through empty_cache";
  EXPECT_EQ(f.st->live.count(cp(p)), 1u);

  f.st->finish(s3);
  void* u = f.a->allocate(2 * MiB, s1);
  EXPECT_EQ(u, p) << "both streams passed: p is reused";
  EXPECT_EQ(f.st->allocs, 2);
  f.a->free(u);
  // Events are reused, not created per free.
  void* v = f.a->allocate(2 * MiB, s1);
  f.a->record_stream(v, s2);
  f.a->free(v);
  EXPECT_EQ(f.st->events_created, 2);
  EXPECT_EQ(f.st->events_recorded, 3);
  f.st->finish(s2);
  f.a->empty_cache();
  EXPECT_TRUE(f.st->live.empty());
  EXPECT_EQ(f.a->stats().reserved_bytes, 0);
}

TEST(CachingAllocator, PendingBlockMergesWithItsNeighboursOnceFree) {
  Fixture f;
  void* a = f.a->allocate(4 * KiB, s1);
  void* b = f.a->allocate(4 * KiB, s1);
  f.a->record_stream(a, s2);
  f.a->free(a);
  f.a->free(b);
  f.a->empty_cache();
  EXPECT_EQ(f.st->frees, 0) << "a is pending, so its segment is not whole";
  f.st->finish(s2);
  f.a->empty_cache();
  EXPECT_EQ(f.st->frees, 1);
  EXPECT_TRUE(f.st->live.empty());
}

TEST(CachingAllocator, OutOfMemoryEmptiesTheCacheRetriesOnceThenThrowsANamedError) {
  Fixture f;
  f.st->capacity = 8 * MiB;
  void* p = f.a->allocate(6 * MiB, s1);
  f.a->free(p);  // cached for s1
  void* q = f.a->allocate(6 * MiB, s2);
  EXPECT_NE(q, nullptr);
  AllocatorStats s = f.a->stats();
  EXPECT_EQ(s.num_alloc_retries, 1);
  EXPECT_EQ(s.num_backend_frees, 1) << "s1's cached segment was returned to make room";
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(f.st->refused, 1);

  try {
    f.a->allocate(4 * MiB, s2);
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    const std::string m = e.what();
    for (const char* want :
         {"out of memory on cuda:7", "4.00 MiB (4194304 bytes)", "6.00 MiB (6291456 bytes) allocated", "reserved",
          "the host test device has 8 MiB in all", "batch size"})
      EXPECT_NE(m.find(want), std::string::npos) << "missing '" << want << "' in: " << m;
  }
  s = f.a->stats();
  EXPECT_EQ(s.num_ooms, 1);
  EXPECT_EQ(s.num_alloc_retries, 2);
  EXPECT_EQ(f.st->refused, 3) << "one try, then one retry";
  EXPECT_EQ(s.allocated_bytes, static_cast<int64_t>(6 * MiB)) << "a failed request changes no usage";
  // Still usable after the error.
  f.a->free(q);
  void* r = f.a->allocate(4 * MiB, s2);
  EXPECT_EQ(r, q);
  f.a->free(r);
  EXPECT_THROW(f.a->allocate(size_t{1} << 50, s1), OutOfMemory);
  EXPECT_THROW(f.a->allocate(SIZE_MAX, s1), OutOfMemory) << "no overflow when rounding";
  EXPECT_EQ(f.a->stats().num_ooms, 3);
}

TEST(CachingAllocator, StatsTrackAllocatedReservedAndPeaks) {
  Fixture f;
  EXPECT_EQ(f.a->allocate(0, s1), nullptr);
  f.a->free(nullptr);
  void* a = f.a->allocate(1 * MiB, s1);  // small pool: a 2 MiB segment
  void* b = f.a->allocate(4 * MiB, s1);  // large pool: a 4 MiB segment
  AllocatorStats s = f.a->stats();
  EXPECT_EQ(s.allocated_bytes, static_cast<int64_t>(5 * MiB));
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(s.peak_allocated_bytes, static_cast<int64_t>(5 * MiB));
  EXPECT_EQ(s.peak_reserved_bytes, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(s.num_allocs, 2);
  EXPECT_EQ(s.num_backend_allocs, 2);
  f.a->free(b);
  s = f.a->stats();
  EXPECT_EQ(s.allocated_bytes, static_cast<int64_t>(1 * MiB));
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(6 * MiB)) << "freed memory stays cached";
  EXPECT_EQ(s.peak_allocated_bytes, static_cast<int64_t>(5 * MiB));
  EXPECT_EQ(s.num_frees, 1);
  f.a->reset_peak();
  s = f.a->stats();
  EXPECT_EQ(s.peak_allocated_bytes, static_cast<int64_t>(1 * MiB));
  EXPECT_EQ(s.peak_reserved_bytes, static_cast<int64_t>(6 * MiB));
  f.a->empty_cache();
  s = f.a->stats();
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(2 * MiB)) << "the small segment is in use";
  EXPECT_EQ(s.peak_reserved_bytes, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(s.num_backend_frees, 1);
  void* c = f.a->allocate(512 * KiB, s1);
  s = f.a->stats();
  EXPECT_EQ(s.peak_allocated_bytes, static_cast<int64_t>(1 * MiB + 512 * KiB));
  EXPECT_EQ(s.num_backend_allocs, 2) << "the small segment had room";
  f.a->free(c);
  f.a->free(a);
}

TEST(CachingAllocator, FreeOfAForeignOrFreedPointerThrows) {
  Fixture f;
  void* p = f.a->allocate(100, s1);
  int x = 0;
  EXPECT_THROW(f.a->free(&x), InvalidArgument);
  EXPECT_THROW(f.a->free(cp(p) + 512), InvalidArgument) << "the split-off rest is not handed out";
  EXPECT_FALSE(f.a->record_stream(&x, s2));
  f.a->free(p);
  EXPECT_THROW(f.a->free(p), InvalidArgument);
  EXPECT_FALSE(f.a->record_stream(p, s2)) << "a freed block is not live";
}

TEST(CachingAllocator, DestructorReturnsEverySegment) {
  auto st = std::make_shared<HostState>();
  {
    CachingAllocator a(std::make_unique<HostBackend>(st), "cuda:0");
    a.allocate(100, s1);
    a.free(a.allocate(5 * MiB, s1));
    void* p = a.allocate(7 * MiB, s2);
    a.record_stream(p, s3);
    a.free(p);
  }
  EXPECT_EQ(st->allocs, 3);
  EXPECT_EQ(st->frees, 3);
  EXPECT_TRUE(st->live.empty());
  EXPECT_EQ(st->events_destroyed, st->events_created);
}

/// Live allocations never overlap and lie inside a backend segment, under random traffic.
TEST(CachingAllocator, RandomTrafficNeverHandsOutOverlappingMemory) {
  Fixture f;
  std::mt19937 rng(1234);
  std::map<char*, size_t> live;  // ptr -> requested bytes
  const StreamHandle streams[] = {s1, s2};
  for (int i = 0; i < 4000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const size_t n = rng() % 2 ? 1 + rng() % (64 * KiB) : 1 + rng() % (5 * MiB);
      char* p = cp(f.a->allocate(n, streams[rng() % 2]));
      auto next = live.lower_bound(p);
      if (next != live.end()) {
        ASSERT_LE(p + n, next->first) << "overlaps the next live block";
      }
      if (next != live.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, p) << "overlaps the previous live block";
      }
      auto seg = f.st->live.upper_bound(p);
      ASSERT_NE(seg, f.st->live.begin());
      --seg;
      ASSERT_LE(p + n, seg->first + seg->second) << "outside its segment";
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 512, reinterpret_cast<uintptr_t>(seg->first) % 512);
      live[p] = n;
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      f.a->free(it->first);
      live.erase(it);
    }
    if (i % 500 == 0) f.a->empty_cache();
  }
  for (auto& [p, n] : live) f.a->free(p);
  EXPECT_EQ(f.a->stats().allocated_bytes, 0);
  f.a->empty_cache();
  EXPECT_EQ(f.a->stats().reserved_bytes, 0) << "everything coalesced back into whole segments";
  EXPECT_TRUE(f.st->live.empty());
}

TEST(CachingAllocator, CachingOffGivesEveryBlockItsOwnExactBackendAllocationFreedAfterItsStreams) {
  auto st = std::make_shared<HostState>();
  CachingAllocator a(std::make_unique<HostBackend>(st), "cuda:3", /*caching=*/false);
  EXPECT_FALSE(a.caching());
  for (int step = 0; step < 3; ++step) {  // a steady loop calls the backend every time
    void* p = a.allocate(1000, s1);
    void* q = a.allocate(3 * MiB + 1, s1);
    EXPECT_EQ(st->live.at(cp(p)), 1000u) << "exactly the request, not rounded to 512 B or a 2 MiB segment";
    EXPECT_EQ(st->live.at(cp(q)), 3 * MiB + 1);
    a.free(p);
    a.free(q);
    EXPECT_EQ(st->allocs, 2 * (step + 1));
    EXPECT_EQ(st->frees, 2 * (step + 1)) << "freed at once, nothing cached";
  }
  EXPECT_EQ(st->waits.size(), 6u);
  EXPECT_EQ(st->waits.back(), std::vector<StreamHandle>{s1}) << "waits for the allocating stream before freeing";
  AllocatorStats s = a.stats();
  EXPECT_EQ(s.num_allocs, 6);
  EXPECT_EQ(s.num_frees, 6);
  EXPECT_EQ(s.num_backend_allocs, 6);
  EXPECT_EQ(s.num_backend_frees, 6);
  EXPECT_EQ(s.allocated_bytes, 0);
  EXPECT_EQ(s.reserved_bytes, 0);
  EXPECT_EQ(s.peak_allocated_bytes, static_cast<int64_t>(3 * MiB + 1 + 1000));

  // record_stream: the freeing waits for every stream that used the block.
  void* r = a.allocate(4096, s1);
  EXPECT_TRUE(a.record_stream(cp(r) + 100, s2));
  EXPECT_TRUE(a.record_stream(r, s3));
  EXPECT_EQ(a.stats().allocated_bytes, 4096);
  a.free(r);
  ASSERT_EQ(st->waits.size(), 7u);
  EXPECT_EQ(std::set<StreamHandle>(st->waits.back().begin(), st->waits.back().end()),
            (std::set<StreamHandle>{s1, s2, s3}));
  EXPECT_EQ(st->events_recorded, 0) << "nothing deferred through events";
  EXPECT_TRUE(st->live.empty());
  EXPECT_THROW(a.free(r), InvalidArgument);

  // The backend's default wait polls an event per stream: free returns only once s2 passed it.
  st->default_wait = true;
  void* u = a.allocate(512, s1);
  a.record_stream(u, s2);
  std::thread finisher([&] {
    // The default wait records on one stream at a time: each stream passes its event a little after it appears.
    for (StreamHandle h : {s1, s2}) {
      for (bool recorded = false; !recorded;) {
        {
          std::lock_guard<std::mutex> lock(st->mutex);
          recorded = st->queued[h] > 0;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(recorded ? 10 : 1));
      }
      st->finish(h);
    }
  });
  a.free(u);
  {
    std::lock_guard<std::mutex> lock(st->mutex);
    for (StreamHandle h : {s1, s2}) {
      EXPECT_EQ(st->queued[h], 1) << "one event per stream";
      EXPECT_EQ(st->finished[h], 1) << "freed before the stream passed the free";
    }
  }
  finisher.join();
  EXPECT_TRUE(st->live.empty());
  EXPECT_EQ(st->events_destroyed, st->events_created);

  // Out of memory: nothing cached to return, so no retry; the message says caching is off.
  st->capacity = 1 * MiB;
  try {
    a.allocate(2 * MiB, s1);
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    EXPECT_NE(std::string(e.what()).find("caching off"), std::string::npos) << e.what();
  }
  EXPECT_EQ(a.stats().num_alloc_retries, 0);
  EXPECT_EQ(a.stats().num_ooms, 1);
}

TEST(CachingAllocator, ThreadsAllocatingAtOnceGetDisjointMemory) {
  Fixture f;
  std::vector<std::thread> threads;
  std::atomic<int> corrupted{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<std::pair<unsigned char*, size_t>> mine;
      const auto tag = static_cast<unsigned char>(0x10 + t);
      for (int i = 0; i < 600; ++i) {
        if (mine.size() < 8 && rng() % 2) {
          const size_t n = 1 + rng() % (3 * MiB);
          auto* p = static_cast<unsigned char*>(f.a->allocate(n, stream(1 + t % 2)));
          std::memset(p, tag, n);
          mine.emplace_back(p, n);
        } else if (!mine.empty()) {
          auto [p, n] = mine.back();
          mine.pop_back();
          if (std::any_of(p, p + n, [&](unsigned char c) { return c != tag; })) ++corrupted;
          f.a->free(p);
        }
      }
      for (auto [p, n] : mine) f.a->free(p);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(corrupted.load(), 0) << "another thread wrote into a block this thread held";
  EXPECT_EQ(f.a->stats().allocated_bytes, 0);
}

}  // namespace
}  // namespace loom
