#include "parallel/tensor_parallel.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <string>

#include "autograd/functions.h"
#include "nn/attention.h"
#include "nn/clip_grad.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "nn/mlp.h"
#include "parallel/wrap_claim.h"
#include "tensor/error.h"

namespace loom::parallel {

using collectives::ProcessGroup;
using collectives::ReduceOp;
using Grads = std::vector<Tensor>;

namespace {

/// The parallel layers are built at their local shapes and then overwritten with slices of full weights; their own
/// initial draws must not consume a caller's generator (it would shift every later draw of the model).
Generator& scratch_generator() {
  thread_local Generator gen(0);
  return gen;
}

/// Rows each rank holds of `parts` consecutive parts split evenly over `size` ranks, as placement segments.
std::vector<TpSegment> part_segments(const std::vector<int64_t>& parts, int rank, int size) {
  std::vector<TpSegment> segs;
  int64_t global = 0, local = 0;
  for (int64_t p : parts) {
    const int64_t len = p / size;
    segs.push_back({local, global + rank * len, len});
    local += len;
    global += p;
  }
  return segs;
}

/// Validates opts.parts against out_features and tp; returns the parts (one part when none were given).
std::vector<int64_t> checked_parts(const ColumnParallelOptions& opts, int64_t out_features, const ProcessGroup& tp) {
  std::vector<int64_t> parts = opts.parts.empty() ? std::vector<int64_t>{out_features} : opts.parts;
  int64_t total = 0;
  for (int64_t p : parts) {
    LOOM_CHECK(p > 0 && p % tp.size() == 0, "ColumnParallelLinear: tp size ", tp.size(),
               " does not divide the output part of width ", p, " (out_features ", out_features,
               "); choose a tp size that divides every part");
    total += p;
  }
  LOOM_CHECK(total == out_features, "ColumnParallelLinear: parts sum to ", total, ", not out_features ", out_features);
  LOOM_CHECK(!opts.gather_output || parts.size() == 1,
             "ColumnParallelLinear: gather_output needs a single part (a gathered fused q|k|v would be in rank "
             "order, not q|k|v order)");
  return parts;
}

int64_t local_width(int64_t parts_total, const ProcessGroup& tp) { return parts_total / tp.size(); }

std::shared_ptr<ProcessGroup> checked_group(std::shared_ptr<ProcessGroup> tp, const char* who) {
  LOOM_CHECK(tp != nullptr, who, ": the tp process group is null (this rank is not a member?)");
  return tp;
}

}  // namespace

// ---------------------------------------------------------------- mappings

void tp_sum_(const Tensor& t, ProcessGroup& tp, TpReduce reduce) {
  LOOM_CHECK(t.is_contiguous(), "tp_sum_: expected a contiguous tensor, got shape ", shape_str(t.sizes()));
  if (tp.size() == 1) return;
  collectives::AllreduceOptions o;
  o.rank_ordered = reduce == TpReduce::kRankOrdered;
  tp.allreduce(t, o)->wait();
}

Tensor copy_to_tp(const Tensor& x, ProcessGroup& tp, TpReduce reduce) {
  if (tp.size() == 1) return x;
  Tensor y = loom::detach(x);  // the identity, as a new autograd output sharing x's storage
  ProcessGroup* g = &tp;
  autograd::record("CopyToTpBackward", {x}, {y}, [g, reduce](const Grads& grads) {
    Tensor s = ops::clone(ops::contiguous(grads[0]));  // reduced in place: never alias a gradient held elsewhere
    tp_sum_(s, *g, reduce);
    return Grads{s};
  });
  return y;
}

Tensor reduce_from_tp(const Tensor& x, ProcessGroup& tp, TpReduce reduce) {
  if (tp.size() == 1) return x;
  Tensor y = ops::clone(ops::contiguous(x));
  tp_sum_(y, tp, reduce);
  autograd::record("ReduceFromTpBackward", {x}, {y}, [](const Grads& grads) { return Grads{grads[0]}; });
  return y;
}

Tensor gather_from_tp(const Tensor& x, ProcessGroup& tp) {
  if (tp.size() == 1) return x;
  LOOM_CHECK(x.dim() >= 1, "gather_from_tp: expected a tensor with at least one dimension");
  Tensor xc = ops::contiguous(x);
  std::vector<Tensor> outs;
  for (int r = 0; r < tp.size(); ++r) outs.push_back(ops::empty_like(xc));
  tp.all_gather(outs, xc)->wait();
  const int64_t d = x.dim() - 1, n = x.size(d), rank = tp.rank();
  Tensor y = ops::cat(outs, d);
  autograd::record("GatherFromTpBackward", {x}, {y}, [d, n, rank](const Grads& grads) {
    return Grads{ops::contiguous(ops::narrow(grads[0], d, rank * n, n))};
  });
  return y;
}

namespace {
/// A slice of a frozen parameter (requires_grad false) stays frozen.
void keep_frozen(nn::Linear& layer, const nn::Linear& full) {
  if (!full.weight.requires_grad()) layer.weight.set_requires_grad(false);
  if (full.bias.defined() && !full.bias.requires_grad()) layer.bias.set_requires_grad(false);
}
}  // namespace

// ---------------------------------------------------------------- ColumnParallelLinear

ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, std::shared_ptr<ProcessGroup> tp,
                                           ColumnParallelOptions opts, Generator& gen)
    : ColumnParallelLinear(in, checked_group(tp, "ColumnParallelLinear"), opts, out, opts.bias, opts.dtype) {
  nn::Linear full(in, out, nn::LinearOptions{opts.bias, opts.init_std, opts.dtype}, gen);
  take_slices(full.weight, full.bias);
}

