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
  g.gather_work->wait();
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
  if (u == root_unit() && callback_queued && !autograd::in_backward_pass()) abandon_backward();
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
  } else if (opts.reshard_after_forward || !backward_follows) {
    reshard(u);
  }
}

void FsdpState::pre_backward(size_t u) {
  ensure_callback();
  // A reduce-scatter that finished during the previous unit's backward starts its replica all-reduce now, not only at
  // the next reduce().
  if (replicate) issue_replica_reduces(false);
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
  if (unit.is_root) return;
  bool all = true;
  for (size_t k : unit.groups) all = all && groups[k].reduced;
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
  g.rs_out = empty({g.shard_numel}, rdt, compute);
  collectives::ReduceScatterOptions ro;
  ro.op = collectives::ReduceOp::kAvg;
  ro.rank_ordered = opts.grad_reduce == GradReduce::kRankOrdered;
  g.rs_work = pg->reduce_scatter(g.rs_out, g.rs_in, ro);
  g.reduced = true;
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
    if (!groups[gi].reduced) reduce(gi);
  issue_replica_reduces(true);
  for (auto& g : groups) {
    if (g.rs_work) accumulate(g);
    reset_pass(g);
  }
  reshard_all();
}

void FsdpState::accumulate(FlatGroup& g) {
  autograd::NoGradGuard no_grad;
  g.rs_work->wait();
  if (g.ar_work) g.ar_work->wait();
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
  for (auto& g : groups) {
    if (g.rs_work) g.rs_work->wait();
    if (g.ar_work) g.ar_work->wait();
    reset_pass(g);
    for (auto& s : g.params)
      if (auto* m = autograd::meta(s.param)) m->grad = Tensor();
  }
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
