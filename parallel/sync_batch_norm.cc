#include "parallel/sync_batch_norm.h"

#include <vector>

#include "autograd/functions.h"

namespace loom::parallel {

SyncBatchNormStats::SyncBatchNormStats(std::shared_ptr<collectives::ProcessGroup> group) : group_(std::move(group)) {
  LOOM_CHECK(group_ != nullptr, "SyncBatchNorm: the process group is null");
}

std::string SyncBatchNormStats::describe() const {
  return "sync=" + group_->name() + "(world_size=" + std::to_string(group_->size()) + ")";
}

Tensor SyncBatchNormStats::forward(nn::BatchNorm2d& bn, const Tensor& x) {
  bn.check_input(x);
  // [sum..., sumsq..., count] of the global batch.
  Tensor stats = ops::batch_norm_stats(x);
  group_->allreduce(stats)->wait();
  const ops::BatchNormMoments mo = ops::batch_norm_moments(stats, bn.eps, x.dtype());
  LOOM_CHECK(mo.count > 1, "SyncBatchNorm: expected more than 1 value per channel over all ranks, got input ",
             shape_str(x.sizes()), " on rank ", group_->rank());
  if (bn.track_running_stats) {
    NoGradGuard g;
    ops::batch_norm_update_running_(bn.running_mean, mo.mean, bn.momentum);
    ops::batch_norm_update_running_(bn.running_var, mo.var_unbiased, bn.momentum);
  }
  Tensor y = ops::batch_norm_apply(x, mo.mean, mo.invstd, bn.weight, bn.bias);
  if (autograd::any_requires_grad({x, bn.weight, bn.bias})) {
    autograd::SavedTensor X(x), W(bn.weight), M(mo.mean), IS(mo.invstd);
    const bool need_x = x.requires_grad(), has_w = bn.weight.defined(), has_b = bn.bias.defined();
    const int64_t count = mo.count, C = x.size(1);
    auto group = group_;
    autograd::record("SyncBatchNormBackward", {x, bn.weight, bn.bias}, {y}, [=](const std::vector<Tensor>& g) {
      const Tensor dy = ops::contiguous(g[0]);
      const Tensor xs = X.unpack("SyncBatchNorm"), mean = M.unpack("SyncBatchNorm"),
                   invstd = IS.unpack("SyncBatchNorm");
      const Tensor local = ops::batch_norm_backward_reduce(dy, xs, mean);  // [sum dy..., sum dy*(x-mean)...]
      std::vector<Tensor> out(3);
      if (need_x) {
        Tensor global = ops::clone(local);
        group->allreduce(global)->wait();
        out[0] = ops::batch_norm_backward_elemt(dy, xs, mean, invstd, W.unpack("SyncBatchNorm"), global, count);
      }
      const std::vector<double> lv = local.to_vector<double>(), is = ops::to(invstd, DType::f64).to_vector<double>();
      if (has_w) {
        std::vector<double> dw(static_cast<size_t>(C));
        for (size_t c = 0; c < dw.size(); ++c) dw[c] = lv[static_cast<size_t>(C) + c] * is[c];
        out[1] = ops::to(from_vector(dw, {C}), xs.dtype());
      }
      if (has_b) out[2] = ops::to(from_vector(std::vector<double>(lv.begin(), lv.begin() + C), {C}), xs.dtype());
      return out;
    });
  }
  return y;
}

std::shared_ptr<nn::BatchNorm2d> make_sync_batch_norm(int64_t num_features,
                                                      std::shared_ptr<collectives::ProcessGroup> group, double eps,
                                                      double momentum, bool affine, bool track_running_stats) {
  auto bn = std::make_shared<nn::BatchNorm2d>(num_features, eps, momentum, affine, track_running_stats);
  bn->sync = std::make_shared<SyncBatchNormStats>(std::move(group));
  return bn;
}

int convert_sync_batchnorm(nn::Module& root, std::shared_ptr<collectives::ProcessGroup> group) {
  auto sync = std::make_shared<SyncBatchNormStats>(std::move(group));
  int n = 0;
  for (auto& [name, m] : root.named_modules()) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) {
      bn->sync = sync;
      ++n;
    }
  }
  return n;
}

}  // namespace loom::parallel