ColumnParallelLinear::ColumnParallelLinear(int64_t in, std::shared_ptr<ProcessGroup> tp, ColumnParallelOptions opts,
                                           int64_t out, bool bias, DType dtype)
    : nn::Linear(in, local_width(out, *checked_group(tp, "ColumnParallelLinear")), nn::LinearOptions{bias, 0.0, dtype},
                 scratch_generator()),
      global_out_features(out),
      tp_(std::move(tp)),
      opts_(std::move(opts)) {
  opts_.bias = bias;
  opts_.dtype = dtype;
  opts_.parts = checked_parts(opts_, out, *tp_);
  segments_ = part_segments(opts_.parts, tp_->rank(), tp_->size());
}

std::shared_ptr<ColumnParallelLinear> ColumnParallelLinear::from_linear(const nn::Linear& full,
                                                                        std::shared_ptr<ProcessGroup> tp,
                                                                        ColumnParallelOptions opts) {
  // Not make_shared: the slicing constructor is private, so that a layer is never left holding scratch weights.
  std::shared_ptr<ColumnParallelLinear> layer(new ColumnParallelLinear(  // NOLINT(cppcoreguidelines-owning-memory)
      full.in_features, checked_group(tp, "ColumnParallelLinear::from_linear"), opts, full.out_features,
      full.bias.defined(), full.weight.dtype()));
  layer->to(full.weight.device());
  layer->take_slices(full.weight, full.bias);
  keep_frozen(*layer, full);
  return layer;
}

void ColumnParallelLinear::take_slices(const Tensor& full_weight, const Tensor& full_bias) {
  autograd::NoGradGuard no_grad;
  for (const auto& s : segments_) {
    ops::copy_(ops::narrow(weight, 0, s.local_start, s.length), ops::narrow(full_weight, 0, s.global_start, s.length));
    if (bias.defined())
      ops::copy_(ops::narrow(bias, 0, s.local_start, s.length), ops::narrow(full_bias, 0, s.global_start, s.length));
  }
  set_tp_placement(weight, TpPlacement{0, {global_out_features, in_features}, segments_});
  if (bias.defined()) set_tp_placement(bias, TpPlacement{0, {global_out_features}, segments_});
}

Tensor ColumnParallelLinear::forward(const Tensor& x) {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "ColumnParallelLinear.forward: input of shape ",
             shape_str(x.sizes()), " does not end in in_features=", in_features);
  Tensor y = loom::linear(copy_to_tp(x, *tp_, opts_.reduce), weight, bias);  // (..., out/tp)
  return opts_.gather_output ? gather_from_tp(y, *tp_) : y;
}

std::string ColumnParallelLinear::extra_repr() const {
  return "in_features=" + std::to_string(in_features) + ", out_features=" + std::to_string(global_out_features) +
         ", bias=" + (bias.defined() ? "True" : "False") + ", tp=" + std::to_string(tp_->size()) +
         " (column-parallel, local out_features=" + std::to_string(out_features) + ")";
}

// ---------------------------------------------------------------- RowParallelLinear

namespace {
int64_t checked_row_width(int64_t in, const ProcessGroup& tp) {
  LOOM_CHECK(in > 0 && in % tp.size() == 0, "RowParallelLinear: tp size ", tp.size(), " does not divide in_features ",
             in, "; choose a tp size that divides it");
  return in / tp.size();
}
}  // namespace

RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, std::shared_ptr<ProcessGroup> tp, RowParallelOptions opts,
                                     Generator& gen)
    : RowParallelLinear(out, checked_group(tp, "RowParallelLinear"), opts, in, opts.bias, opts.dtype) {
  nn::Linear full(in, out, nn::LinearOptions{opts.bias, opts.init_std, opts.dtype}, gen);
  take_slices(full.weight, full.bias);
}

RowParallelLinear::RowParallelLinear(int64_t out, std::shared_ptr<ProcessGroup> tp, RowParallelOptions opts, int64_t in,
                                     bool bias, DType dtype)
    : nn::Linear(checked_row_width(in, *checked_group(tp, "RowParallelLinear")), out,
                 nn::LinearOptions{bias, 0.0, dtype}, scratch_generator()),
      global_in_features(in),
      tp_(std::move(tp)),
      opts_(opts) {
  opts_.bias = bias;
  opts_.dtype = dtype;
  in_start_ = tp_->rank() * in_features;
}

std::shared_ptr<RowParallelLinear> RowParallelLinear::from_linear(const nn::Linear& full,
                                                                  std::shared_ptr<ProcessGroup> tp,
                                                                  RowParallelOptions opts) {
  std::shared_ptr<RowParallelLinear> layer(new RowParallelLinear(  // NOLINT(cppcoreguidelines-owning-memory)
      full.out_features, checked_group(tp, "RowParallelLinear::from_linear"), opts, full.in_features,
      full.bias.defined(), full.weight.dtype()));
  layer->to(full.weight.device());
  layer->take_slices(full.weight, full.bias);
  keep_frozen(*layer, full);
  return layer;
}

void RowParallelLinear::take_slices(const Tensor& full_weight, const Tensor& full_bias) {
  autograd::NoGradGuard no_grad;
  ops::copy_(weight, ops::narrow(full_weight, 1, in_start_, in_features));
  if (bias.defined()) ops::copy_(bias, full_bias);  // replicated: no placement record
  set_tp_placement(weight, TpPlacement{1, {out_features, global_in_features}, {{0, in_start_, in_features}}});
}

Tensor RowParallelLinear::forward(const Tensor& x) {
  Tensor xin = x;
  if (!opts_.input_is_parallel) {
    LOOM_CHECK(x.dim() >= 1 && x.size(-1) == global_in_features, "RowParallelLinear.forward: input of shape ",
               shape_str(x.sizes()), " does not end in in_features=", global_in_features);
    // copy_to_tp first: each rank's narrow passes back gradients only for its columns; the all-reduce assembles them.
    xin = loom::narrow(copy_to_tp(x, *tp_, opts_.reduce), x.dim() - 1, in_start_, in_features);
  }
  LOOM_CHECK(xin.dim() >= 1 && xin.size(-1) == in_features, "RowParallelLinear.forward: input of shape ",
             shape_str(xin.sizes()), " does not end in this rank's in_features=", in_features, " (of ",
             global_in_features, ")");
  Tensor y = reduce_from_tp(loom::linear(xin, weight), *tp_, opts_.reduce);  // (..., out), the same on every rank
  return bias.defined() ? loom::add(y, bias) : y;                            // once, after the sum
}

std::string RowParallelLinear::extra_repr() const {
  return "in_features=" + std::to_string(global_in_features) + ", out_features=" + std::to_string(out_features) +
         ", bias=" + (bias.defined() ? "True" : "False") + ", tp=" + std::to_string(tp_->size()) +
         " (row-parallel, local in_features=" + std::to_string(in_features) + ")";
}

// ---------------------------------------------------------------- VocabParallelEmbedding

namespace {
int64_t checked_vocab_rows(int64_t num, const ProcessGroup& tp) {
  LOOM_CHECK(num > 0 && num % tp.size() == 0, "VocabParallelEmbedding: tp size ", tp.size(),
             " does not divide num_embeddings ", num, "; choose a tp size that divides the vocabulary");
  return num / tp.size();
}
}  // namespace

VocabParallelEmbedding::VocabParallelEmbedding(int64_t num, int64_t dim, std::shared_ptr<ProcessGroup> tp,
                                               double init_std, DType dtype, Generator& gen)
    : VocabParallelEmbedding(checked_group(tp, "VocabParallelEmbedding"), num, dim, dtype) {
  nn::Embedding full(num, dim, init_std, dtype, gen);
  take_slice(full.weight);
}

VocabParallelEmbedding::VocabParallelEmbedding(std::shared_ptr<ProcessGroup> tp, int64_t num, int64_t dim, DType dtype)
    : nn::Embedding(checked_vocab_rows(num, *checked_group(tp, "VocabParallelEmbedding")), dim, 0.0, dtype,
                    scratch_generator()),
      global_num_embeddings(num),
      tp_(std::move(tp)) {
  vocab_start_ = tp_->rank() * num_embeddings;
}

