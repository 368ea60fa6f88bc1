// The CPU caching allocator (tensor/cpu/host_allocator.h) under real training steps: no malloc after the first step,
// blocks reused, many threads at once.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "autograd/functions.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "tensor/cpu/host_allocator.h"
#include "tensor/ops.h"

using namespace loom;

namespace {

nn::GPT2Config tiny() {
  nn::GPT2Config cfg;
  cfg.n_layer = 2;
  cfg.n_embd = 32;
  cfg.n_head = 2;
  cfg.n_positions = 16;
  cfg.vocab_size = 64;
  return cfg;
}

}  // namespace

TEST(HostAllocator, TrainingStepsAfterTheFirstCallNoMalloc) {
  ASSERT_TRUE(host_caching_enabled()) << "LOOM_CPU_CACHING_ALLOCATOR=0 is set in the test's environment";
  Generator gen(0);
  nn::GPT2 model(tiny(), gen);
  nn::AdamW opt(model.parameters(), nn::AdamWOptions{});
  Tensor idx = ops::randint(0, 64, {4, 16}, gen), tgt = ops::randint(0, 64, {4, 16}, gen);
  std::vector<AllocatorStats> after;
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    Tensor loss = model.loss(idx, tgt);
    loss.backward();
    opt.step();
    after.push_back(host_allocator_stats());
  }
  // Step 1 creates the optimizer state and the gradients; from step 2 on every tensor comes from the cache.
  EXPECT_GT(after[4].num_allocs, after[1].num_allocs) << "the steps allocate tensors";
  EXPECT_EQ(after[4].num_backend_allocs, after[1].num_backend_allocs)
      << "steps 3-5 called malloc " << after[4].num_backend_allocs - after[1].num_backend_allocs << " times";
  EXPECT_EQ(after[4].reserved_bytes, after[1].reserved_bytes);
  EXPECT_EQ(after[4].allocated_bytes, after[1].allocated_bytes) << "a step leaks tensors";
}

TEST(HostAllocator, AFreedBlockIsHandedOutAgain) {
  const void* first = nullptr;
  {
    Tensor a = empty({1000, 300}, DType::f32);
    first = a.data_ptr();
  }
  const AllocatorStats before = host_allocator_stats();
  Tensor b = empty({1000, 300}, DType::f32);
  EXPECT_EQ(b.data_ptr(), first);
  EXPECT_EQ(host_allocator_stats().num_backend_allocs, before.num_backend_allocs);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data_ptr()) % 64, 0u) << "CPU tensors are 64-byte aligned";
  // Zero-filled tensors from a reused block are still zero.
  { Tensor c = ops::full({4096}, 3.0, DType::f32); }
  Tensor z = ops::zeros({4096}, DType::f32);
  EXPECT_EQ(ops::sum(z, {0}, false).item<float>(), 0.0f);
}

TEST(HostAllocator, ManyThreadsAllocateAndFreeAtOnce) {
  const AllocatorStats before = host_allocator_stats();
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &wrong] {
      std::vector<Tensor> keep;
      for (int i = 0; i < 500; ++i) {
        const int64_t n = 1 + (i * 7919 + t * 104729) % 300000;  // small and large pool sizes
        Tensor x = ops::full({n}, static_cast<double>(t * 1000 + i % 1000), DType::f32);
        if (i % 3 == 0) keep.push_back(x);
        if (keep.size() > 8) keep.erase(keep.begin());
        const float* p = static_cast<const float*>(x.data_ptr());
        if (p[0] != static_cast<float>(t * 1000 + i % 1000) || p[n - 1] != p[0]) ++wrong;
      }
      for (const Tensor& k : keep) {
        const float* p = static_cast<const float*>(k.data_ptr());
        if (p[0] != p[k.numel() - 1]) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0) << "a block was handed to two tensors at once";
  EXPECT_EQ(host_allocator_stats().allocated_bytes, before.allocated_bytes) << "every tensor was freed";
}

TEST(HostAllocator, EmptyCacheReturnsFreeSegmentsAndAnImpossibleRequestNamesTheDevice) {
  { Tensor big = empty({64 << 20}, DType::u8); }
  EXPECT_GT(host_allocator_stats().reserved_bytes, host_allocator_stats().allocated_bytes);
  host_empty_cache();
  EXPECT_EQ(host_allocator_stats().reserved_bytes, host_allocator_stats().allocated_bytes)
      << "free segments stay cached after host_empty_cache()";
  try {
    Tensor huge = empty({int64_t{1} << 50}, DType::u8);  // 1 PiB
    FAIL() << "a 1 PiB tensor was allocated";
  } catch (const OutOfMemory& e) {
    EXPECT_NE(std::string(e.what()).find("out of memory on cpu"), std::string::npos) << e.what();
  }
}
