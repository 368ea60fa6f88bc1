// DistributedDataParallel: every rank holds the whole model and trains on its own slice of the batch; gradients are
// averaged across the group in buckets whose all-reduces start during backward, as soon as their last gradient is
// final, so communication hides behind the rest of the backward pass (PyTorch's DDP reducer, TF's MirroredStrategy).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "parallel/wrap_claim.h"
#include "tensor/dtype.h"

namespace loom::parallel {

struct DDPOptions {
  /// Bytes per gradient bucket after the first (a parameter larger than the cap gets a bucket of its own).
  int64_t bucket_cap_bytes = 25 << 20;
  /// Bytes of the first bucket (the last layers' gradients): small, so the first all-reduce starts early.
  int64_t first_bucket_cap_bytes = 1 << 20;
  /// false: a parameter whose gradient was not produced on this rank in a synced backward pass is an error naming it.
  /// true: such parameters count as zero gradients on this rank (one extra small all-reduce per pass tells which
  /// parameters no rank used; those keep their .grad untouched, as in PyTorch).
  bool find_unused_parameters = false;
  /// false: wait on each bucket's all-reduce right after launching it (no overlap; the benchmark baseline).
  bool overlap = true;
  /// false: each bucket is averaged by the group's allreduce (the backend's algorithm; on more than two ranks a ring
  /// adds the ranks' gradients in an order that differs per chunk). true: each bucket is all-reduced with
  /// AllreduceOptions::rank_ordered (the ranks' gradients added in rank order, then divided by the group size): the
  /// result does not depend on the backend and, for power-of-two groups, equals bit for bit accumulating the ranks'
  /// micro-batches in rank order on one rank. Costs W times the bucket's memory while it reduces. For reproducibility
  /// tests.
  bool rank_ordered_reduce = false;
  /// true: after a synced pass each parameter's .grad is a view into its bucket's flat buffer (PyTorch's
  /// gradient_as_bucket_view): the all-reduce averages .grad in place, saving one copy of every gradient per step, and
  /// gradients accumulated under no_sync() go straight into the bucket. .grad then changes in place during the next
  /// synced backward pass: clone it to keep it.
  bool gradient_as_bucket_view = false;
  /// true: backward() returns once every bucket's all-reduce finished and .grad holds the averages. false: it returns
  /// as soon as every bucket was launched, with the last all-reduces still in flight; .grad is final only after
  /// wait_gradients(), or use step(opt), which steps each bucket's parameters the moment that bucket's all-reduce
  /// finishes, so the all-reduces backward cannot hide (the last buckets: the first layers and the embeddings, whose
  /// gradient is final only when backward ends) run behind the optimizer's work on the earlier buckets. Starting the
  /// next forward while gradients are still pending is an error.
  bool wait_in_backward = true;
};

namespace detail {
struct DdpState;
}

/// Wraps a module for data-parallel training over `group`. Call the module as usual (module() or the pointer you
/// passed); after loss.backward() returns, every parameter's .grad holds the average over the group of the ranks'
/// gradients, identical on every rank, so the optimizer (and gradient clipping) run locally.
class DistributedDataParallel {
 public:
  /// Claims `module` (wrapping a module twice, or one already under FullyShard, throws InvalidArgument naming
  /// DistributedDataParallel), broadcasts every parameter and buffer from group rank 0, builds the buckets and
  /// registers the gradient hooks. Collective: every rank of `group` must construct it with the same architecture and
  /// options. Throws InvalidArgument for a null module or group, or non-positive bucket caps.
  DistributedDataParallel(std::shared_ptr<nn::Module> module, std::shared_ptr<collectives::ProcessGroup> group,
                          DDPOptions opts = {});
  /// Removes the forward hook and disarms the gradient hooks (they hold the state weakly and do nothing afterwards),
  /// waits for any all-reduce still in flight and releases the claim; the module keeps its current values.
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  /// The wrapped module.
  nn::Module& module();
  std::shared_ptr<nn::Module> module_ptr();

  /// RAII scope that turns gradient synchronisation off (gradient accumulation): backward passes inside it only add
  /// into .grad locally; the first synced backward after it all-reduces the accumulated sum. Restores the previous
  /// state on destruction.
  class NoSync {
   public:
    NoSync(NoSync&& o) noexcept;
    NoSync& operator=(NoSync&&) = delete;
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;
    ~NoSync();

   private:
    friend class DistributedDataParallel;
    NoSync(std::shared_ptr<detail::DdpState> st);
    std::shared_ptr<detail::DdpState> st_;
    bool prev_ = true;
  };
  /// Disables gradient synchronisation until the returned guard is destroyed.
  [[nodiscard]] NoSync no_sync();

  /// One bucket: the dotted names of its parameters (in the order their gradients sit in the flat buffer), its size in
  /// bytes and its dtype.
  struct BucketInfo {
    std::vector<std::string> names;
    int64_t bytes = 0;
    DType dtype = DType::f32;
  };
  /// The buckets in launch order (reverse registration order of the parameters, split by dtype), the same on every
  /// rank.
  std::vector<BucketInfo> buckets() const;
  /// collectives::trace_now_ns() when the last gradient of the last synced backward pass became final (before waiting
  /// on any all-reduce); 0 before the first one. Compare with the group's trace() to see overlap.
  int64_t last_backward_end_ns() const;
  /// Nanoseconds the caller's thread spent blocked on the all-reduces of the last synced backward pass (the
  /// communication that overlap did not hide: with overlap off, all of it); 0 before the first one.
  int64_t last_comm_wait_ns() const;
  /// With DDPOptions::wait_in_backward = false: waits for the last synced backward pass's all-reduces and writes the
  /// averages into .grad (what backward() does itself by default), e.g. before clipping, which needs every gradient.
  /// Does nothing when no all-reduce is pending. Throws CommError / Timeout from the collectives.
  void wait_gradients();
  /// Steps `opt` over the wrapped module's parameters. When all-reduces of the last backward pass are still pending
  /// (wait_in_backward = false), waits for the buckets in launch order and steps each bucket's parameters right after
  /// its all-reduce finished (Optimizer::step_params), while the later buckets are still on the wire: the same update
  /// as wait_gradients() then opt.step(). Otherwise it is opt.step(). With find_unused_parameters the flags all-reduce
  /// follows every bucket, so the first step_params waits for all of them.
  void step(nn::Optimizer& opt);
  /// The group gradients are averaged over.
  const collectives::ProcessGroup& group() const;

 private:
  WrapClaim claim_;  // first: a second wrap fails on every rank before any collective
  std::shared_ptr<detail::DdpState> state_;
};

}  // namespace loom::parallel