std::shared_ptr<VocabParallelEmbedding> VocabParallelEmbedding::from_embedding(const nn::Embedding& full,
                                                                               std::shared_ptr<ProcessGroup> tp) {
  std::shared_ptr<VocabParallelEmbedding> layer(new VocabParallelEmbedding(  // NOLINT(cppcoreguidelines-owning-memory)
      checked_group(tp, "VocabParallelEmbedding::from_embedding"), full.num_embeddings, full.embedding_dim,
      full.weight.dtype()));
  layer->to(full.weight.device());
  layer->take_slice(full.weight);
  if (!full.weight.requires_grad()) layer->weight.set_requires_grad(false);  // a frozen embedding stays frozen
  return layer;
}

void VocabParallelEmbedding::take_slice(const Tensor& full_weight) {
  autograd::NoGradGuard no_grad;
  ops::copy_(weight, ops::narrow(full_weight, 0, vocab_start_, num_embeddings));
  set_tp_placement(weight, TpPlacement{0, {global_num_embeddings, embedding_dim}, {{0, vocab_start_, num_embeddings}}});
}

Tensor VocabParallelEmbedding::forward(const Tensor& indices) {
  LOOM_CHECK(indices.dtype() == DType::i64, "VocabParallelEmbedding.forward: expected i64 indices, got ",
             dtype_name(indices.dtype()));
  // Ids are few (B*T): map them on the host to local rows plus a keep mask (1 for ids this rank holds, else 0).
  const std::vector<int64_t> ids = ops::contiguous(ops::to(indices, kCPU)).to_vector<int64_t>();
  Tensor local = empty(indices.sizes(), DType::i64);
  Shape mask_shape = indices.sizes();
  mask_shape.push_back(1);
  Tensor keep = empty(mask_shape, DType::f32);
  int64_t* lp = local.data<int64_t>();
  float* kp = keep.data<float>();
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    LOOM_CHECK(id >= 0 && id < global_num_embeddings, "VocabParallelEmbedding.forward: index ", id, " at position ", i,
               " is out of range for a vocabulary of ", global_num_embeddings);
    const bool mine = id >= vocab_start_ && id < vocab_end();
    lp[i] = mine ? id - vocab_start_ : 0;
    kp[i] = mine ? 1.0f : 0.0f;
  }
  const Device dev = weight.device();
  if (weight.dtype() != DType::f32) keep = ops::to(keep, weight.dtype());
  if (!dev.is_cpu()) {
    local = ops::to(local, dev);
    keep = ops::to(keep, dev);
  }
  // Multiplying by exactly 1 or 0 and summing one value with zeros reproduces the unsplit lookup bit for bit, whatever
  // the order of addition.
  Tensor out = loom::mul(loom::embedding(weight, local), keep);  // (..., D), zero rows for ids held elsewhere
  return reduce_from_tp(out, *tp_);
}

std::string VocabParallelEmbedding::extra_repr() const {
  return std::to_string(global_num_embeddings) + ", " + std::to_string(embedding_dim) +
         ", tp=" + std::to_string(tp_->size()) + " (rows " + std::to_string(vocab_start_) + ".." +
         std::to_string(vocab_end()) + ")";
}

// ---------------------------------------------------------------- vocab-parallel cross-entropy

namespace {

constexpr int64_t kIgnoreIndex = -100;

/// Rows' maxima of x (N, Vl), T = float or double.
template <typename T>
void row_max_host(const T* x, int64_t N, int64_t Vl, double* m) {
  for (int64_t r = 0; r < N; ++r) {
    T v = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < Vl; ++i) v = std::max(v, x[r * Vl + i]);
    m[r] = static_cast<double>(v);
  }
}

/// st[r] = sum_i exp(x[r, i] - m[r]) over this rank's columns, st[N + r] = the target logit when this rank holds it
/// (0 otherwise), in f64.
template <typename T>
void partial_sums_host(const T* x, int64_t N, int64_t Vl, const double* m, const std::vector<int64_t>& tg,
                       int64_t vocab_start, double* st) {
  for (int64_t r = 0; r < N; ++r) {
    double s = 0;
    for (int64_t i = 0; i < Vl; ++i) s += std::exp(static_cast<double>(x[r * Vl + i]) - m[r]);
    st[r] = s;
    const int64_t t = tg[r] - vocab_start;
    st[N + r] = tg[r] != kIgnoreIndex && t >= 0 && t < Vl ? static_cast<double>(x[r * Vl + t]) : 0.0;
  }
}

