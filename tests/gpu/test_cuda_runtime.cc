// The CUDA device runtime on a real device: copies through the allocator hooks,
// the caching allocator in front of cudaMalloc, current streams, StreamGuard,
// event ordering, record_stream and the out-of-memory error. Streams are held
// back deterministically by a host function that waits for the test's signal.
// Tests of the caching itself skip when LOOM_CUDA_NO_CACHING turned it off for
// the process (scripts/gpu_checks.sh's memcheck step); the switch's own test
// runs in a child process that sets the variable before its first allocation.
#include <gtest/gtest.h>

#include "tensor/device.h"

#if LOOM_WITH_CUDA

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tensor/cuda_runtime.h"
#include "tensor/error.h"
#include "tensor/ops.h"

namespace loom {
namespace {

namespace O = ops;
const Device kCuda0(DeviceType::kCUDA, 0);

#define SKIP_WITHOUT_GPU() \
  if (!cuda_is_available()) GTEST_SKIP() << "no CUDA device (cuda_is_available() is false): this test needs a GPU"

#define SKIP_WITHOUT_CACHING()            \
  if (!cuda::caching_allocator_enabled()) \
  GTEST_SKIP() << "LOOM_CUDA_NO_CACHING is set: the caching allocator is off in this process"

/// Holds a stream at a host function until release() (or destruction).
class Gate {
 public:
  explicit Gate(const cuda::Stream& s) {
    auto wait = [](void* flag) {
      while (!static_cast<std::atomic<bool>*>(flag)->load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
    };
    EXPECT_EQ(cudaLaunchHostFunc(static_cast<cudaStream_t>(s.handle()), wait, &open_), cudaSuccess);
  }
  ~Gate() { release(); }
  void release() { open_.store(true); }

 private:
  std::atomic<bool> open_{false};
};

TEST(CudaRuntime, HostDeviceHostRoundTripKeepsEveryValue) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3} << 20}) {
    Tensor h = O::arange(0.0, static_cast<double>(n), 1.0, DType::f32);
    Tensor d = O::to(h, kCuda0);
    EXPECT_EQ(d.device(), kCuda0);
    EXPECT_NE(d.data_ptr(), h.data_ptr());
    Tensor back = O::to(d, kCPU);
    ASSERT_EQ(back.numel(), n);
    EXPECT_EQ(std::memcmp(back.data_ptr(), h.data_ptr(), static_cast<size_t>(n) * 4), 0) << n << " elements";
  }
  // A copy on a side stream (StreamGuard) arrives too.
  cuda::Stream side = cuda::Stream::create(0);
  cuda::StreamGuard guard(side);
  Tensor h = O::arange(0.0, 4096.0, 1.0, DType::f64);
  Tensor back = O::to(O::to(h, kCuda0), kCPU);
  EXPECT_EQ(back.to_vector<double>(), h.to_vector<double>());
}

TEST(CudaRuntime, CopyBetweenTwoDevices) {
  SKIP_WITHOUT_GPU();
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  Tensor h = O::arange(0.0, 100000.0, 1.0, DType::f32);
  Tensor d1 = O::to(O::to(h, kCuda0), Device(DeviceType::kCUDA, 1));
  EXPECT_EQ(d1.device().index, 1);
  EXPECT_EQ(O::to(d1, kCPU).to_vector<float>(), h.to_vector<float>());
}

TEST(CudaRuntime, SteadyStateAllocFreeLoopCallsNoCudaMalloc) {
  SKIP_WITHOUT_GPU();
  SKIP_WITHOUT_CACHING();
  auto step = [] {
    std::vector<Tensor> live;
    for (int layer = 0; layer < 4; ++layer) {
      live.push_back(loom::empty({1024, 1536}, DType::f32, kCuda0));  // 6 MiB activations
      Tensor tmp = loom::empty({3, 1024, 1024}, DType::f32, kCuda0);  // 12 MiB, freed at once
      live.push_back(loom::empty({1000}, DType::bf16, kCuda0));       // small pool
    }
    while (!live.empty()) live.pop_back();
  };
  step();
  const cuda::AllocatorStats first = cuda::allocator_stats(0);
  EXPECT_GT(first.num_backend_allocs, 0);
  for (int i = 0; i < 20; ++i) step();
  const cuda::AllocatorStats after = cuda::allocator_stats(0);
  EXPECT_EQ(after.num_backend_allocs, first.num_backend_allocs) << "a steady-state step called cudaMalloc";
  EXPECT_EQ(after.reserved_bytes, first.reserved_bytes);
  EXPECT_EQ(after.allocated_bytes, first.allocated_bytes);
  EXPECT_EQ(after.num_allocs, first.num_allocs + 20 * 12);
  cuda::reset_peak_allocator_stats(0);
  EXPECT_EQ(cuda::allocator_stats(0).peak_allocated_bytes, after.allocated_bytes);
  cuda::empty_cache(0);
  EXPECT_LT(cuda::allocator_stats(0).reserved_bytes, after.reserved_bytes);
}

