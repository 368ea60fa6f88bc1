// The DDP reducer: flat buckets in reverse parameter order, filled by post-accumulate-grad hooks, each all-reduced
// asynchronously once complete (in bucket order, so every rank issues the same collectives), and a backward-end
// callback that handles unused parameters, waits for every bucket and writes the averages back into .grad.
#include "parallel/ddp.h"

#include <algorithm>
#include <functional>
#include <map>
#include <sstream>
#include <unordered_set>

#include "autograd/autograd.h"
#include "collectives/trace.h"
#include "tensor/error.h"
#include "tensor/ops.h"

namespace loom::parallel {

namespace detail {

struct DdpSlot {
  std::string name;
  Tensor param;
  size_t bucket = 0;
  int64_t offset = 0;  // elements into the bucket's flat buffer
  int64_t numel = 0;
  bool ready = false;        // its gradient reached the bucket in the current synced pass
  bool accumulated = false;  // its hook fired under no_sync since the last synced pass
};

struct DdpBucket {
  DType dtype = DType::f32;
  std::vector<size_t> slots;  // indices into DdpState::slots, in buffer order
  int64_t numel = 0;
  Tensor flat;  // (numel,) the gradients in transit
  std::shared_ptr<collectives::Work> work;
  size_t pending = 0;  // slots not ready in the current pass
};

struct DdpState : std::enable_shared_from_this<DdpState> {
  std::shared_ptr<nn::Module> module;
  std::shared_ptr<collectives::ProcessGroup> group;
  DDPOptions opts;
  std::vector<DdpSlot> slots;  // one per parameter requiring grad, named_parameters() order
  std::vector<DdpBucket> buckets;
  bool sync = true;
  bool pass_active = false;  // a synced pass began and its finalize is queued
  size_t next_launch = 0;    // buckets [0, next_launch) were launched this pass
  int64_t last_hook_ns = 0;
  int64_t last_backward_end_ns = 0;
  int64_t pass_wait_ns = 0;  // the caller blocked on this pass's collectives so far
  int64_t last_comm_wait_ns = 0;
  nn::HookHandle forward_hook{};
  // wait_in_backward = false: the pass's buckets are launched, complete() has not run yet.
  bool awaiting = false;
  Tensor used;  // find_unused_parameters: per slot, whether some rank used it (after used_work)
  std::shared_ptr<collectives::Work> used_work;

