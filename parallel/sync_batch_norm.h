// SyncBatchNorm: BatchNorm2d whose training statistics are those of the global
// batch, all-reduced over a process group (torch.nn.SyncBatchNorm). The
// backward all-reduces the two per-channel sums the input gradient needs; the
// weight and bias gradients stay local (DDP reduces them like any other).
#pragma once

#include <memory>

#include "collectives/process_group.h"
#include "nn/conv.h"

namespace loom::parallel {

/// The nn::BatchNormSync that all-reduces statistics over `group`. Every rank of the group must run the same
/// BatchNorm2d forwards (and backwards) in the same order, as with DDP.
class SyncBatchNormStats : public nn::BatchNormSync {
 public:
  explicit SyncBatchNormStats(std::shared_ptr<collectives::ProcessGroup> group);
  Tensor forward(nn::BatchNorm2d& bn, const Tensor& x) override;
  std::string describe() const override;

 private:
  std::shared_ptr<collectives::ProcessGroup> group_;
};

/// A BatchNorm2d synchronised over group from the start (torch.nn.SyncBatchNorm(num_features, ...)).
std::shared_ptr<nn::BatchNorm2d> make_sync_batch_norm(int64_t num_features,
                                                      std::shared_ptr<collectives::ProcessGroup> group,
                                                      double eps = 1e-5, double momentum = 0.1, bool affine = true,
                                                      bool track_running_stats = true);

/// torch.nn.SyncBatchNorm.convert_sync_batchnorm: makes every BatchNorm2d below root (root included) take its
/// statistics over group; returns how many it converted. Parameters, buffers and names are unchanged.
int convert_sync_batchnorm(nn::Module& root, std::shared_ptr<collectives::ProcessGroup> group);

}  // namespace loom::parallel
