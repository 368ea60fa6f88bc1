// The nccl backend with world size 1 (labelled gpu; skipped without NCCL or a device).
#include <gtest/gtest.h>

#include "collectives/process_group.h"
#include "tensor/cuda_runtime.h"
#include "tensor/ops.h"

using namespace loom;
using namespace loom::collectives;
using loom::ops::to;

TEST(Nccl, WorldSizeOneAllreduceAndAllGatherOnDevice) {
  if (!has_backend("nccl")) GTEST_SKIP() << "built without CUDA/NCCL";
  std::unique_ptr<ProcessGroup> pg;
  try {
    pg = std::make_unique<ProcessGroup>(std::make_shared<HashStore>(), 0, 1, "nccl");
  } catch (const CommError& e) {
    GTEST_SKIP() << "no usable CUDA device: " << e.what();
  }
  Device cuda(DeviceType::kCUDA, 0);
  Tensor t = to(from_vector(std::vector<float>{1, 2, 3}, {3}), cuda);
  pg->allreduce(t, {ReduceOp::kAvg})->wait();
  EXPECT_EQ(to(t, kCPU).to_vector<float>(), (std::vector<float>{1, 2, 3}));
  Tensor out = to(from_vector(std::vector<float>{0, 0, 0}, {3}), cuda);
  pg->all_gather(out, t)->wait();
  EXPECT_EQ(to(out, kCPU).to_vector<float>(), (std::vector<float>{1, 2, 3}));
  EXPECT_THROW(pg->allreduce(from_vector(std::vector<float>{1}, {1}))->wait(), InvalidArgument);
}

#if LOOM_WITH_CUDA
namespace {
std::unique_ptr<ProcessGroup> nccl_group_or_null(std::string* why) {
  if (!has_backend("nccl")) {
    *why = "built without CUDA/NCCL";
    return nullptr;
  }
  try {
    return std::make_unique<ProcessGroup>(std::make_shared<HashStore>(), 0, 1, "nccl");
  } catch (const CommError& e) {
    *why = std::string("no usable CUDA device: ") + e.what();
    return nullptr;
  }
}
}  // namespace

// The backend's stream comes from a pool of never-destroyed streams: a tensor
// used by a collective and freed after its group is gone records its event on a
// living stream (it used to be the destroyed group stream: the process ended).
TEST(Nccl, TensorFreedAfterItsGroupIsGone) {
  Device cuda(DeviceType::kCUDA, 0);
  for (int round = 0; round < 3; ++round) {
    std::string why;
    std::unique_ptr<ProcessGroup> pg = nccl_group_or_null(&why);
    if (!pg) GTEST_SKIP() << why;
    Tensor t = to(from_vector(std::vector<float>{1, 2, 3}, {3}), cuda);
    pg->allreduce(t)->wait();
    pg.reset();  // the group and its communicator go first
    EXPECT_EQ(to(t, kCPU).to_vector<float>(), (std::vector<float>{1, 2, 3}));
    t = Tensor();  // the free records an event on the group's (pooled) stream
  }
  loom::cuda::synchronize(0);
}

// A collective enqueued under a StreamGuard orders after the work the caller
// queued on that stream before the call (not after the worker thread's current
// stream): all_gather must see the fill that a long matmul delays.
TEST(Nccl, CollectiveOrdersAfterTheCallersGuardedStream) {
  std::string why;
  std::unique_ptr<ProcessGroup> pg = nccl_group_or_null(&why);
  if (!pg) GTEST_SKIP() << why;
  Device cuda(DeviceType::kCUDA, 0);
  Tensor in = ops::zeros({1 << 20}, DType::f32, cuda), out = ops::zeros({1 << 20}, DType::f32, cuda);
  Tensor a = ops::full({2048, 2048}, 0.001, DType::f32, cuda);
  loom::cuda::synchronize(0);
  loom::cuda::Stream side = loom::cuda::Stream::create(0);
  std::shared_ptr<Work> w;
  {
    loom::cuda::StreamGuard guard(side);
    Tensor acc = a;
    for (int i = 0; i < 8; ++i) acc = ops::matmul(acc, a);  // keeps the side stream busy
    ops::fill_(in, 7.0);
    w = pg->all_gather(out, in);
  }
  w->wait();
  const std::vector<float> got = to(out, kCPU).to_vector<float>();
  EXPECT_EQ(got.front(), 7.f);
  EXPECT_EQ(got.back(), 7.f);
  side.synchronize();
}
#endif  // LOOM_WITH_CUDA
