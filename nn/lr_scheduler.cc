#include "nn/lr_scheduler.h"

#include <cmath>
#include <numbers>

namespace loom::nn {

void LRScheduler::step() {
  ++step_;
  apply();
}

void LRScheduler::load_state_dict(const SchedulerState& s) {
  LOOM_CHECK(s.step >= 0, "LRScheduler.load_state_dict: negative step ", s.step);
  step_ = s.step;
  apply();
}

void LRScheduler::apply() { opt_->set_lr(lr_at(step_)); }

ConstantLR::ConstantLR(Optimizer& opt, double lr) : LRScheduler(opt), lr_(lr) {
  LOOM_CHECK(lr >= 0.0, "ConstantLR: negative learning rate ", lr);
  apply();
}

double ConstantLR::lr_at(int64_t) const { return lr_; }

WarmupCosineLR::WarmupCosineLR(Optimizer& opt, double max_lr, double min_lr, int64_t warmup_steps, int64_t max_steps)
    : LRScheduler(opt), max_lr_(max_lr), min_lr_(min_lr), warmup_(warmup_steps), max_steps_(max_steps) {
  LOOM_CHECK(max_steps > 0 && warmup_steps >= 0 && warmup_steps <= max_steps,
             "WarmupCosineLR: need 0 <= warmup_steps (", warmup_steps, ") <= max_steps (", max_steps,
             ") and max_steps > 0");
  LOOM_CHECK(min_lr >= 0.0 && min_lr <= max_lr, "WarmupCosineLR: need 0 <= min_lr (", min_lr, ") <= max_lr (", max_lr,
             ")");
  apply();
}

double WarmupCosineLR::lr_at(int64_t step) const {
  if (step < warmup_) return max_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (step >= max_steps_ || max_steps_ == warmup_) return min_lr_;
  const double r = static_cast<double>(step - warmup_) / static_cast<double>(max_steps_ - warmup_);
  return min_lr_ + 0.5 * (1.0 + std::cos(std::numbers::pi * r)) * (max_lr_ - min_lr_);
}

}  // namespace loom::nn
