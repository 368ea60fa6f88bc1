// The FullyShard runtime: all-gathers and reshards driven by module hooks, gradient reduce-scatter driven by
// post-accumulate hooks (flat_param.h describes the layout). The full storage of a group is refilled in place
// (Storage::resize), so tensors autograd saved during forward see the refilled data in backward.
#include "parallel/flat_param.h"

#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "collectives/trace.h"
#include "tensor/ops.h"

namespace loom::parallel::detail {

void FsdpState::issue_gather(size_t u) {
  autograd::NoGradGuard no_grad;
  for (size_t gi : units[u].groups) {
    FlatGroup& g = groups[gi];
    if (g.state != GatherState::kFree) continue;
    g.full->resize(static_cast<size_t>(g.padded) * element_size(pdt()));
    Tensor out(g.full, {g.padded}, {1}, 0, pdt());
    Tensor in = loom::detach(g.shard);
    if (in.dtype() != pdt()) in = ops::to(in, pdt());
    if (in.device() != compute) in = ops::to(in, compute);
    g.gather_work = pg->all_gather(out, in);
    units[u].pending_seqs.push_back(g.gather_work->seq());
    g.state = GatherState::kInFlight;
    if (!opts.overlap) finish_gather(g);
  }
}

void FsdpState::finish_gather(FlatGroup& g) {
  if (g.state != GatherState::kInFlight) return;
  const int64_t t0 = collectives::trace_now_ns();
  g.gather_work->wait();
  step_wait_ns += collectives::trace_now_ns() - t0;
  g.gather_work.reset();
  g.state = GatherState::kFull;
}

void FsdpState::wait_gather(size_t u) {
  issue_gather(u);
  for (size_t gi : units[u].groups) finish_gather(groups[gi]);
}

void FsdpState::reshard(size_t u) {
  for (size_t gi : units[u].groups) {
    FlatGroup& g = groups[gi];
    finish_gather(g);  // never free a buffer the worker thread is writing
    if (g.state == GatherState::kFull) g.full->resize(0);
    g.state = GatherState::kFree;
  }
}

void FsdpState::reshard_all() {
  for (size_t u = 0; u < units.size(); ++u) reshard(u);
}

size_t FsdpState::next_forward(size_t u) const {
  if (u == root_unit()) return units.size() > 1 ? 0 : kNone;
  return u + 1 < root_unit() ? u + 1 : kNone;
}

size_t FsdpState::prev_backward(size_t u) const {
  if (u == root_unit()) return units.size() > 1 ? root_unit() - 1 : kNone;
  return u > 0 ? u - 1 : kNone;
}

void FsdpState::pre_forward(size_t u) {
  if (autograd::in_checkpoint_recompute()) {
    // A unit inside a checkpointed region, rerun in backward: gather it (the backward pre-hook may not have fired
    // yet), but prefetch nothing (the unit forward would run next is done) and keep the forward timeline.
    wait_gather(u);
    units[u].pending_seqs.clear();
    return;
  }
  if (u == root_unit() && !autograd::in_backward_pass()) check_not_awaiting("forward started");
  if (u == root_unit() && callback_queued && !autograd::in_backward_pass()) abandon_backward();
  if (u == root_unit() && !autograd::in_backward_pass()) step_wait_ns = 0;
  issue_gather(u);
  if (opts.prefetch) {
    const size_t n = next_forward(u);
    if (n != kNone) issue_gather(n);
  }
  wait_gather(u);
  timeline[u].gather_seqs = std::move(units[u].pending_seqs);
  units[u].pending_seqs.clear();
  timeline[u].forward_start_ns = collectives::trace_now_ns();
}

void FsdpState::post_forward(size_t u) {
  // A recompute's backward follows at once: the unit stays gathered until its gradients are reduced (on_grad).
  if (autograd::in_checkpoint_recompute()) return;
  timeline[u].forward_end_ns = collectives::trace_now_ns();
  const bool backward_follows = autograd::grad_mode_enabled();
  if (u == root_unit()) {
    // The root stays gathered until backward ends; without backward nothing stays.
    if (!backward_follows) reshard_all();
  } else if ((opts.reshard_after_forward && u + 1 != root_unit()) || !backward_follows) {
    // The last block stays gathered: backward needs it first, right after the head (torchtitan does the same).
    reshard(u);
  }
}

void FsdpState::pre_backward(size_t u) {
  ensure_callback();
  // A reduce-scatter that finished during the previous unit's backward starts its replica all-reduce now, not only at
  // the next reduce().
  if (replicate) issue_replica_reduces(false);
  // Backward reaching u means it is done with the blocks it went through before (blocks run one after another). A block
  // with frozen parameters cannot tell that from its gradients: free it here.
  for (size_t v = 0; v < root_unit(); ++v)
    if (v != u && units[v].in_backward) {
      reshard(v);
      units[v].in_backward = false;
    }
  if (units[u].has_frozen && !units[u].is_root) units[u].in_backward = true;
  issue_gather(u);
  if (opts.prefetch) {
    const size_t p = prev_backward(u);
    if (p != kNone) issue_gather(p);
  }
  wait_gather(u);
  units[u].pending_seqs.clear();
}

void FsdpState::ensure_callback() {
  if (callback_queued || !autograd::in_backward_pass()) return;
  check_not_awaiting("a backward pass began");
  std::weak_ptr<FsdpState> w = weak_from_this();
  autograd::queue_callback([w] {
    if (auto s = w.lock()) s->finish_backward();
  });
  callback_queued = true;
}

void FsdpState::on_grad(size_t gi, size_t si) {
  ensure_callback();
  FlatGroup& g = groups[gi];
  ParamSlot& s = g.params[si];
  if (!s.grad_ready) {
    s.grad_ready = true;
    ++g.ready;
  }
  if (g.reduced || g.ready != g.params.size()) return;
  reduce(gi);
  // Once every gradient of a block is final its full parameters are no longer needed.
  const Unit& unit = units[g.unit];
  if (unit.is_root || unit.has_frozen) return;
  bool all = true;
  for (size_t k : unit.groups) all = all && (groups[k].reduced || !groups[k].trainable);
  if (all) reshard(g.unit);
}

void FsdpState::reduce(size_t gi) {
  autograd::NoGradGuard no_grad;
  FlatGroup& g = groups[gi];
  const DType rdt = opts.mixed_precision.reduce_dtype;
  Tensor flat = empty({g.padded}, rdt, compute);
  for (auto& s : g.params) {
    Tensor view = ops::view(ops::narrow(flat, 0, s.offset, s.numel), s.shape);
    auto* m = autograd::meta(s.param);
    if (m && m->grad.defined()) {
      ops::copy_(view, ops::to(m->grad, compute));
      m->grad = Tensor();
    } else {
      ops::zero_(view);
    }
  }
  if (g.padded > g.numel) ops::zero_(ops::narrow(flat, 0, g.numel, g.padded - g.numel));
  g.rs_in = flat;
  rs_bytes += static_cast<int64_t>(flat.nbytes());
  g.rs_out = empty({g.shard_numel}, rdt, compute);
  collectives::ReduceScatterOptions ro;
  ro.op = collectives::ReduceOp::kAvg;
  ro.rank_ordered = opts.grad_reduce == GradReduce::kRankOrdered;
  g.rs_work = pg->reduce_scatter(g.rs_out, g.rs_in, ro);
  g.reduced = true;
  rs_order.push_back(gi);
  if (replicate) replica_pending.push_back(gi);
  if (!opts.overlap) {
    g.rs_work->wait();
    issue_replica_reduces(true);
    if (g.ar_work) g.ar_work->wait();
  }
  drain_completed();
}

void FsdpState::issue_replica_reduces(bool wait) {
  while (!replica_pending.empty()) {
    FlatGroup& g = groups[replica_pending.front()];
    if (!wait && !g.rs_work->is_completed()) return;
    g.rs_work->wait();
    collectives::AllreduceOptions ao;
    ao.op = collectives::ReduceOp::kAvg;
    ao.rank_ordered = opts.grad_reduce == GradReduce::kRankOrdered;
    g.ar_work = replicate->allreduce(g.rs_out, ao);
    replica_pending.pop_front();
  }
}

void FsdpState::finish_backward() {
  callback_queued = false;
  for (size_t gi = 0; gi < groups.size(); ++gi)
    if (!groups[gi].reduced && groups[gi].trainable) reduce(gi);
  for (auto& unit : units) unit.in_backward = false;
  reshard_all();
  if (!opts.wait_in_backward) {
    if (replicate) issue_replica_reduces(false);  // those whose reduce-scatter is done; complete() issues the rest
    awaiting = true;
    return;
  }
  complete(nullptr);
}

void FsdpState::complete(const std::function<void(FlatGroup&)>& on_group) {
  awaiting = false;
  try {
    // Hybrid sharding: every replica all-reduce is issued, in order, before any is waited on.
    if (replicate) issue_replica_reduces(true);
    for (size_t gi : rs_order) {
      FlatGroup& g = groups[gi];
      if (g.rs_work) accumulate(g);
      if (on_group) on_group(g);
    }
  } catch (...) {
    abandon_backward();
    throw;
  }
  for (auto& g : groups) reset_pass(g);
  rs_order.clear();
  last_comm_wait_ns = step_wait_ns;
}

void FsdpState::check_not_awaiting(const char* what) {
  if (!awaiting) return;
  abandon_backward();
  LOOM_THROW(InvalidArgument, "FullyShard (rank ", rank, " of group '", pg->name(), "'): ", what,
             " while the last backward pass's reduce-scatters were still pending (FullyShardOptions::"
             "wait_in_backward = false): call step(optimizer) or wait_gradients() after backward; those gradients "
             "were dropped");
}

void FsdpState::accumulate(FlatGroup& g) {
  autograd::NoGradGuard no_grad;
  const int64_t t0 = collectives::trace_now_ns();
  g.rs_work->wait();
  if (g.ar_work) g.ar_work->wait();
  step_wait_ns += collectives::trace_now_ns() - t0;
  Tensor r = ops::to(ops::to(g.rs_out, DType::f32), shard_device);
  Tensor cur = g.shard.grad();
  if (!cur.defined()) {
    g.shard.set_grad(r);
  } else {
    ops::add_(cur, r);
    cur.bump_version();
  }
  g.rs_work.reset();
  g.ar_work.reset();
  g.rs_out = Tensor();
  g.rs_in = Tensor();
}

void FsdpState::drain_completed() {
  if (replicate) issue_replica_reduces(false);
  for (auto& g : groups) {
    if (!g.rs_work || !g.rs_work->is_completed()) continue;
    if (replicate && !(g.ar_work && g.ar_work->is_completed())) continue;  // not issued yet, or still running
    accumulate(g);
  }
}

void FsdpState::abandon_backward() {
  callback_queued = false;
  if (replicate) issue_replica_reduces(true);  // every rank issues the same collectives, even on the way out
  awaiting = false;
  rs_order.clear();
  for (auto& g : groups) {
    if (g.rs_work) g.rs_work->wait();
    if (g.ar_work) g.ar_work->wait();
    reset_pass(g);
    for (auto& s : g.params)
      if (auto* m = autograd::meta(s.param)) m->grad = Tensor();
  }
  for (auto& unit : units) unit.in_backward = false;
  reshard_all();
}

void FsdpState::reset_pass(FlatGroup& g) {
  g.rs_work.reset();
  g.ar_work.reset();
  g.rs_out = Tensor();
  g.rs_in = Tensor();
  g.ready = 0;
  g.reduced = false;
  for (auto& s : g.params) s.grad_ready = false;
}

}  // namespace loom::parallel::detail