TEST(CudaRuntime, CurrentStreamIsANonLegacyDefaultUntilAGuardSetsOne) {
  SKIP_WITHOUT_GPU();
  cuda::Stream def = cuda::current_stream(0);
  EXPECT_NE(def.handle(), nullptr) << "not the legacy default stream";
  EXPECT_FALSE(def.owned());
  EXPECT_TRUE(cuda::current_stream(0) == def);
  unsigned flags = 0;
  ASSERT_EQ(cudaStreamGetFlags(static_cast<cudaStream_t>(def.handle()), &flags), cudaSuccess);
  EXPECT_EQ(flags & cudaStreamNonBlocking, static_cast<unsigned>(cudaStreamNonBlocking));
  cuda::Stream a = cuda::Stream::create(0), b = cuda::Stream::create(0, -1);
  EXPECT_TRUE(a.owned());
  {
    cuda::StreamGuard ga(a);
    EXPECT_TRUE(cuda::current_stream(0) == a);
    {
      cuda::StreamGuard gb(b);
      EXPECT_TRUE(cuda::current_stream(0) == b);
      // Another thread has its own current stream: the default.
      void* other = nullptr;
      std::thread([&] { other = cuda::current_stream(0).handle(); }).join();
      EXPECT_EQ(other, def.handle());
    }
    EXPECT_TRUE(cuda::current_stream(0) == a);
  }
  EXPECT_TRUE(cuda::current_stream(0) == def);
}

TEST(CudaRuntime, EventMakesOneStreamWaitForAnother) {
  SKIP_WITHOUT_GPU();
  cuda::Stream s1 = cuda::Stream::create(0), s2 = cuda::Stream::create(0);
  Gate gate(s1);
  cuda::Event start(true), done(true);
  start.record(s1);
  done.record(s1);
  done.block(s2);
  std::atomic<bool> ran{false};
  ASSERT_EQ(cudaLaunchHostFunc(
                static_cast<cudaStream_t>(s2.handle()),
                [](void* f) { static_cast<std::atomic<bool>*>(f)->store(true); }, &ran),
            cudaSuccess);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(ran.load()) << "s2 ran past an event s1 had not reached";
  EXPECT_FALSE(done.query());
  EXPECT_FALSE(s2.query());
  gate.release();
  s2.synchronize();
  EXPECT_TRUE(ran.load());
  EXPECT_TRUE(done.query());
  EXPECT_TRUE(s1.query());
  EXPECT_GE(start.elapsed_ms(done), 0.0f);
  cuda::Event untimed;
  untimed.record(s1);
  untimed.synchronize();
  EXPECT_THROW(start.elapsed_ms(untimed), InvalidArgument);
}

TEST(CudaRuntime, RecordStreamKeepsMemoryFromReuseUntilTheStreamPassed) {
  SKIP_WITHOUT_GPU();
  SKIP_WITHOUT_CACHING();  // uncached, the free would wait for the held stream: a deadlock by design of the test
  cuda::empty_cache(0);    // no cached block from earlier tests competes in the best fit below
  cuda::Stream side = cuda::Stream::create(0);
  Gate gate(side);
  void* old = nullptr;
  {
    Tensor t = loom::empty({1 << 20}, DType::f32, kCuda0);  // 4 MiB
    old = t.data_ptr();
    cuda::record_stream(t, side);
  }  // freed while side is held back
  Tensor u = loom::empty({1 << 20}, DType::f32, kCuda0);
  EXPECT_NE(u.data_ptr(), old) << "memory handed out while another stream may still use it";
  gate.release();
  side.synchronize();
  Tensor v = loom::empty({1 << 20}, DType::f32, kCuda0);
  EXPECT_EQ(v.data_ptr(), old) << "the block is free again once the stream passed";
  EXPECT_THROW(cuda::record_stream(O::zeros({2}), side), InvalidArgument);
}

