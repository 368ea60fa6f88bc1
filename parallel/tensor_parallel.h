// Megatron-style tensor parallelism: linear layers split by output columns or
// input rows across a `tp` group, attention heads split with them, a
// vocabulary-parallel embedding and a cross-entropy over vocab-sharded logits
// that never gathers the full logits, and the conversion of a GPT-2 or Llama
// into that form. Every rank of the tp group computes on the same activations;
// only the weights (and the matching activation columns) are split.
#pragma once

#include <memory>
#include <vector>

#include "collectives/process_group.h"
#include "nn/causal_lm.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "parallel/placement.h"

namespace loom::parallel {

// ---------------------------------------------------------------- differentiable mappings
// Megatron's f / g operators. Each is collective over tp in forward or backward
// (the collective waits before returning), so every rank of tp must run the same
// sequence of them.

/// How partial results are summed over the tp group.
enum class TpReduce {
  /// The group's all-reduce: the backend's algorithm, whose order of addition can differ by element and by backend.
  kAllreduce,
  /// AllreduceOptions::rank_ordered: all-gather, then every rank adds the parts in rank order, ((p0 + p1) + p2) + ...,
  /// in f32 for 16-bit dtypes: the same bits on every backend
  /// and reproducible on one rank, at tp times the receive volume. On two ranks both give the same bits (a + b = b +
  /// a).
  kRankOrdered,
};

/// Sums t over tp in place, as `reduce` says. Collective. t must be contiguous.
void tp_sum_(const Tensor& t, collectives::ProcessGroup& tp, TpReduce reduce = TpReduce::kAllreduce);

/// Forward: identity (x is replicated on every tp rank). Backward: the gradients of all tp ranks summed, since each
/// rank's copy fed a different slice of the layer that follows.
Tensor copy_to_tp(const Tensor& x, collectives::ProcessGroup& tp, TpReduce reduce = TpReduce::kAllreduce);
/// Forward: x summed over tp (partial results of a row-parallel layer). Backward: identity.
Tensor reduce_from_tp(const Tensor& x, collectives::ProcessGroup& tp, TpReduce reduce = TpReduce::kAllreduce);
/// Forward: x (..., n) of every tp rank concatenated along the last dim in rank order -> (..., tp * n). Backward:
/// this rank's n columns of the gradient.
Tensor gather_from_tp(const Tensor& x, collectives::ProcessGroup& tp);

// ---------------------------------------------------------------- layers

struct ColumnParallelOptions {
  bool bias = true;
  double init_std = 0.02;
  DType dtype = DType::f32;
  /// true: all-gather the output columns so forward returns (..., out_features); false: (..., out_features / tp).
  bool gather_output = false;
  /// The output features as consecutive parts, each split evenly across tp (rank r gets the r-th 1/tp of every part,
  /// in part order). A fused q|k|v projection passes its three widths so each rank keeps whole heads of each. Empty:
  /// one part, the whole output.
  std::vector<int64_t> parts;
  /// How the input gradient is summed over tp in backward.
  TpReduce reduce = TpReduce::kAllreduce;
};

/// y = x W^T + b with W's rows (output features) split across tp: the local weight is (out_features / tp,
/// in_features), the local bias (out_features / tp). Input: the full x, replicated on every rank (copy_to_tp).
class ColumnParallelLinear : public nn::Linear {
 public:
  /// Initialised as nn::Linear(in, out, {bias, init_std, dtype}, gen) would be (the same draws on every rank), then
  /// sliced: a model built this way computes what its unsplit twin does. Throws InvalidArgument when tp does not
  /// divide a part, or the parts do not sum to out_features.
  ColumnParallelLinear(int64_t in_features, int64_t out_features, std::shared_ptr<collectives::ProcessGroup> tp,
                       ColumnParallelOptions opts = {}, Generator& gen = default_generator());
  /// This rank's slice of an existing layer's weights (copied; `full` is left alone). opts.bias/init_std/dtype are
  /// taken from `full`.
  static std::shared_ptr<ColumnParallelLinear> from_linear(const nn::Linear& full,
                                                           std::shared_ptr<collectives::ProcessGroup> tp,
                                                           ColumnParallelOptions opts = {});
  /// x (..., in_features) -> (..., out_features / tp), or (..., global_out_features) with gather_output.
  /// (nn::Linear::tie_weight ties the local weight, e.g. a tied lm_head to a VocabParallelEmbedding's weight.)
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;