  void on_grad(size_t i);
  void fill_slot(DdpSlot& s, const Tensor& grad);
  Tensor slot_view(const DdpSlot& s) const;  // the slot's range of its bucket, in the parameter's shape
  bool is_slot_view(const DdpSlot& s, const Tensor& t) const;
  void launch_ready();
  void finalize();
  void complete(const std::function<void(const std::vector<Tensor>&)>& on_bucket);
  void write_back(DdpSlot& s);
  void wait_launched_quietly();
  void reset_pass();
  void timed_wait(collectives::Work& w);
};

void DdpState::timed_wait(collectives::Work& w) {
  const int64_t t0 = collectives::trace_now_ns();
  w.wait();
  pass_wait_ns += collectives::trace_now_ns() - t0;
}

Tensor DdpState::slot_view(const DdpSlot& s) const {
  return ops::view(ops::narrow(buckets[s.bucket].flat, 0, s.offset, s.numel), s.param.sizes());
}

bool DdpState::is_slot_view(const DdpSlot& s, const Tensor& t) const {
  const Tensor& flat = buckets[s.bucket].flat;
  return t.defined() && t.storage() == flat.storage() && t.storage_offset() == flat.storage_offset() + s.offset &&
         t.is_contiguous();
}

// Puts a final gradient (or zeros) into its slice of the bucket. With gradient_as_bucket_view the parameter's .grad
// then becomes that slice, so the all-reduce writes the average straight into .grad; a gradient that already is the
// slice (accumulated in place) needs no copy.
void DdpState::fill_slot(DdpSlot& s, const Tensor& grad) {
  DdpBucket& b = buckets[s.bucket];
  Tensor dst = slot_view(s);
  if (grad.defined()) {
    if (!is_slot_view(s, grad)) {
      ops::copy_(dst, grad);
      if (opts.gradient_as_bucket_view) s.param.set_grad(dst);
    }
  } else {
    // Unused here: a zero contribution. A .grad still viewing the slice keeps its values in a copy of its own.
    if (Tensor g = s.param.grad(); is_slot_view(s, g)) s.param.set_grad(ops::clone(g));
    ops::zero_(dst);
  }
  s.ready = true;
  --b.pending;
}

// Launches every complete bucket from next_launch on, stopping at the first incomplete one: a bucket never starts
// before its predecessors, so all ranks issue the same collectives in the same order whatever order their hooks ran.
void DdpState::launch_ready() {
  while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
    DdpBucket& b = buckets[next_launch++];
    collectives::AllreduceOptions ao;
    ao.op = collectives::ReduceOp::kAvg;
    ao.rank_ordered = opts.rank_ordered_reduce;
    b.work = group->allreduce(b.flat, ao);
    if (!opts.overlap) timed_wait(*b.work);
  }
}

void DdpState::on_grad(size_t i) {
  DdpSlot& s = slots[i];
  if (awaiting) {
    reset_pass();
    LOOM_THROW(InvalidArgument, "DistributedDataParallel (rank ", group->rank(), " of group '", group->name(),
               "'): a backward pass reached parameter '", s.name,
               "' while the previous pass's all-reduces were still pending (DDPOptions::wait_in_backward = false): "
               "call step(optimizer) or wait_gradients() after each backward");
  }
  if (!sync) {
    s.accumulated = true;  // the local sum stays in .grad until the next synced pass
    return;
  }
  try {
    if (!pass_active) {
      // Runs after the whole graph: handles unused parameters and waits for the buckets, so .grad is final when
      // backward() returns. Weak: a wrapper destroyed mid-pass leaves a no-op.
      autograd::queue_callback([w = weak_from_this()] {
        if (auto st = w.lock()) st->finalize();
      });
      pass_active = true;
    }
    LOOM_CHECK(!s.ready, "DistributedDataParallel: the gradient of parameter '", s.name,
               "' became final twice in one backward pass (was it registered twice?)");
    fill_slot(s, s.param.grad());
    last_hook_ns = collectives::trace_now_ns();
    launch_ready();
  } catch (...) {
    reset_pass();  // the engine unwinds without running finalize: leave no half-done pass behind
    throw;
  }
}

void DdpState::finalize() {
  try {
    // Parameters whose hook did not fire in this pass. Those that accumulated a gradient under no_sync contribute it;
    // the rest are unused on this rank.
    std::vector<size_t> unused;
    bool any_unready = false;
    for (size_t i = 0; i < slots.size(); ++i) {
      DdpSlot& s = slots[i];
      if (s.ready) continue;
      any_unready = true;
      if (!s.accumulated) unused.push_back(i);
    }
    if (!unused.empty() && !opts.find_unused_parameters) {
      std::ostringstream names;
      for (size_t k = 0; k < unused.size(); ++k) names << (k ? ", " : "") << "'" << slots[unused[k]].name << "'";
      LOOM_THROW(InvalidArgument, "DistributedDataParallel (rank ", group->rank(), " of group '", group->name(),
                 "'): ", unused.size(), " parameter(s) of ", module->type_name(),
                 " received no gradient in this backward pass: ", names.str(),
                 ". Every rank must produce a gradient for every parameter before the buckets can be all-reduced; make "
                 "the forward use them, set requires_grad=false on them, or construct DistributedDataParallel with "
                 "DDPOptions::find_unused_parameters = true");
    }
    last_backward_end_ns = any_unready ? collectives::trace_now_ns() : last_hook_ns;
    for (size_t i = 0; i < slots.size(); ++i) {
      DdpSlot& s = slots[i];
      if (s.ready) continue;
      fill_slot(s, s.accumulated ? s.param.grad() : Tensor());  // unused here: a zero contribution
    }
    launch_ready();
    LOOM_CHECK(next_launch == buckets.size(), "DistributedDataParallel: internal error: ", next_launch, " of ",
               buckets.size(), " buckets launched at the end of backward");

    // Which parameters some rank used: the others keep .grad as it was (undefined), as in PyTorch, instead of getting a
    // zero gradient that would still move them through AdamW's moments and weight decay.
    if (opts.find_unused_parameters) {
      used = ops::zeros({static_cast<int64_t>(slots.size())}, DType::i32);
      int32_t* u = used.data<int32_t>();
      for (size_t i = 0; i < slots.size(); ++i) u[i] = std::find(unused.begin(), unused.end(), i) == unused.end();
      // The flags travel on the parameters' device (NCCL takes CUDA tensors only) and come back to the host below.
      used = ops::to(used, slots.front().param.device());
      used_work = group->allreduce(used, {collectives::ReduceOp::kMax});
    }
  } catch (...) {
    reset_pass();
    throw;
  }
  if (!opts.wait_in_backward) {
    awaiting = true;  // step() / wait_gradients() / the next forward's pre-hook runs complete()
    return;
  }
  complete(nullptr);
}

// The averaged gradient of a slot (its range of the bucket, now all-reduced) into .grad.
void DdpState::write_back(DdpSlot& s) {
  Tensor avg = slot_view(s);
  Tensor g = s.param.grad();
  if (is_slot_view(s, g)) {
    g.bump_version();  // the all-reduce wrote it in place
  } else if (g.defined()) {
    ops::copy_(g, avg);
    g.bump_version();
  } else {
    s.param.set_grad(opts.gradient_as_bucket_view ? avg : ops::clone(avg));
  }
}

// Waits for the buckets in launch order; after each, writes its averages into .grad and hands its parameters (those
// that got a gradient) to on_bucket. Ends the pass.
void DdpState::complete(const std::function<void(const std::vector<Tensor>&)>& on_bucket) {
  awaiting = false;
  try {
    if (used_work) {
      timed_wait(*used_work);
      used = ops::to(used, kCPU);
    }
    for (DdpBucket& b : buckets) {
      timed_wait(*b.work);
      b.work.reset();
      std::vector<Tensor> params;
      for (size_t i : b.slots) {
        if (used.defined() && used.data<int32_t>()[i] == 0) continue;  // no rank produced a gradient
        write_back(slots[i]);
        params.push_back(slots[i].param);
      }
      if (on_bucket && !params.empty()) on_bucket(params);
    }
    last_comm_wait_ns = pass_wait_ns;
  } catch (...) {
    reset_pass();
    throw;
  }
  reset_pass();
}

// Waits for this pass's launched collectives, ignoring their errors (the caller is already failing): the worker thread
// must be done with the buffers before they are refilled.
void DdpState::wait_launched_quietly() {
  for (DdpBucket& b : buckets) {
    if (!b.work) continue;
    try {
      b.work->wait();
    } catch (...) {
    }
    b.work.reset();
  }
  if (used_work) {
    try {
      used_work->wait();
    } catch (...) {
    }
    used_work.reset();
  }
}

void DdpState::reset_pass() {
  wait_launched_quietly();
  for (DdpSlot& s : slots) s.ready = s.accumulated = false;
  for (DdpBucket& b : buckets) b.pending = b.slots.size();
  next_launch = 0;
  pass_active = false;
  pass_wait_ns = 0;
  awaiting = false;
  used = Tensor();
  used_work.reset();
}

}  // namespace detail

