// Metrics for fit() and evaluate(): each keeps a sum and a count, so the trainer can add them up across ranks (one
// all-reduce of every metric's pair) and every rank reports the same number, whatever the split of the data.
#pragma once

#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace loom::trainer {

class Metric {
 public:
  virtual ~Metric() = default;
  /// The key in the logs and history ("accuracy"; "val_accuracy" on validation data).
  virtual std::string name() const = 0;
  /// Adds one batch: outputs (B, C) (logits or scores), targets (B) class indices, and the batch's mean loss.
  virtual void update(const Tensor& outputs, const Tensor& targets, double mean_loss) = 0;
  void reset() { total = count = 0; }
  /// total / count (0 when nothing was added).
  double result() const { return count > 0 ? total / count : 0.0; }
  double total = 0, count = 0;
};

/// Fraction of rows whose arg-max output is the target (ties: the lowest index, as argmax).
class Accuracy : public Metric {
 public:
  std::string name() const override { return "accuracy"; }
  void update(const Tensor& outputs, const Tensor& targets, double mean_loss) override;
};

/// Fraction of rows whose target is among the k largest outputs (a tie with the k-th counts as inside, as Keras's
/// in_top_k does).
class TopKAccuracy : public Metric {
 public:
  explicit TopKAccuracy(int k);
  std::string name() const override { return "top_" + std::to_string(k_) + "_accuracy"; }
  void update(const Tensor& outputs, const Tensor& targets, double mean_loss) override;

 private:
  int k_;
};

/// The loss averaged over rows (each batch weighted by its rows); the trainer always reports it as "loss".
class MeanLoss : public Metric {
 public:
  std::string name() const override { return "loss"; }
  void update(const Tensor& outputs, const Tensor& targets, double mean_loss) override;
};

inline std::shared_ptr<Metric> accuracy() { return std::make_shared<Accuracy>(); }
inline std::shared_ptr<Metric> top_k_accuracy(int k) { return std::make_shared<TopKAccuracy>(k); }

}  // namespace loom::trainer
