// Convolutional-network layers, as torch.nn's: Conv2d, MaxPool2d, AvgPool2d,
// AdaptiveAvgPool2d, BatchNorm2d, Flatten, ReLU and Sequential (children "0", "1", …).
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/conv.h"
#include "nn/module.h"
#include "tensor/random.h"

namespace loom::nn {

struct Conv2dOptions {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
  bool bias = true;
  DType dtype = DType::f32;
};

/// torch.nn.Conv2d: weight (out, in/groups, KH, KW) and bias (out), both initialised as PyTorch does
/// (kaiming_uniform with a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in/groups*KH*KW).
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel_size, Conv2dOptions opts = {},
         Generator& gen = default_generator());
  /// A square kernel.
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Conv2dOptions opts = {},
         Generator& gen = default_generator())
      : Conv2d(in_channels, out_channels, {kernel_size, kernel_size}, opts, gen) {}
  /// x (N, in, H, W) -> (N, out, OH, OW).
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  /// The op's stride/padding/dilation/groups.
  loom::Conv2dOptions conv_options() const;

  int64_t in_channels, out_channels;
  std::array<int64_t, 2> kernel_size;
  Conv2dOptions options;
  Tensor weight;  // (out, in/groups, KH, KW)
  Tensor bias;    // (out) or undefined
};

/// torch.nn.MaxPool2d (stride defaults to the kernel size).
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(loom::Pool2dOptions opts);
  /// kernel_size x kernel_size windows, stride (0: kernel_size), padding.
  explicit MaxPool2d(int64_t kernel_size, int64_t stride = 0, int64_t padding = 0);
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  loom::Pool2dOptions options;
};

/// torch.nn.AvgPool2d (stride defaults to the kernel size; count_include_pad true).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(loom::Pool2dOptions opts);
  explicit AvgPool2d(int64_t kernel_size, int64_t stride = 0, int64_t padding = 0);
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  loom::Pool2dOptions options;
};

/// torch.nn.AdaptiveAvgPool2d.
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(std::array<int64_t, 2> output_size);
  explicit AdaptiveAvgPool2d(int64_t output_size) : AdaptiveAvgPool2d({output_size, output_size}) {}
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  std::array<int64_t, 2> output_size;
};

class BatchNorm2d;

/// How a BatchNorm2d computes its training forward over several ranks: parallel/sync_batch_norm.h implements it
/// (statistics all-reduced over a process group). nn/ itself never talks to other ranks.
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  /// The training-mode forward of bn on x (statistics over every rank's batch; running stats updated).
  virtual Tensor forward(BatchNorm2d& bn, const Tensor& x) = 0;
  /// What the module's repr shows, e.g. "sync=SyncBatchNorm(world_size=2)".
  virtual std::string describe() const = 0;
};

/// torch.nn.BatchNorm2d: weight ones, bias zeros; buffers running_mean (zeros), running_var (ones) and
/// num_batches_tracked (i64 scalar), named as PyTorch's. Training normalises with the batch's statistics and
/// updates the running ones; eval uses the running ones. With `sync` set (parallel::convert_sync_batchnorm) the
/// training forward takes its statistics over all ranks, as torch.nn.SyncBatchNorm.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, double momentum = 0.1, bool affine = true,
                       bool track_running_stats = true, DType dtype = DType::f32);
  /// x (N, C, H, W) -> same shape.
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  /// Checks x is (N, C, ...) with C == num_features.
  void check_input(const Tensor& x) const;

  int64_t num_features;
  double eps, momentum;
  bool affine, track_running_stats;
  Tensor weight, bias;                                    // (C) or undefined when !affine
  Tensor running_mean, running_var, num_batches_tracked;  // undefined when !track_running_stats
  std::shared_ptr<BatchNormSync> sync;                    // null: statistics of this rank's batch only
};

/// torch.nn.Flatten: flattens dims [start_dim, end_dim] (default 1..-1).
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1);
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;
  int64_t start_dim, end_dim;
};

/// torch.nn.ReLU.
class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
};

/// torch.nn.Sequential: runs its children "0", "1", … in order, each on the previous one's output. Any module
/// with an operator()(const Tensor&) may be added.
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  template <typename... Ms>
  explicit Sequential(std::shared_ptr<Ms>... modules) : Module("Sequential") {
    (push_back(std::move(modules)), ...);
  }
  /// Appends m as child str(size()).
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    LOOM_CHECK(m != nullptr, "Sequential.push_back: module ", items_.size(), " is null");
    register_module(std::to_string(items_.size()), m);
    items_.push_back(m);
    calls_.push_back([raw = m.get()](const Tensor& x) { return (*raw)(x); });
    return m;
  }
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
  size_t size() const { return items_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_.at(i); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<Module>> items_;
  std::vector<std::function<Tensor(const Tensor&)>> calls_;
};

}  // namespace loom::nn