namespace {

const nn::Module& checked_module(const std::shared_ptr<nn::Module>& m) {
  LOOM_CHECK(m != nullptr, "DistributedDataParallel: the module to wrap is null");
  return *m;
}

// Broadcasts every parameter and buffer from rank 0, one flat buffer per dtype (a few collectives, not one per tensor),
// so all replicas start identical whatever each rank initialised.
void broadcast_state(nn::Module& m, collectives::ProcessGroup& g) {
  std::map<DType, std::vector<Tensor>> by_dtype;
  for (const auto& [name, p] : m.named_parameters()) by_dtype[p.dtype()].push_back(p);
  for (const auto& [name, b] : m.named_buffers()) by_dtype[b.dtype()].push_back(b);
  autograd::NoGradGuard no_grad;
  for (auto& [dtype, tensors] : by_dtype) {
    int64_t total = 0;
    for (const auto& t : tensors) total += t.numel();
    if (total == 0) continue;
    Tensor flat = ops::zeros({total}, dtype, tensors.front().device());
    int64_t off = 0;
    for (const auto& t : tensors) {
      ops::copy_(ops::view(ops::narrow(flat, 0, off, t.numel()), t.sizes()), t);
      off += t.numel();
    }
    g.broadcast(flat, {0})->wait();
    off = 0;
    for (const auto& t : tensors) {
      ops::copy_(t, ops::view(ops::narrow(flat, 0, off, t.numel()), t.sizes()));
      t.bump_version();
      off += t.numel();
    }
  }
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<nn::Module> module,
                                                 std::shared_ptr<collectives::ProcessGroup> group, DDPOptions opts)
    : claim_(checked_module(module), "DistributedDataParallel") {
  LOOM_CHECK(group != nullptr, "DistributedDataParallel: the process group is null");
  LOOM_CHECK(opts.bucket_cap_bytes > 0 && opts.first_bucket_cap_bytes > 0,
             "DistributedDataParallel: bucket caps must be positive, got bucket_cap_bytes=", opts.bucket_cap_bytes,
             " and first_bucket_cap_bytes=", opts.first_bucket_cap_bytes);
  auto st = std::make_shared<detail::DdpState>();
  st->module = std::move(module);
  st->group = std::move(group);
  st->opts = opts;

  broadcast_state(*st->module, *st->group);

  for (const auto& [name, p] : st->module->named_parameters()) {
    if (!p.requires_grad()) continue;
    detail::DdpSlot s;
    s.name = name;
    s.param = p;
    s.numel = p.numel();
    st->slots.push_back(std::move(s));
  }
  // Buckets over the parameters in reverse registration order (roughly the order backward finishes them), one open
  // bucket per dtype; the first bucket closed is small so the first all-reduce starts early.
  std::map<DType, size_t> open;  // dtype -> index of its open bucket
  std::map<DType, int64_t> open_bytes;
  for (size_t k = st->slots.size(); k-- > 0;) {
    detail::DdpSlot& s = st->slots[k];
    const DType dt = s.param.dtype();
    const int64_t bytes = s.numel * static_cast<int64_t>(element_size(dt));
    auto it = open.find(dt);
    if (it != open.end()) {
      const int64_t cap = it->second == 0 ? opts.first_bucket_cap_bytes : opts.bucket_cap_bytes;
      if (open_bytes[dt] > 0 && open_bytes[dt] + bytes > cap) open.erase(it), it = open.end();
    }
    if (it == open.end()) {
      st->buckets.emplace_back();
      st->buckets.back().dtype = dt;
      it = open.emplace(dt, st->buckets.size() - 1).first;
      open_bytes[dt] = 0;
    }
    detail::DdpBucket& b = st->buckets[it->second];
    s.bucket = it->second;
    s.offset = b.numel;
    b.numel += s.numel;
    b.slots.push_back(k);
    open_bytes[dt] += bytes;
  }
  for (auto& b : st->buckets) {
    // On the parameters' device: gradients become views of it, and NCCL reduces it in place.
    b.flat = ops::zeros({b.numel}, b.dtype, st->slots[b.slots.front()].param.device());
    b.pending = b.slots.size();
  }

  std::weak_ptr<detail::DdpState> w = st;
  for (size_t i = 0; i < st->slots.size(); ++i)
    autograd::register_post_accumulate_grad_hook(st->slots[i].param, [w, i](const Tensor&) {
      if (auto s = w.lock()) s->on_grad(i);
    });
  // A backward that threw in another node's code never ran finalize: start the next forward from a clean pass. Not
  // inside a backward pass, where a forward is a recomputation (activation checkpointing) within the pass.
  st->forward_hook = st->module->register_forward_pre_hook([w](nn::Module&) {
    if (autograd::in_backward_pass()) return;
    auto s = w.lock();
    if (!s) return;
    if (s->awaiting) {
      s->reset_pass();
      LOOM_THROW(InvalidArgument, "DistributedDataParallel (rank ", s->group->rank(), " of group '", s->group->name(),
                 "'): forward started while the last backward pass's all-reduces were still pending "
                 "(DDPOptions::wait_in_backward = false): call step(optimizer) or wait_gradients() after backward; "
                 "those gradients were dropped");
    }
    if (s->pass_active) s->reset_pass();
  });
  state_ = std::move(st);
}

DistributedDataParallel::~DistributedDataParallel() {
  if (!state_) return;
  state_->module->remove_hook(state_->forward_hook);
  state_->wait_launched_quietly();
}

nn::Module& DistributedDataParallel::module() { return *state_->module; }
std::shared_ptr<nn::Module> DistributedDataParallel::module_ptr() { return state_->module; }

DistributedDataParallel::NoSync::NoSync(std::shared_ptr<detail::DdpState> st) : st_(std::move(st)) {
  prev_ = st_->sync;
  st_->sync = false;
}

DistributedDataParallel::NoSync::NoSync(NoSync&& o) noexcept : st_(std::move(o.st_)), prev_(o.prev_) {}

DistributedDataParallel::NoSync::~NoSync() {
  if (st_) st_->sync = prev_;
}

DistributedDataParallel::NoSync DistributedDataParallel::no_sync() { return NoSync(state_); }

std::vector<DistributedDataParallel::BucketInfo> DistributedDataParallel::buckets() const {
  std::vector<BucketInfo> out;
  for (const auto& b : state_->buckets) {
    BucketInfo info;
    for (size_t k : b.slots) info.names.push_back(state_->slots[k].name);
    info.bytes = b.numel * static_cast<int64_t>(element_size(b.dtype));
    info.dtype = b.dtype;
    out.push_back(std::move(info));
  }
  return out;
}

void DistributedDataParallel::wait_gradients() {
  if (state_->awaiting) state_->complete(nullptr);
}

void DistributedDataParallel::step(nn::Optimizer& opt) {
  if (!state_->awaiting) {
    opt.step();
    return;
  }
  // Parameters of the optimizer outside the module (none in the usual case) are stepped after the buckets.
  std::unordered_set<const TensorImpl*> stepped;
  state_->complete([&](const std::vector<Tensor>& params) {
    opt.step_params(params);
    for (const auto& p : params) stepped.insert(p.impl_ptr().get());
  });
  std::vector<Tensor> rest;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params)
      if (!stepped.count(p.impl_ptr().get())) rest.push_back(p);
  opt.step_params(rest);
}

int64_t DistributedDataParallel::last_backward_end_ns() const { return state_->last_backward_end_ns; }

int64_t DistributedDataParallel::last_comm_wait_ns() const { return state_->last_comm_wait_ns; }

const collectives::ProcessGroup& DistributedDataParallel::group() const { return *state_->group; }

}  // namespace loom::parallel