  int64_t global_out_features;
  /// The global output rows this rank holds, as placement segments along dim 0 (one per part).
  const std::vector<TpSegment>& segments() const { return segments_; }

 private:
  ColumnParallelLinear(int64_t in_features, std::shared_ptr<collectives::ProcessGroup> tp, ColumnParallelOptions opts,
                       int64_t out_features, bool bias, DType dtype);
  void take_slices(const Tensor& full_weight, const Tensor& full_bias);
  std::shared_ptr<collectives::ProcessGroup> tp_;
  ColumnParallelOptions opts_;
  std::vector<TpSegment> segments_;
};

struct RowParallelOptions {
  bool bias = true;
  double init_std = 0.02;
  DType dtype = DType::f32;
  /// true: the input is already split by columns (the output of a ColumnParallelLinear, or local attention heads);
  /// false: the full input is given and each rank takes its columns.
  bool input_is_parallel = true;
  /// How the partial products are summed over tp in forward.
  TpReduce reduce = TpReduce::kAllreduce;
};

/// y = x W^T + b with W's columns (input features) split across tp: the local weight is (out_features, in_features /
/// tp). The partial products are summed over tp (reduce_from_tp) and the bias, replicated, is added once after.
class RowParallelLinear : public nn::Linear {
 public:
  /// Initialised as nn::Linear(in, out, {bias, init_std, dtype}, gen), then sliced. Throws InvalidArgument when tp
  /// does not divide in_features.
  RowParallelLinear(int64_t in_features, int64_t out_features, std::shared_ptr<collectives::ProcessGroup> tp,
                    RowParallelOptions opts = {}, Generator& gen = default_generator());
  /// This rank's columns of an existing layer (copied).
  static std::shared_ptr<RowParallelLinear> from_linear(const nn::Linear& full,
                                                        std::shared_ptr<collectives::ProcessGroup> tp,
                                                        RowParallelOptions opts = {});
  /// x (..., in_features / tp) (or (..., global_in_features) without input_is_parallel) -> (..., out_features), the
  /// same on every rank.
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;

  int64_t global_in_features;
  /// This rank's input columns [in_start, in_start + in_features) of the global weight.
  int64_t in_start() const { return in_start_; }

 private:
  RowParallelLinear(int64_t out_features, std::shared_ptr<collectives::ProcessGroup> tp, RowParallelOptions opts,
                    int64_t in_features, bool bias, DType dtype);
  void take_slices(const Tensor& full_weight, const Tensor& full_bias);
  std::shared_ptr<collectives::ProcessGroup> tp_;
  RowParallelOptions opts_;
  int64_t in_start_ = 0;
};

/// An embedding whose rows (the vocabulary) are split across tp: rank r holds rows [vocab_start, vocab_end). Each rank
/// looks up the ids it holds, writes zeros for the others, and the results are summed over tp.
class VocabParallelEmbedding : public nn::Embedding {
 public:
  /// Initialised as nn::Embedding(num_embeddings, dim, init_std, dtype, gen), then sliced. Throws InvalidArgument when
  /// tp does not divide num_embeddings.
  VocabParallelEmbedding(int64_t num_embeddings, int64_t embedding_dim, std::shared_ptr<collectives::ProcessGroup> tp,
                         double init_std = 0.02, DType dtype = DType::f32, Generator& gen = default_generator());
  /// This rank's rows of an existing embedding (copied).
  static std::shared_ptr<VocabParallelEmbedding> from_embedding(const nn::Embedding& full,
                                                                std::shared_ptr<collectives::ProcessGroup> tp);
  /// indices i64 (...) with 0 <= id < global_num_embeddings -> (..., embedding_dim), the same on every rank. Throws
  /// naming the id when one is out of range.
  Tensor forward(const Tensor& indices) override;
  std::string extra_repr() const override;

