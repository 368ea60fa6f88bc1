// FullyShard: fully sharded data parallelism (FSDP / ZeRO-3). Each unit (by default each transformer block, plus the
// root for embeddings, final norm and head) keeps its parameters as flat shards across the group; full parameters exist
// only while a unit runs (all-gathered just before, the next unit's gather prefetched), gradients are reduce-scattered
// as soon as they are final, and the optimizer steps on the f32 shards only.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "nn/causal_lm.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "parallel/placement.h"
#include "parallel/wrap_claim.h"

namespace loom::parallel {

/// The dtypes FullyShard computes and communicates in; the master shards the optimizer steps on are always f32.
struct MixedPrecision {
  DType param_dtype = DType::f32;   // of the gathered (full) parameters and floating buffers during compute
  DType reduce_dtype = DType::f32;  // dtype gradients are reduce-scattered in
};

/// How gradients are reduce-scattered.
enum class GradReduce {
  /// The group's reduce_scatter (average): the backend's algorithm (a ring on gloo and MPI), whose order of addition
  /// differs from chunk to chunk.
  kReduceScatter,
  /// The reduce_scatter with ReduceScatterOptions::rank_ordered: an all_to_all of the chunks (the same bytes on the
  /// wire as a ring reduce-scatter, a full-size receive buffer), then each rank adds the W chunks in rank order and
  /// divides by W. The result does not depend on the backend and,
  /// for W a power of two, equals bit for bit accumulating the ranks' micro-batch gradients in rank order on one rank
  /// (loss / W per micro-batch) — what exact comparisons with single-rank training need, since AdamW turns last-bit
  /// differences of near-zero gradients into visible parameter differences.
  kRankOrdered,
};

struct FullyShardOptions {
  /// true: free a unit's full parameters after its forward (ZeRO-3) and gather them again for backward; false: keep
  /// them from forward to backward (ZeRO-2).
  bool reshard_after_forward = true;
  MixedPrecision mixed_precision;
  /// Shards, their gradients and the optimizer state live on the CPU; the full parameters are gathered onto the compute
  /// device (on a CPU run both are the CPU: same results).
  bool cpu_offload = false;
  /// Issue the next unit's all-gather early (forward: the next block; backward: the previous block).
  bool prefetch = true;
  /// false: wait on every collective right after issuing it (the benchmark baseline without overlap).
  bool overlap = true;
  /// The algorithm of the gradient reduce-scatter (see GradReduce). kRankOrdered also makes the replica all-reduce
  /// rank-ordered (AllreduceOptions::rank_ordered).
  GradReduce grad_reduce = GradReduce::kReduceScatter;
  /// Hybrid sharding (HSDP, the dp x fsdp mesh): the group of ranks that hold the same shards as this one (same
  /// coordinate in the shard group, one per replica; DeviceMesh::group("dp")). Parameters are sharded over the
  /// FullyShard group and replicated over this one; each unit's averaged shard gradient is then averaged across the
  /// replicas by an all-reduce, issued (in the reduce-scatters' order, the same on every rank) as soon as its
  /// reduce-scatter has finished and waited at the end of backward like them. Null or a group of one: plain FSDP.
  ///
  /// Numerics: the gradient is (sum over replicas d of (sum over shard ranks f of g_(d,f)) / F) / D. With
  /// kRankOrdered both sums run in rank order, so for F and D powers of two it equals bit for bit single-rank
  /// accumulation that adds each replica's F micro-batch gradients (loss / (F D)) in order and then the D replica sums
  /// in order — a tree, not the flat order of plain FSDP over F D ranks; against that flat order (or with the
  /// backends' own algorithms) results agree within summation tolerance only (tests/parallel/hsdp_test.cc).
  std::shared_ptr<collectives::ProcessGroup> replicate_group;
};

/// One rank's piece of one original parameter (or of a per-shard tensor such as an AdamW moment): the flat element
/// range [flat_begin, flat_end) of the row-major flattened tensor of shape `shape` (the parameter before FSDP
/// sharding), held in `local` (1-D, f32, as many elements as the range). Under tensor parallelism `shape` and the range
/// are those of the TP-local tensor and `tp` keeps its placement.
struct ShardedTensor {
  std::string name;
  Shape shape;
  int64_t flat_begin = 0, flat_end = 0;
  Tensor local;
  std::optional<TpPlacement> tp;
};

namespace detail {
struct FsdpState;
}

class FullyShard {
 public:
  /// Per unit, the last forward: when its compute started (its parameters were ready) and ended, on the
  /// collectives::trace_now_ns clock, and the sequence numbers (in the group's trace) of the all-gathers that brought
  /// its parameters for that forward (empty when they were already there).
  struct UnitTime {
    std::string name;
    int64_t forward_start_ns = 0, forward_end_ns = 0;
    std::vector<uint64_t> gather_seqs;
  };

