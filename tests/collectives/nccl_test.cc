// The nccl backend with world size 1 (labelled gpu; skipped without NCCL or a device).
#include <gtest/gtest.h>

#include "collectives/process_group.h"
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
