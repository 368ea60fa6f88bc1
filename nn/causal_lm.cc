#include "nn/causal_lm.h"

#include "autograd/functions.h"

namespace loom::nn {

Tensor CausalLM::loss(const Tensor& idx, const Tensor& targets) {
  LOOM_CHECK(idx.dim() == 2 && targets.sizes() == idx.sizes(), type_name(),
             ".loss: expected idx and targets of the same shape (B, T), got ", shape_str(idx.sizes()), " and ",
             shape_str(targets.sizes()));
  Tensor logits = (*this)(idx);  // (B, T, V)
  const int64_t N = idx.size(0) * idx.size(1);
  Tensor logits2d = loom::reshape(logits, {N, logits.size(2)}), targets1d = loom::reshape(targets, {N});
  return loss_fn_ ? loss_fn_(logits2d, targets1d) : loom::cross_entropy(logits2d, targets1d);
}

}  // namespace loom::nn
