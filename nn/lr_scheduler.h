// Learning-rate schedules that set every parameter group's lr from the step
// count: constant, and linear warmup followed by cosine decay (llm.c/nanoGPT).
#pragma once

#include <cstdint>

#include "nn/optim.h"

namespace loom::nn {

/// Saved schedule position.
struct SchedulerState {
  int64_t step = 0;
};

class LRScheduler {
 public:
  /// The optimizer must outlive the scheduler. Subclasses call apply() at the
  /// end of their constructor so the lr for step 0 is set.
  explicit LRScheduler(Optimizer& opt) : opt_(&opt) {}
  virtual ~LRScheduler() = default;
  /// The learning rate at a step (0-based).
  virtual double lr_at(int64_t step) const = 0;
  /// Advances one step (call after optimizer.step()) and sets the new lr on every group.
  void step();
  int64_t current_step() const { return step_; }
  /// The learning rate the optimizer now holds (lr_at(current_step())).
  double last_lr() const { return lr_at(step_); }
  SchedulerState state_dict() const { return {step_}; }
  /// Restores the position and sets the optimizer's lr for it. Throws on a negative step.
  void load_state_dict(const SchedulerState& s);

 protected:
  void apply();

 private:
  Optimizer* opt_;
  int64_t step_ = 0;
};

class ConstantLR : public LRScheduler {
 public:
  ConstantLR(Optimizer& opt, double lr);
  double lr_at(int64_t step) const override;

 private:
  double lr_;
};

/// step < warmup: max_lr * (step + 1) / warmup_steps; then cosine from max_lr
/// to min_lr over [warmup_steps, max_steps]: min_lr + 0.5 (1 + cos(pi r))
/// (max_lr - min_lr), r = (step - warmup) / (max_steps - warmup); min_lr after max_steps.
class WarmupCosineLR : public LRScheduler {
 public:
  /// Throws when warmup_steps > max_steps, max_steps <= 0 or min_lr > max_lr.
  WarmupCosineLR(Optimizer& opt, double max_lr, double min_lr, int64_t warmup_steps, int64_t max_steps);
  double lr_at(int64_t step) const override;

 private:
  double max_lr_, min_lr_;
  int64_t warmup_, max_steps_;
};

}  // namespace loom::nn