  int64_t global_num_embeddings;
  int64_t vocab_start() const { return vocab_start_; }
  int64_t vocab_end() const { return vocab_start_ + num_embeddings; }

 private:
  VocabParallelEmbedding(std::shared_ptr<collectives::ProcessGroup> tp, int64_t num_embeddings, int64_t embedding_dim,
                         DType dtype);
  void take_slice(const Tensor& full_weight);
  std::shared_ptr<collectives::ProcessGroup> tp_;
  int64_t vocab_start_ = 0;
};

// ---------------------------------------------------------------- loss

/// Mean cross-entropy over the N rows of vocab-sharded logits: local_logits (N, V/tp) holds columns [vocab_start,
/// vocab_start + V/tp) of this rank; targets (N) i64 are global ids, rows with -100 ignored (mean over the others; nan
/// when there are none, as loom::cross_entropy). The full logits are never gathered: the row maxima, the sums of
/// exponentials and the target logits are all-reduced ((3 N) numbers), and the backward is local (softmax minus
/// one-hot on this rank's columns). Collective over tp in forward. Returns a scalar of local_logits' dtype; throws
/// InvalidArgument on shapes or on a target outside [0, V). On a one-rank group it is loom::cross_entropy.
Tensor vocab_parallel_cross_entropy(const Tensor& local_logits, const Tensor& targets, collectives::ProcessGroup& tp,
                                    int64_t vocab_start, TpReduce reduce = TpReduce::kAllreduce);

// ---------------------------------------------------------------- models

struct TensorParallelOptions {
  /// How every layer and the loss sum partial results over tp (kRankOrdered for results reproducible bit for bit).
  TpReduce reduce = TpReduce::kAllreduce;
};

/// Converts a GPT2 or Llama (every tp rank built with the same weights) in place: attention heads (q, k and v by
/// heads, the output projection by its input columns), MLP columns then rows, the token embedding and lm_head by
/// vocabulary. Each rank keeps copies of its slices of the existing weights, so the model computes what it did
/// before; forward now returns this rank's vocab columns of the logits (B, T, V/tp) and CausalLM::loss uses
/// vocab_parallel_cross_entropy. A tied lm_head stays tied (one local tensor). Norms, position embeddings and the
/// biases of row-parallel layers stay replicated; every sharded parameter gets a parallel::tp_placement record.
/// Convert before wrapping with FullyShard and before building the optimizer. Throws InvalidArgument naming the
/// config field and both numbers when tp does not divide n_head, n_kv_head, the MLP hidden size or vocab_size, when
/// the model is neither a GPT2 nor a Llama, is already tensor-parallel, or is wrapped (FullyShard,
/// DistributedDataParallel); the model is unchanged then. Dropout: replicated activations draw the same masks on every
/// rank (same generator state), but the attention-probability masks of different ranks' heads are then drawn from
/// the same offsets too, unlike the unsplit model's (exact comparisons use dropout 0).
/// Frozen parameters (requires_grad false) stay frozen: their slices do not require grad either.
void tensor_parallelize(nn::CausalLM& model, std::shared_ptr<collectives::ProcessGroup> tp,
                        TensorParallelOptions opts = {});

/// The full tensors of a TP model's state dict: each tensor of `local` (TP-local, by the module's state_dict names,
/// e.g. module.state_dict() or FullyShard::full_state_dict(false)) whose parameter has a tp_placement is all-gathered
/// over tp and reassembled in global order; the others are returned as they are. Collective over tp (every rank
/// passes the same names in the same order). Throws InvalidArgument naming a tensor whose local shape does not
/// match its placement.
nn::StateDict tp_gather_state_dict(const nn::Module& model, const nn::StateDict& local, collectives::ProcessGroup& tp);

/// nn::clip_grad_norm_ for a TP model's parameters: the total norm counts sharded parameters' gradients (those with a
/// tp_placement) from every tp rank and replicated ones once. Collective over tp. Returns the norm before clipping;
/// throws InvalidArgument for a norm_type other than 2 or infinity, or a negative max_norm.
double tp_clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, collectives::ProcessGroup& tp,
                          double norm_type = 2.0);

}  // namespace loom::parallel
