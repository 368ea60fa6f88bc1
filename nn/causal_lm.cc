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

int64_t CausalLM::max_positions() const {
  throw InvalidArgument(type_name() + ": this model does not support generation (no max_positions)");
}

Tensor CausalLM::hidden_states(const Tensor&, InferenceCache*) {
  throw InvalidArgument(type_name() + ": this model does not support generation (no hidden_states)");
}

Tensor CausalLM::head(const Tensor&) {
  throw InvalidArgument(type_name() + ": this model does not support generation (no head)");
}

InferenceCache CausalLM::make_cache(int64_t batch, int64_t capacity) const {
  LOOM_CHECK(capacity <= max_positions(), type_name(), ": a cache of ", capacity,
             " positions exceeds the model's context of ", max_positions(),
             " (prompt plus new tokens must fit; generate fewer tokens or shorten the prompt)");
  return InferenceCache(static_cast<int64_t>(blocks().size()), batch, capacity);
}

Tensor CausalLM::next_token_logits(const Tensor& idx, const std::vector<int64_t>& n_new, InferenceCache* cache) {
  LOOM_CHECK(idx.dim() == 2 && idx.dtype() == DType::i64, type_name(),
             ".next_token_logits: expected idx (B, T) of i64 token ids, got ", shape_str(idx.sizes()), " ",
             dtype_name(idx.dtype()));
  const int64_t B = idx.size(0), T = idx.size(1);
  LOOM_CHECK(static_cast<int64_t>(n_new.size()) == B, type_name(), ".next_token_logits: ", n_new.size(),
             " token counts for a batch of ", B);
  for (int64_t b = 0; b < B; ++b)
    LOOM_CHECK(n_new[static_cast<size_t>(b)] >= 1 && n_new[static_cast<size_t>(b)] <= T, type_name(),
               ".next_token_logits: sequence ", b, " has ", n_new[static_cast<size_t>(b)],
               " new tokens; expected 1 to ", T);
  if (cache)
    LOOM_CHECK(cache->batch() == B && cache->layers.size() == blocks().size(), type_name(),
               ".next_token_logits: the cache is for ", cache->batch(), " sequences and ", cache->layers.size(),
               " layers, the call for ", B, " sequences of a model with ", blocks().size(), " layers");
  autograd::NoGradGuard no_grad;
  // Through this module's hooks: FSDP's root unit gathers the embeddings and head here.
  Tensor logits = call_hooks([&] {
    Tensor h = hidden_states(idx, cache);  // (B, T, C)
    const int64_t C = h.size(2);
    std::vector<int64_t> rows(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) rows[static_cast<size_t>(b)] = b * T + n_new[static_cast<size_t>(b)] - 1;
    Tensor last = ops::index_select(ops::reshape(h, {B * T, C}), 0,
                                    ops::to(from_vector<int64_t>(rows, {B}), h.device()));  // (B, C)
    return head(last);
  });
  if (cache)
    for (int64_t b = 0; b < B; ++b) cache->lengths[static_cast<size_t>(b)] += n_new[static_cast<size_t>(b)];
  return logits;
}

}  // namespace loom::nn
