// Internals of FullyShard (not a public API): the flat-parameter layout (a unit's parameters laid end to end in flat
// groups, padded to a multiple of the world size, one f32 shard per rank) and the runtime state machine the module
// and gradient hooks drive: all-gather before use with prefetch, reshard after use, reduce-scatter of final gradients.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "parallel/fully_shard.h"

namespace loom::parallel::detail {

constexpr size_t kNone = std::numeric_limits<size_t>::max();

/// kFree: the full storage holds 0 bytes; kInFlight: an all-gather fills it; kFull: the full parameters are there.
enum class GatherState { kFree, kInFlight, kFull };

/// One original parameter inside a flat group.
struct ParamSlot {
  std::string name;  // first dotted name under the root
  Tensor param;      // the module's handle (its impl is re-pointed into the full storage)
  Shape shape;
  int64_t offset = 0, numel = 0;  // elements, within the flat group
  bool grad_ready = false;        // its gradient is final in the running backward pass
};

/// [lo, hi) of a parameter's flat elements that lie in this rank's shard, at shard_off in the shard.
struct LocalRange {
  int64_t lo = 0, hi = 0, shard_off = 0;
};

/// One flat parameter: the parameters of one unit with one weight-decay setting, laid end to end and padded to a
/// multiple of the world size; this rank's f32 shard, the full storage the parameters view, and the state of its
/// all-gather and of its gradient reduction in the running backward pass.
struct FlatGroup {
  size_t unit = 0;
  bool decay = false;
  std::vector<ParamSlot> params;
  int64_t numel = 0, padded = 0, shard_numel = 0;
  Tensor shard;                   // (shard_numel) f32 leaf on the shard device
  std::shared_ptr<Storage> full;  // padded x param_dtype on the compute device; 0 bytes while resharded
  GatherState state = GatherState::kFree;
  std::shared_ptr<collectives::Work> gather_work;
  // Backward pass state.
  size_t ready = 0;
  bool reduced = false;
  std::shared_ptr<collectives::Work> rs_work;
  Tensor rs_out, rs_in;                        // kept alive until the reduce-scatter is waited on
  std::shared_ptr<collectives::Work> ar_work;  // hybrid sharding: the all-reduce of rs_out across the replicas

  /// The part of s that lies in rank's shard, or nullopt when it lies wholly on other ranks.
  std::optional<LocalRange> local_range(const ParamSlot& s, int rank) const {
    const int64_t my_lo = rank * shard_numel, my_hi = my_lo + shard_numel;
    const int64_t lo = std::max(s.offset, my_lo), hi = std::min(s.offset + s.numel, my_hi);
    if (lo >= hi) return std::nullopt;
    return LocalRange{lo - s.offset, hi - s.offset, lo - my_lo};
  }
};

/// A wrapping unit (a block, or the root with everything outside the blocks) and its flat groups.
struct Unit {
  std::string name;
  nn::Module* module = nullptr;
  bool is_root = false;
  std::vector<size_t> groups;
  std::vector<uint64_t> pending_seqs;  // all-gathers issued since its last use
};

/// A state_dict key: a parameter slot or a buffer.
struct StateKey {
  std::string key;
  size_t group = kNone, slot = kNone;
  Tensor buffer;
};

/// Everything a FullyShard owns. Hooks hold it weakly, so a destroyed wrapper leaves no-ops behind. Every method runs
/// on the training thread; collectives are issued in the same order on every rank because every rank runs the same
/// hooks in the same order.
struct FsdpState : std::enable_shared_from_this<FsdpState> {
  std::shared_ptr<nn::Module> root;
  std::vector<std::shared_ptr<nn::Module>> unit_modules;
  std::shared_ptr<collectives::ProcessGroup> pg;
  std::shared_ptr<collectives::ProcessGroup> replicate;  // hybrid sharding: the replica group (null: plain FSDP)
  std::deque<size_t> replica_pending;  // groups whose replica all-reduce waits for their reduce-scatter, in issue order
  FullyShardOptions opts;
  int rank = 0, world = 1;
  Device compute, shard_device;  // where full parameters live; where shards, their grads and optimizer state live
  std::vector<Unit> units;       // blocks in order, the root last
  std::vector<FlatGroup> groups;
  std::vector<FullyShard::UnitTime> timeline;
  std::vector<StateKey> state_keys;  // the root's state_dict() keys in order
  std::vector<std::pair<nn::Module*, nn::HookHandle>> hooks;
  bool callback_queued = false;  // finish_backward is queued for the running backward pass

  size_t root_unit() const { return units.size() - 1; }
  DType pdt() const { return opts.mixed_precision.param_dtype; }

  // ------------------------------------------------------------ gather / reshard
  /// Issues the all-gather of every free group of unit u into its (re-allocated) full storage.
  void issue_gather(size_t u);
  /// Waits for g's all-gather if one is in flight.
  void finish_gather(FlatGroup& g);
  /// Makes unit u's full parameters present (issuing what is not yet issued) and waits for them.
  void wait_gather(size_t u);
  /// Frees unit u's full parameters (after any gather in flight finished: the worker thread may be writing them).
  void reshard(size_t u);
  void reshard_all();
  /// The unit forward runs after u (the root runs first, then the blocks), or kNone.
  size_t next_forward(size_t u) const;
  /// The unit backward reaches after u (the root first, then the blocks in reverse), or kNone.
  size_t prev_backward(size_t u) const;

  // ------------------------------------------------------------ hooks
  /// Forward pre-hook: gather u, prefetch the next unit, record the start of u's compute.
  void pre_forward(size_t u);
  /// Forward hook: record the end; reshard a block (ZeRO-3, or when no backward follows).
  void post_forward(size_t u);
  /// Backward pre-hook: gather u again if it was resharded, prefetch the unit backward reaches next.
  void pre_backward(size_t u);
  /// Queues finish_backward at the end of the running backward pass, once per pass.
  void ensure_callback();
  /// Post-accumulate hook of parameter si of group gi: when the group's gradients are all final, reduce it; when a
  /// block's groups are all reduced, reshard the block.
  void on_grad(size_t gi, size_t si);

  // ------------------------------------------------------------ gradient reduction
  /// Builds the padded flat gradient of group gi (reduce_dtype, zeros where a parameter got none), frees the
  /// parameters' own gradients and issues the reduce-scatter (average over the group) into a shard-sized buffer.
  void reduce(size_t gi);

  /// End of a backward pass: reduce what the hooks did not (same collective sequence on every rank), wait for every
  /// reduction, reshard everything.
  void finish_backward();

  /// Hybrid sharding: issues the replica all-reduce of every pending group whose reduce-scatter has finished (all of
  /// them, waiting, when `wait`), strictly in the order the reduce-scatters were issued: every rank then issues the
  /// replica all-reduces in the same order, whatever the timing of its reduce-scatters.
  void issue_replica_reduces(bool wait);

  /// Waits for g's reduction (the reduce-scatter, then the replica all-reduce), adds the averaged shard into the
  /// shard's gradient (f32, on the shard device) and frees the communication buffers.
  void accumulate(FlatGroup& g);

  /// Finalises the reductions that already finished, so a backward pass holds the flat gradient buffers of the
  /// reductions in flight only, not of every unit.
  void drain_completed();

  /// A backward pass that failed midway: drop its partial state.
  void abandon_backward();

  /// Clears g's backward-pass state.
  static void reset_pass(FlatGroup& g);
};

}  // namespace loom::parallel::detail