  /// Wraps a causal LM: units are model->blocks() in order, plus the root (embeddings, final norm, head, tied weights).
  /// Issues no collective itself, but every rank of `group` must wrap the same architecture with the same options: the
  /// hooks then issue the same collectives in the same order on every rank. Throws
  /// InvalidArgument when the model is already wrapped (by FullyShard or DistributedDataParallel) or a parameter does
  /// not require grad.
  FullyShard(std::shared_ptr<nn::CausalLM> model, std::shared_ptr<collectives::ProcessGroup> group,
             FullyShardOptions opts = {});
  /// Wraps `root` with the given units (modules inside root, none inside another); parameters outside every unit, or
  /// shared by several units, go to the root unit. root's forward must run through Module::call (its operator()) so the
  /// hooks fire. Throws InvalidArgument naming the module when a unit is not inside root, is root itself, is listed
  /// twice or is nested in another unit.
  FullyShard(std::shared_ptr<nn::Module> root, std::vector<std::shared_ptr<nn::Module>> units,
             std::shared_ptr<collectives::ProcessGroup> group, FullyShardOptions opts = {});
  /// Removes the hooks and releases the wrap claim. The module's parameters stay sharded placeholders: load
  /// full_state_dict() into a fresh model to use the weights unwrapped.
  ~FullyShard();
  FullyShard(const FullyShard&) = delete;
  FullyShard& operator=(const FullyShard&) = delete;

  /// The wrapped root module (call it as usual; the hooks gather and shard).
  nn::Module& module();
  /// The flat f32 shards (leaf tensors requiring grad) the optimizer steps on, per unit in order, decay group then
  /// no-decay group.
  std::vector<Tensor> parameters() const;
  /// The shards split as nn::weight_decay_groups splits the original parameters: weight_decay on shards of >= 2-D
  /// parameters, 0 on the rest (empty groups dropped). Each group keeps the order of parameters(); to pair optimizer
  /// state with shard_pieces(), match the optimizer's tensors to parameters() by identity (Tensor::is_same).
  std::vector<nn::ParamGroup> param_groups(double lr, double weight_decay) const;
  /// Total gradient norm over every shard of the group (squared sums, or maxima for norm_type infinity, all-reduced),
  /// and clipping like nn::clip_grad_norm_ (scale by max_norm / (norm + 1e-6) when below 1). With tp_group the norm
  /// also spans the tensor-parallel ranks: parameters without a parallel::tp_placement record are replicated across tp
  /// and count once (weight 1/tp_size before the tp all-reduce). Collective over the group (and tp_group). Returns the
  /// norm before clipping; throws InvalidArgument for a norm_type other than 2 or infinity or a negative max_norm.
  /// Under hybrid sharding the replicas hold identical gradients after backward, so the norm is summed over the shard
  /// group only (a replica counts once) and every replica clips alike.
  double clip_grad_norm_(double max_norm, double norm_type = 2.0,
                         std::shared_ptr<collectives::ProcessGroup> tp_group = nullptr);
  /// Clears the shards' gradients (and any gradient left on the original parameters).
  void zero_grad();

  /// The full parameters (gathered, f32, on the CPU) and persistent buffers under the module's state_dict() names and
  /// shapes (tied weights under each name). Collective over the shard group. With rank0_only, ranks other than 0 of
  /// the shard group get an empty dict (under hybrid sharding rank 0 of every replica gets it).
  nn::StateDict full_state_dict(bool rank0_only = true);
  /// Loads a full state dict (every rank passes the whole dict): each rank keeps its shard. Throws InvalidArgument
  /// listing missing and unexpected keys, or naming the key and both shapes on a shape mismatch, before changing
  /// anything. Not collective.
  void load_full_state_dict(const nn::StateDict& full);
  /// This rank's pieces of every original parameter (a parameter that falls wholly on other ranks has no piece here),
  /// for checkpoints. `local` views the live shard. Parameters only: buffers are replicated, take them from
  /// module().state_dict().
  std::vector<ShardedTensor> sharded_state_dict() const;
  /// The pieces of another tensor laid out like parameters()[param_index] (e.g. its AdamW exp_avg), under the original
  /// parameter names; `local` views shard_like. Throws when shard_like has another number of elements.
  std::vector<ShardedTensor> shard_pieces(size_t param_index, const Tensor& shard_like) const;
  /// Copies into this rank's shards the parts of `pieces` that overlap them (pieces may come from another world size).
  /// Throws InvalidArgument naming an unknown parameter, a shape mismatch, a malformed piece, or the parameters whose
  /// local range the pieces do not cover.
  void load_sharded_state_dict(const std::vector<ShardedTensor>& pieces);

  /// Per unit (blocks in order, the root last), the last forward.
  const std::vector<UnitTime>& forward_timeline() const;
  /// Units, root included.
  size_t num_units() const;
  /// Bytes of unit `unit`'s gathered parameters (padded, in param_dtype).
  int64_t unit_full_bytes(size_t unit) const;
  /// The unit's name: its dotted module name in the root ("transformer.h.0"), "root" for the root.
  const std::string& unit_name(size_t unit) const;

 private:
  std::shared_ptr<detail::FsdpState> state_;
  WrapClaim claim_;
};

}  // namespace loom::parallel