/// dx = g (softmax(x) - onehot(target)) on this rank's columns; rows with ignored targets get 0.
template <typename T>
void ce_grad_host(const T* x, int64_t N, int64_t Vl, const std::vector<double>& lse, const std::vector<int64_t>& tg,
                  int64_t vocab_start, double g, T* dx) {
  for (int64_t r = 0; r < N; ++r) {
    if (tg[r] == kIgnoreIndex) continue;
    for (int64_t i = 0; i < Vl; ++i)
      dx[r * Vl + i] = static_cast<T>(g * std::exp(static_cast<double>(x[r * Vl + i]) - lse[r]));
    const int64_t t = tg[r] - vocab_start;
    if (t >= 0 && t < Vl) dx[r * Vl + t] -= static_cast<T>(g);
  }
}

}  // namespace

Tensor vocab_parallel_cross_entropy(const Tensor& local_logits, const Tensor& targets, ProcessGroup& tp,
                                    int64_t vocab_start, TpReduce reduce) {
  LOOM_CHECK(local_logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == local_logits.size(0),
             "vocab_parallel_cross_entropy: expected logits (N, V/tp) and targets (N), got ",
             shape_str(local_logits.sizes()), " and ", shape_str(targets.sizes()));
  LOOM_CHECK(targets.dtype() == DType::i64, "vocab_parallel_cross_entropy: targets must be i64, got ",
             dtype_name(targets.dtype()));
  LOOM_CHECK(is_floating(local_logits.dtype()), "vocab_parallel_cross_entropy: logits must be floating, got ",
             dtype_name(local_logits.dtype()));
  // One rank holds every column: the plain loss is the same computation, and rounds exactly as single-rank training.
  if (tp.size() == 1 && vocab_start == 0) return loom::cross_entropy(local_logits, targets, kIgnoreIndex);
  const int64_t N = local_logits.size(0), Vl = local_logits.size(1), V = Vl * tp.size();
  LOOM_CHECK(vocab_start >= 0 && vocab_start + Vl <= V, "vocab_parallel_cross_entropy: columns [", vocab_start, ", ",
             vocab_start + Vl, ") of rank ", tp.rank(), " fall outside a vocabulary of ", V, " (", tp.size(),
             " ranks x ", Vl, ")");
  const DType dtype = local_logits.dtype();
  const Device dev = local_logits.device();
  const std::vector<int64_t> tg = ops::contiguous(ops::to(targets, kCPU)).to_vector<int64_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    LOOM_CHECK(tg[i] == kIgnoreIndex || (tg[i] >= 0 && tg[i] < V), "vocab_parallel_cross_entropy: target ", tg[i],
               " at row ", i, " is out of range for ", V, " classes (expected 0 <= target < ", V, ", or -100)");
    count += tg[i] != kIgnoreIndex;
  }
  // Computed on the host as the CPU cross_entropy kernel does: in f64 for f64 logits, else from f32 values with f64
  // sums. x is saved for backward at f32 (or f64) size.
  const DType host = dtype == DType::f64 ? DType::f64 : DType::f32;
  Tensor x = ops::contiguous(ops::to(ops::to(local_logits, kCPU), host));  // (N, Vl)
  const bool f64 = host == DType::f64;

  // 1. The global row maxima (for a stable exp): max over ranks is exact in any order.
  Tensor mx = empty({N}, DType::f64);
  if (f64) {
    row_max_host(x.data<double>(), N, Vl, mx.data<double>());
  } else {
    row_max_host(x.data<float>(), N, Vl, mx.data<double>());
  }
  if (tp.size() > 1) tp.allreduce(mx, {ReduceOp::kMax})->wait();
  // 2. Sums of exp(x - max) over all columns, and the target logits (held by exactly one rank, zero elsewhere): 2N
  // numbers per rank, never the logits themselves.
  Tensor st = empty({2, N}, DType::f64);
  if (f64) {
    partial_sums_host(x.data<double>(), N, Vl, mx.data<double>(), tg, vocab_start, st.data<double>());
  } else {
    partial_sums_host(x.data<float>(), N, Vl, mx.data<double>(), tg, vocab_start, st.data<double>());
  }
  tp_sum_(st, tp, reduce);
  const double* mp = mx.data<double>();
  const double* sp = st.data<double>();
  auto lse = std::make_shared<std::vector<double>>(N);
  double total = 0;
  for (int64_t r = 0; r < N; ++r) {
    (*lse)[r] = mp[r] + std::log(sp[r]);
    if (tg[r] != kIgnoreIndex) total += (*lse)[r] - sp[N + r];
  }
  // Mean over counted rows; with none counted this is 0/0 = nan, as loom::cross_entropy gives.
  Tensor loss = ops::to(ops::full({}, total / static_cast<double>(count), dtype), dev);

  autograd::record("VocabParallelCrossEntropyBackward", {local_logits}, {loss},
                   [x, tg, lse, count, vocab_start, N, Vl, dtype, dev](const Grads& grads) {
                     // d loss / d x = (softmax(x) - onehot(target)) / count on this rank's columns: no communication.
                     const double g = count > 0 ? grads[0].item() / static_cast<double>(count) : 0.0;
                     Tensor dx = zeros({N, Vl}, x.dtype());
                     if (x.dtype() == DType::f64) {
                       ce_grad_host(x.data<double>(), N, Vl, *lse, tg, vocab_start, g, dx.data<double>());
                     } else {
                       ce_grad_host(x.data<float>(), N, Vl, *lse, tg, vocab_start, g, dx.data<float>());
                     }
                     Tensor out = dtype == dx.dtype() ? dx : ops::to(dx, dtype);
                     return Grads{dev.is_cpu() ? out : ops::to(out, dev)};
                   });
  return loss;
}