TEST(CudaRuntime, AbsurdRequestThrowsOutOfMemoryNamingSizeAndUsage) {
  SKIP_WITHOUT_GPU();
  const int64_t before = cuda::allocator_stats(0).num_ooms;
  try {
    loom::empty({int64_t{1} << 45}, DType::f32, kCuda0);  // 128 TiB
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    const std::string m = e.what();
    for (const char* want : {"out of memory on cuda:0", "128.00 TiB", "allocated", "reserved", "free of", "batch size"})
      EXPECT_NE(m.find(want), std::string::npos) << "missing '" << want << "' in: " << m;
  }
  EXPECT_EQ(cuda::allocator_stats(0).num_ooms, before + 1);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the failed cudaMalloc left an error behind";
  Tensor ok = O::to(O::ones({16}), kCuda0);  // still usable
  EXPECT_EQ(O::to(ok, kCPU).to_vector<float>(), std::vector<float>(16, 1.0f));
}

/// With caching off, a steady loop calls cudaMalloc (and cudaFree) for every
/// tensor, of exactly its bytes. "" when it does, else what went wrong.
std::string uncached_loop_failures() {
  if (cuda::caching_allocator_enabled()) return "LOOM_CUDA_NO_CACHING was set but the caching allocator is on";
  std::string failures;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) failures += what + "; ";
  };
  const cuda::AllocatorStats before = cuda::allocator_stats(0);
  for (int i = 0; i < 5; ++i) {
    Tensor a = loom::empty({1000}, DType::f32, kCuda0);        // 4000 B: not rounded to 512 B nor cut from 2 MiB
    Tensor b = loom::empty({1024, 1536}, DType::f32, kCuda0);  // 6 MiB
    Tensor c = O::to(O::full({7}, 2.5), kCuda0);               // 28 B, written and read back
    expect(O::to(c, kCPU).to_vector<float>() == std::vector<float>(7, 2.5f), "the 7 floats did not round-trip");
    const cuda::AllocatorStats live = cuda::allocator_stats(0);
    expect(live.num_backend_allocs == before.num_backend_allocs + 3 * (i + 1),
           "step " + std::to_string(i) + ": " + std::to_string(live.num_backend_allocs - before.num_backend_allocs) +
               " cudaMalloc calls in all, want " + std::to_string(3 * (i + 1)));
    expect(live.reserved_bytes == before.reserved_bytes + 4000 + 6 * 1024 * 1024 + 28,
           "reserved bytes are not exactly the three tensors' bytes");
  }
  const cuda::AllocatorStats after = cuda::allocator_stats(0);
  expect(after.num_backend_frees == before.num_backend_frees + 15, "not every tensor was cudaFree'd at once");
  expect(after.num_allocs == before.num_allocs + 15 && after.num_frees == before.num_frees + 15,
         "allocs and frees are not counted");
  expect(after.reserved_bytes == before.reserved_bytes && after.allocated_bytes == before.allocated_bytes,
         "memory left reserved or allocated after the loop");
  return failures;
}

TEST(CudaRuntime, NoCachingSwitchMakesEverySteadyLoopAllocationACudaMalloc) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("LOOM_CUDA_NO_CACHING");
  if (env && env[0] != '\0' && std::strcmp(env, "0") != 0) {  // the whole process runs uncached
    EXPECT_EQ(uncached_loop_failures(), "");
    return;
  }
  // The switch is read once per process, and this one has allocated already: a
  // child process (gtest re-executes this binary for this test alone) sets it
  // before its first allocation.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("LOOM_CUDA_NO_CACHING", "1", 1);
        const std::string failures = uncached_loop_failures();
        std::fprintf(stderr, "uncached loop: %s\n", failures.empty() ? "ok" : failures.c_str());
        std::exit(failures.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "uncached loop: ok");
}

TEST(CudaRuntime, BadDeviceIndexIsAnInvalidArgument) {
  SKIP_WITHOUT_GPU();
  EXPECT_THROW(cuda::current_stream(cuda_device_count()), InvalidArgument);
  EXPECT_THROW(cuda::Stream::create(-1), InvalidArgument);
}

}  // namespace
}  // namespace loom

#else

TEST(CudaRuntime, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA (LOOM_WITH_CUDA is off)"; }

#endif
