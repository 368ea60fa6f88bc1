// Optimizers with parameter groups, as torch.optim: AdamW (decoupled weight
// decay) and SGD (momentum, dampening, Nesterov). Updates of contiguous CPU
// f32/f64 parameters run as one fused OpenMP loop per tensor; AdamW on contiguous
// CUDA f32 parameters as the CUDA backend's multi-tensor fused kernel; the rest
// through tensor ops.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "autograd/autograd.h"
#include "nn/module.h"
#include "tensor/ops.h"
#include "tensor/tensor.h"

namespace loom::nn {

/// Parameters sharing a learning rate and weight decay.
struct ParamGroup {
  std::vector<Tensor> params;
  double lr = 1e-3;
  double weight_decay = 0.0;
};

/// Per-parameter optimizer state: its own step count and named state tensors
/// ("exp_avg", "exp_avg_sq" for AdamW; "momentum_buffer" for SGD).
struct ParamState {
  int64_t step = 0;
  std::map<std::string, Tensor> tensors;
};

/// An optimizer's state as PyTorch lays it out: per-parameter state keyed by the
/// parameter's index (counting through the groups in order), and per group its
/// hyper-parameters and parameter indices.
struct OptimizerState {
  struct Group {
    double lr = 0.0;
    double weight_decay = 0.0;
    std::vector<int64_t> params;
  };
  std::map<int64_t, ParamState> state;
  std::vector<Group> param_groups;
  /// Optimizer-wide hyper-parameters (betas, eps, momentum, …) by name.
  std::map<std::string, double> hyper;
};

class Optimizer {
 public:
  /// Throws InvalidArgument when a group is empty, a parameter is not floating
  /// point, or a parameter appears twice.
  explicit Optimizer(std::vector<ParamGroup> groups);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// Applies one update to every parameter that has a gradient (others are skipped).
  virtual void step() = 0;
  /// Applies one update to `params` only (those without a gradient are skipped), leaving the others untouched: each
  /// parameter's update needs only its own gradient and state, so stepping the parameters in several parts gives the
  /// same result as one step() (what overlapping the optimizer with the last gradient collectives needs). Throws
  /// InvalidArgument naming the tensor when one is not a parameter of this optimizer.
  void step_params(const std::vector<Tensor>& params);
  /// Clears the gradients of every parameter (undefined, or zero when !set_to_none).
  void zero_grad(bool set_to_none = true);

  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  /// Sets the learning rate of every group.
  void set_lr(double lr);

  /// A deep copy of the state (tensors cloned).
  OptimizerState state_dict() const;
  /// Loads a state saved from an optimizer over parameters of the same shapes:
  /// the group structure must match, and every state tensor must have its
  /// parameter's shape; an error names the parameter (index and name) and both shapes.
  void load_state_dict(const OptimizerState& state);
  /// State of parameter index i (created empty on first use).
  ParamState& state(int64_t index) { return state_[index]; }
  int64_t num_params() const { return static_cast<int64_t>(flat_.size()); }

 protected:
  virtual std::map<std::string, double> hyper_parameters() const = 0;
  virtual void set_hyper_parameters(const std::map<std::string, double>& h) = 0;
  virtual const char* name() const = 0;
  /// "index 3 (transformer.h.0.ln_1.weight)".
  std::string describe_param(int64_t index) const;
  /// The loop every step() shares: under no-grad, for each parameter that has a
  /// gradient, checks the gradient's shape (an error names the parameter),
  /// converts it to the parameter's dtype and makes it contiguous, calls
  /// fn(group, param, grad, state), then bumps the parameter's version.
  template <typename F>
  void for_each_param_with_grad(F&& fn);

  std::vector<ParamGroup> groups_;
  std::vector<Tensor> flat_;  // parameters in index order
  std::map<int64_t, ParamState> state_;
  /// While step_params runs: the parameters to update (for_each_param_with_grad skips the others).
  const std::unordered_set<const TensorImpl*>* only_ = nullptr;
};

template <typename F>
void Optimizer::for_each_param_with_grad(F&& fn) {
  autograd::NoGradGuard no_grad;
  int64_t idx = 0;
  for (auto& group : groups_) {
    for (auto& p : group.params) {
      const int64_t i = idx++;
      if (only_ && !only_->count(p.impl_ptr().get())) continue;
      Tensor g = p.grad();
      if (!g.defined()) continue;
      LOOM_CHECK(g.sizes() == p.sizes(), name(), ".step: gradient of parameter ", describe_param(i), " has shape ",
                 shape_str(g.sizes()), ", the parameter ", shape_str(p.sizes()));
      if (g.dtype() != p.dtype()) g = ops::to(g, p.dtype());
      fn(group, p, ops::contiguous(g), state_[i]);
      p.bump_version();
    }
  }
}

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // used for groups built from a plain parameter list
};

/// torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
/// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
class AdamW : public Optimizer {
 public:
  /// One group with opts.lr and opts.weight_decay.
  AdamW(std::vector<Tensor> params, AdamWOptions opts = {});
  /// Explicit groups (their lr and weight_decay); betas and eps from opts.
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opts);
  void step() override;
  const AdamWOptions& options() const { return opts_; }

 protected:
  std::map<std::string, double> hyper_parameters() const override;
  void set_hyper_parameters(const std::map<std::string, double>& h) override;
  const char* name() const override { return "AdamW"; }

 private:
  AdamWOptions opts_;
};

struct SGDOptions {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;
};

/// torch.optim.SGD: d = g + wd p; buf = momentum buf + (1-dampening) d (buf = d
/// at the first step); d = nesterov ? d + momentum buf : buf; p -= lr d.
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions opts = {});
  SGD(std::vector<ParamGroup> groups, SGDOptions opts);
  void step() override;
  const SGDOptions& options() const { return opts_; }

 protected:
  std::map<std::string, double> hyper_parameters() const override;
  void set_hyper_parameters(const std::map<std::string, double>& h) override;
  const char* name() const override { return "SGD"; }

 private:
  SGDOptions opts_;
};

/// The two AdamW groups of the nanoGPT/llm.c convention: weight decay on every
/// parameter with 2 or more dims (matmul weights and embeddings), none on 1-D
/// parameters (biases and norm weights). Empty groups are dropped.
std::vector<ParamGroup> weight_decay_groups(const NamedTensors& named_params, double lr, double weight_decay);

}  // namespace loom::nn