// ---------------------------------------------------------------- model conversion

namespace {

void parallelize_attention(nn::CausalSelfAttention& a, const std::shared_ptr<ProcessGroup>& tp, TpReduce reduce) {
  const int64_t H = a.n_head(), Hkv = a.n_kv_head(), D = a.head_dim(), n = tp->size();
  ColumnParallelOptions col;
  col.reduce = reduce;
  RowParallelOptions row;
  row.reduce = reduce;
  if (a.c_attn) {
    ColumnParallelOptions qkv = col;
    qkv.parts = {H * D, Hkv * D, Hkv * D};  // each rank keeps the q, k and v rows of its heads
    a.c_attn = a.register_module("c_attn", ColumnParallelLinear::from_linear(*a.c_attn, tp, qkv));
    a.c_proj = a.register_module("c_proj", RowParallelLinear::from_linear(*a.c_proj, tp, row));
  } else {
    a.q_proj = a.register_module("q_proj", ColumnParallelLinear::from_linear(*a.q_proj, tp, col));
    a.k_proj = a.register_module("k_proj", ColumnParallelLinear::from_linear(*a.k_proj, tp, col));
    a.v_proj = a.register_module("v_proj", ColumnParallelLinear::from_linear(*a.v_proj, tp, col));
    a.o_proj = a.register_module("o_proj", RowParallelLinear::from_linear(*a.o_proj, tp, row));
  }
  a.set_head_partition(H / n, Hkv / n);
}

void parallelize_mlp(nn::Module& mlp, const std::shared_ptr<ProcessGroup>& tp, TpReduce reduce) {
  ColumnParallelOptions col;
  col.reduce = reduce;
  RowParallelOptions row;
  row.reduce = reduce;
  if (auto* m = dynamic_cast<nn::GeluMLP*>(&mlp)) {
    m->c_fc = m->register_module("c_fc", ColumnParallelLinear::from_linear(*m->c_fc, tp, col));
    m->c_proj = m->register_module("c_proj", RowParallelLinear::from_linear(*m->c_proj, tp, row));
  } else if (auto* s = dynamic_cast<nn::SwiGLUMLP*>(&mlp)) {
    s->gate_proj = s->register_module("gate_proj", ColumnParallelLinear::from_linear(*s->gate_proj, tp, col));
    s->up_proj = s->register_module("up_proj", ColumnParallelLinear::from_linear(*s->up_proj, tp, col));
    s->down_proj = s->register_module("down_proj", RowParallelLinear::from_linear(*s->down_proj, tp, row));
  } else {
    LOOM_THROW(InvalidArgument, "tensor_parallelize: unsupported MLP type ", mlp.type_name());
  }
}

/// The vocab-parallel head: tied to `embedding`'s local rows, or this rank's rows of the existing head.
std::shared_ptr<ColumnParallelLinear> parallel_head(const nn::Linear& head, bool tied,
                                                    const std::shared_ptr<VocabParallelEmbedding>& embedding,
                                                    const std::shared_ptr<ProcessGroup>& tp, TpReduce reduce) {
  ColumnParallelOptions col;
  col.reduce = reduce;
  auto out = ColumnParallelLinear::from_linear(head, tp, col);
  if (tied) out->tie_weight(embedding->weight);  // one local tensor under both names, as before the conversion
  return out;
}

void check_divides(const char* config, const char* field, int64_t value, int64_t tp) {
  LOOM_CHECK(value % tp == 0, "tensor_parallelize: ", config, ".", field, " = ", value,
             " is not divisible by the tp group size ", tp, "; choose a tp size that divides ", field);
}

}  // namespace

