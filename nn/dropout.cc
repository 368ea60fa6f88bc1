#include "nn/dropout.h"

#include "autograd/functions.h"

namespace loom::nn {

Dropout::Dropout(double p_, Generator& gen) : Module("Dropout"), p(p_), gen_(&gen) {
  LOOM_CHECK(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got ", p);
}

namespace {
thread_local DropoutRowShard* active_row_shard = nullptr;
}

DropoutRowShard::DropoutRowShard(int64_t row_begin_, int64_t global_rows_)
    : row_begin(row_begin_), global_rows(global_rows_), outer_(active_row_shard) {
  LOOM_CHECK(row_begin >= 0 && row_begin <= global_rows, "DropoutRowShard: row_begin ", row_begin,
             " outside [0, global_rows ", global_rows, "]");
  active_row_shard = this;
}
DropoutRowShard::~DropoutRowShard() { active_row_shard = outer_; }

Tensor Dropout::forward(const Tensor& x) {
  if (!is_training() || p == 0.0) return x;
  const DropoutRowShard* shard = active_row_shard;
  if (!shard || x.dim() == 0 || x.size(0) == 0) return dropout(x, p, true, *gen_);
  // Element e of row r of the global batch uses Philox block start + (r * E + e) / 4: start this rank's draw at its
  // first row's block, and leave the generator where the whole batch's draw would.
  const uint64_t row_elems = static_cast<uint64_t>(x.numel() / x.size(0));
  const uint64_t start = gen_->offset();
  gen_->set_state(gen_->seed(), start + static_cast<uint64_t>(shard->row_begin) * row_elems / 4);
  Tensor y = dropout(x, p, true, *gen_);
  gen_->set_state(gen_->seed(), start + (static_cast<uint64_t>(shard->global_rows) * row_elems + 3) / 4);
  return y;
}

std::string Dropout::extra_repr() const { return "p=" + format_float(p) + ", inplace=False"; }

}  // namespace loom::nn
