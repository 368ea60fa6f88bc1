#include "trainer/metrics.h"

#include "tensor/error.h"
#include "tensor/ops.h"

namespace loom::trainer {

namespace {
/// outputs as (B, C) f32 on the CPU and targets as i64, checked.
std::pair<Tensor, std::vector<int64_t>> host_rows(const char* metric, const Tensor& outputs, const Tensor& targets) {
  LOOM_CHECK(outputs.dim() == 2 && targets.dim() == 1 && outputs.size(0) == targets.size(0), metric,
             ": outputs must be (B, C) and targets (B); got ", shape_str(outputs.sizes()), " and ",
             shape_str(targets.sizes()));
  Tensor o = ops::contiguous(ops::to(ops::to(outputs, kCPU), DType::f32));
  return {o, ops::to(ops::to(targets, kCPU), DType::i64).to_vector<int64_t>()};
}
}  // namespace

void Accuracy::update(const Tensor& outputs, const Tensor& targets, double) {
  auto [o, t] = host_rows("Accuracy", outputs, targets);
  const int64_t B = o.size(0), C = o.size(1);
  const float* p = o.data<float>();
  for (int64_t i = 0; i < B; ++i) {
    int64_t best = 0;
    for (int64_t c = 1; c < C; ++c)
      if (p[i * C + c] > p[i * C + best]) best = c;
    total += best == t[static_cast<size_t>(i)] ? 1 : 0;
  }
  count += static_cast<double>(B);
}

TopKAccuracy::TopKAccuracy(int k) : k_(k) { LOOM_CHECK(k >= 1, "TopKAccuracy: k must be >= 1, got ", k); }

void TopKAccuracy::update(const Tensor& outputs, const Tensor& targets, double) {
  auto [o, t] = host_rows("TopKAccuracy", outputs, targets);
  const int64_t B = o.size(0), C = o.size(1);
  const float* p = o.data<float>();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t y = t[static_cast<size_t>(i)];
    LOOM_CHECK(y >= 0 && y < C, "TopKAccuracy: target ", y, " of row ", i, " outside [0, ", C, ")");
    const float v = p[i * C + y];
    int64_t above = 0;  // outputs strictly larger than the target's
    for (int64_t c = 0; c < C; ++c) above += p[i * C + c] > v ? 1 : 0;
    total += above < k_ ? 1 : 0;
  }
  count += static_cast<double>(B);
}

void MeanLoss::update(const Tensor& outputs, const Tensor&, double mean_loss) {
  const double rows = static_cast<double>(outputs.size(0));
  total += mean_loss * rows;
  count += rows;
}

}  // namespace loom::trainer