void tensor_parallelize(nn::CausalLM& model, std::shared_ptr<ProcessGroup> tp, TensorParallelOptions opts) {
  checked_group(tp, "tensor_parallelize");
  // A wrapper (FullyShard, DistributedDataParallel) holds hooks and flat copies of the current parameters: converting
  // under it would leave them stale. A probe claim finds the wrapper, and is released at once.
  try {
    WrapClaim probe(model, "tensor_parallelize");
  } catch (const InvalidArgument& e) {
    LOOM_THROW(InvalidArgument, "tensor_parallelize: convert the model before wrapping it, not after (", e.what(), ")");
  }
  const int64_t n = tp->size();
  const int64_t vocab_start = tp->rank() * (model.vocab_size() / n);
  if (auto* g = dynamic_cast<nn::GPT2*>(&model)) {
    const nn::GPT2Config& c = g->config();
    LOOM_CHECK(!dynamic_cast<VocabParallelEmbedding*>(g->transformer->wte.get()),
               "tensor_parallelize: this GPT2 is already tensor-parallel");
    check_divides("GPT2Config", "n_head", c.n_head, n);
    check_divides("GPT2Config", "vocab_size", c.vocab_size, n);
    check_divides("GPT2Config", "n_embd * 4 (the MLP hidden size)", 4 * c.n_embd, n);
    nn::GPT2Model& t = *g->transformer;
    auto wte = VocabParallelEmbedding::from_embedding(*t.wte, tp);
    auto head = parallel_head(*g->lm_head, c.tie_word_embeddings, wte, tp, opts.reduce);
    t.wte = t.register_module("wte", wte);
    for (auto& block : t.blocks) {
      parallelize_attention(*block->attn, tp, opts.reduce);
      parallelize_mlp(*block->mlp, tp, opts.reduce);
    }
    g->lm_head = g->register_module("lm_head", head);
    g->register_module("transformer", g->transformer);  // re-register: parameters get their full dotted names again
  } else if (auto* l = dynamic_cast<nn::Llama*>(&model)) {
    const nn::LlamaConfig& c = l->config();
    LOOM_CHECK(!dynamic_cast<VocabParallelEmbedding*>(l->model->embed_tokens.get()),
               "tensor_parallelize: this Llama is already tensor-parallel");
    check_divides("LlamaConfig", "n_head", c.n_head, n);
    check_divides("LlamaConfig", "n_kv_head", c.n_kv_head, n);
    check_divides("LlamaConfig", "intermediate_size", c.intermediate_size, n);
    check_divides("LlamaConfig", "vocab_size", c.vocab_size, n);
    nn::LlamaModel& m = *l->model;
    auto emb = VocabParallelEmbedding::from_embedding(*m.embed_tokens, tp);
    auto head = parallel_head(*l->lm_head, c.tie_word_embeddings, emb, tp, opts.reduce);
    m.embed_tokens = m.register_module("embed_tokens", emb);
    for (auto& block : m.blocks) {
      parallelize_attention(*block->attn, tp, opts.reduce);
      parallelize_mlp(*block->mlp, tp, opts.reduce);
    }
    l->lm_head = l->register_module("lm_head", head);
    l->register_module("model", l->model);
  } else {
    LOOM_THROW(InvalidArgument, "tensor_parallelize: ", model.type_name(),
               " is not a GPT2 or a Llama; build its tensor-parallel layers (ColumnParallelLinear, "
               "RowParallelLinear, VocabParallelEmbedding) by hand");
  }
  model.set_loss_function([tp, vocab_start, reduce = opts.reduce](const Tensor& logits, const Tensor& targets) {
    return vocab_parallel_cross_entropy(logits, targets, *tp, vocab_start, reduce);
  });
}

// ---------------------------------------------------------------- state dict and clipping

namespace {
/// Every parameter under each of its dotted names (tied ones under all of them), so that a state-dict key finds the
/// tensor its placement is recorded on.
void collect_params(const nn::Module& m, const std::string& prefix, std::map<std::string, Tensor>& out) {
  for (const auto& [name, t] : m.named_parameters(/*recurse=*/false)) out[prefix + name] = t;
  for (const auto& [name, child] : m.named_children()) collect_params(*child, prefix + name + ".", out);
}
}  // namespace

nn::StateDict tp_gather_state_dict(const nn::Module& model, const nn::StateDict& local, ProcessGroup& tp) {
  std::map<std::string, Tensor> params;
  collect_params(model, "", params);
  // Each sharded entry is a collective: ranks passing different dicts (e.g. FullyShard::full_state_dict(true), empty
  // off rank 0) would wait on each other forever. One small all-gather of the sizes turns that into an error on all.
  if (tp.size() > 1) {
    Tensor n = ops::full({1}, static_cast<double>(local.size()), DType::i64);
    std::vector<Tensor> ns;
    for (int r = 0; r < tp.size(); ++r) ns.push_back(ops::empty_like(n));
    tp.all_gather(ns, n)->wait();
    for (int r = 0; r < tp.size(); ++r)
      LOOM_CHECK(ns[r].item<int64_t>() == static_cast<int64_t>(local.size()), "tp_gather_state_dict: tp rank ", r,
                 " passed ", ns[r].item<int64_t>(), " tensors and tp rank ", tp.rank(), " ", local.size(),
                 "; every tp rank must pass the same names (FullyShard::full_state_dict(/*rank0_only=*/false))");
  }
  nn::StateDict out;
  for (const auto& [name, t] : local) {
    auto it = params.find(name);
    std::optional<TpPlacement> pl = it == params.end() ? std::nullopt : tp_placement(it->second);
    if (!pl) {
      out.insert(name, t);
      continue;
    }
    const int d = pl->dim;
    int64_t local_len = 0;
    for (const auto& s : pl->segments) local_len += s.length;
    Shape want = pl->global_shape;
    want[d] = local_len;
    LOOM_CHECK(t.sizes() == want, "tp_gather_state_dict: '", name, "' has shape ", shape_str(t.sizes()),
               " but its tensor-parallel placement expects the local shape ", shape_str(want), " (global ",
               shape_str(pl->global_shape), ")");
    Tensor tc = ops::contiguous(t);
    std::vector<Tensor> pieces;
    for (int r = 0; r < tp.size(); ++r) pieces.push_back(ops::empty_like(tc));
    // Every rank's segments (global starts and lengths): the layout differs by rank, e.g. a fused qkv's three parts.
    const int64_t nseg = static_cast<int64_t>(pl->segments.size());
    Tensor seg = empty({2 * nseg}, DType::i64);
    for (int64_t i = 0; i < nseg; ++i) {
      seg.data<int64_t>()[2 * i] = pl->segments[i].global_start;
      seg.data<int64_t>()[2 * i + 1] = pl->segments[i].length;
    }
    std::vector<Tensor> segs;
    for (int r = 0; r < tp.size(); ++r) segs.push_back(ops::empty_like(seg));
    tp.all_gather(pieces, tc)->wait();
    tp.all_gather(segs, seg)->wait();
    Tensor full = zeros(pl->global_shape, t.dtype(), t.device());
    for (int r = 0; r < tp.size(); ++r) {
      const int64_t* sp = segs[r].data<int64_t>();
      int64_t local_start = 0;
      for (int64_t i = 0; i < nseg; ++i) {
        ops::copy_(ops::narrow(full, d, sp[2 * i], sp[2 * i + 1]),
                   ops::narrow(pieces[r], d, local_start, sp[2 * i + 1]));
        local_start += sp[2 * i + 1];
      }
    }
    out.insert(name, full);
  }
  return out;
}

double tp_clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, ProcessGroup& tp, double norm_type) {
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  LOOM_CHECK(inf || norm_type == 2.0, "tp_clip_grad_norm_: norm_type must be 2 or infinity, got ", norm_type);
  LOOM_CHECK(max_norm >= 0.0, "tp_clip_grad_norm_: max_norm must be non-negative, got ", max_norm);
  if (tp.size() == 1) return nn::clip_grad_norm_(params, max_norm, norm_type);  // same sum order as without TP
  std::vector<Tensor> sharded, replicated;
  for (const auto& p : params) (tp_placement(p) ? sharded : replicated).push_back(p);
  // Squared norms (or maxima): sharded gradients summed over tp, replicated ones (equal on every rank) counted once.
  auto part = [&](const std::vector<Tensor>& ps) {
    const double v = nn::grad_norm(ps, norm_type);
    return inf ? v : v * v;
  };
  Tensor s = ops::full({1}, part(sharded), DType::f64);
  if (tp.size() > 1) tp.allreduce(s, {inf ? ReduceOp::kMax : ReduceOp::kSum})->wait();
  const double rep = part(replicated);
  const double total = inf ? std::max(s.item<double>(), rep) : std::sqrt(s.item<double>() + rep);
  nn::clip_grads_with_norm_(params, max_norm, total);
  return total;
}

}  // namespace loom::parallel
