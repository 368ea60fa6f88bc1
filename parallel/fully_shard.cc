// FullyShard's construction (units, ownership of tied and shared parameters, flat groups, shards, re-pointing the
// parameters into the full storages, hooks) and its API: optimizer groups, clipping across shards, full and sharded
// state dicts. The runtime the hooks drive is in flat_param.cc.
//
// Layout: each unit's parameters are split into flat groups (decay: >= 2-D, no-decay), so param_groups() can reproduce
// nn::weight_decay_groups. A flat group of N elements is padded to P (a multiple of the world size W); rank r owns
// elements [r P/W, (r+1) P/W) as a 1-D f32 leaf (the shard). The original parameter tensors are re-pointed in place to
// views of one "full" Storage per group (param_dtype), which holds 0 bytes while resharded.
#include "parallel/fully_shard.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "parallel/flat_param.h"
#include "tensor/ops.h"

namespace loom::parallel {

using detail::FlatGroup;
using detail::FsdpState;
using detail::GatherState;
using detail::ParamSlot;

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out;
}

/// Points every handle of t at src's storage and layout (as Module::to does).
void repoint(const Tensor& t, const std::shared_ptr<Storage>& storage, const Shape& sizes, int64_t offset,
             DType dtype) {
  TensorImpl& impl = t.impl();
  impl.storage = storage;
  impl.sizes = sizes;
  impl.strides = contiguous_strides(sizes);
  impl.offset = offset;
  impl.dtype = dtype;
  t.bump_version();
}

/// Sum of squares (or max |x| when inf) of a tensor, accumulated in f64.
double reduce_norm(const Tensor& t, bool inf) {
  if (t.numel() == 0) return 0.0;
  if (t.device().is_cpu() && t.is_contiguous() && t.dtype() == DType::f32) {
    const float* p = t.data<float>();
    const int64_t n = t.numel();
    double acc = 0.0;
    if (inf) {
      for (int64_t i = 0; i < n; ++i) acc = std::max(acc, std::fabs(static_cast<double>(p[i])));
    } else {
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    }
    return acc;
  }
  if (inf) return ops::max(ops::abs(t)).item();
  const double n = ops::norm(t).item();
  return n * n;
}

std::vector<std::shared_ptr<nn::Module>> causal_lm_units(const nn::CausalLM& model) {
  std::vector<std::shared_ptr<nn::Module>> out;
  for (const auto& b : model.blocks()) out.push_back(b);
  return out;
}

/// Parameters reachable from m without entering a unit.
void collect_outside(const nn::Module& m, const std::unordered_set<const nn::Module*>& units,
                     std::unordered_set<const TensorImpl*>& out) {
  for (const auto& [n, p] : m.named_parameters(false)) out.insert(p.impl_ptr().get());
  for (const auto& [n, c] : m.named_children())
    if (!units.count(c.get())) collect_outside(*c, units, out);
}

}  // namespace

FullyShard::FullyShard(std::shared_ptr<nn::CausalLM> model, std::shared_ptr<collectives::ProcessGroup> group,
                       FullyShardOptions opts)
    : FullyShard(model, model ? causal_lm_units(*model) : std::vector<std::shared_ptr<nn::Module>>{}, std::move(group),
                 opts) {}

FullyShard::FullyShard(std::shared_ptr<nn::Module> root, std::vector<std::shared_ptr<nn::Module>> units,
                       std::shared_ptr<collectives::ProcessGroup> group, FullyShardOptions opts) {
  LOOM_CHECK(root != nullptr, "FullyShard: the root module is null");
  LOOM_CHECK(group != nullptr, "FullyShard: the process group is null");
  const DType pdt = opts.mixed_precision.param_dtype, rdt = opts.mixed_precision.reduce_dtype;
  LOOM_CHECK(is_floating(pdt) && is_floating(rdt), "FullyShard: mixed_precision dtypes must be floating, got param ",
             dtype_name(pdt), " and reduce ", dtype_name(rdt));

  // Units: inside the root, distinct, not the root, not nested.
  std::unordered_map<const nn::Module*, std::string> module_names;
  for (auto& [name, m] : root->named_modules()) module_names.emplace(m, name);
  std::unordered_set<const nn::Module*> unit_set;
  for (size_t i = 0; i < units.size(); ++i) {
    const auto& u = units[i];
    LOOM_CHECK(u != nullptr, "FullyShard: unit ", i, " is null");
    LOOM_CHECK(u.get() != root.get(), "FullyShard: unit ", i, " (", u->type_name(),
               ") is the root module itself; list only its submodules as units");
    LOOM_CHECK(module_names.count(u.get()), "FullyShard: unit ", i, " (", u->type_name(),
               ") is not a submodule of the root ", root->type_name(),
               "; units must be modules inside the wrapped model");
    LOOM_CHECK(unit_set.insert(u.get()).second, "FullyShard: unit ", i, " ('", module_names[u.get()],
               "') is listed twice");
  }
  for (const auto& u : units)
    for (auto& [name, m] : u->named_modules())
      LOOM_CHECK(m == u.get() || !unit_set.count(m), "FullyShard: unit '", module_names[m], "' is nested inside unit '",
                 module_names[u.get()], "'; units must not contain each other");

  // Claim before changing anything, so a second wrap fails with the model intact.
  claim_ = WrapClaim(*root, "FullyShard");

  auto st = std::make_shared<FsdpState>();
  st->root = root;
  st->unit_modules = units;
  st->pg = group;
  if (opts.replicate_group) {
    LOOM_CHECK(opts.replicate_group != group,
               "FullyShard: replicate_group is the shard group itself; pass the group of "
               "ranks holding the same shard (DeviceMesh::group(\"dp\")) or none");
    if (opts.replicate_group->size() > 1) st->replicate = opts.replicate_group;
  }
  st->opts = opts;
  st->rank = group->rank();
  st->world = group->size();

  const nn::NamedTensors named = root->named_parameters();
  LOOM_CHECK(!named.empty(), "FullyShard: ", root->type_name(), " has no parameters to shard");
  st->compute = named.front().second.device();
  st->shard_device = opts.cpu_offload ? kCPU : st->compute;
  for (const auto& [name, p] : named) {
    LOOM_CHECK(p.requires_grad(), "FullyShard: parameter '", name,
               "' does not require grad; frozen parameters are not supported "
               "(leave them out of the wrapped model)");
    LOOM_CHECK(is_floating(p.dtype()), "FullyShard: parameter '", name, "' has dtype ", dtype_name(p.dtype()),
               "; only floating parameters can be sharded");
    LOOM_CHECK(p.device() == st->compute, "FullyShard: parameter '", name, "' is on ", p.device().str(),
               " but the first parameter is on ", st->compute.str(), "; move the model to one device first");
  }

  // Owner unit of every parameter: the one unit that holds it, else the root.
  std::unordered_map<const TensorImpl*, size_t> holders;  // impl -> unit index, kNone when shared
  for (size_t i = 0; i < units.size(); ++i)
    for (const auto& [n, p] : units[i]->named_parameters()) {
      auto [it, fresh] = holders.emplace(p.impl_ptr().get(), i);
      if (!fresh) it->second = detail::kNone;
    }
  std::unordered_set<const TensorImpl*> outside;
  collect_outside(*root, unit_set, outside);
  const size_t root_index = units.size();
  auto owner = [&](const Tensor& p) {
    auto it = holders.find(p.impl_ptr().get());
    if (it == holders.end() || it->second == detail::kNone || outside.count(p.impl_ptr().get())) return root_index;
    return it->second;
  };

  st->units.resize(units.size() + 1);
  for (size_t i = 0; i < units.size(); ++i) {
    st->units[i].name = module_names[units[i].get()];
    st->units[i].module = units[i].get();
  }
  st->units[root_index].name = "root";
  st->units[root_index].module = root.get();
  st->units[root_index].is_root = true;

  // State-dict keys (taken before re-pointing, matched by storage and offset).
  std::map<std::tuple<const Storage*, int64_t, Shape>, std::pair<size_t, size_t>> param_at;

  // Flat groups per unit (decay, then no-decay), parameters in named order.
  const int W = st->world;
  for (size_t u = 0; u <= units.size(); ++u) {
    for (bool decay : {true, false}) {
      FlatGroup g;
      g.unit = u;
      g.decay = decay;
      for (const auto& [name, p] : named) {
        if (owner(p) != u || (p.dim() >= 2) != decay) continue;
        ParamSlot s;
        s.name = name;
        s.param = p;
        s.shape = p.sizes();
        s.offset = g.numel;
        s.numel = p.numel();
        g.numel += s.numel;
        g.params.push_back(std::move(s));
      }
      if (g.params.empty()) continue;
      g.padded = (g.numel + W - 1) / W * W;
      g.shard_numel = g.padded / W;
      st->units[u].groups.push_back(st->groups.size());
      st->groups.push_back(std::move(g));
    }
  }
  for (size_t gi = 0; gi < st->groups.size(); ++gi)
    for (size_t si = 0; si < st->groups[gi].params.size(); ++si) {
      const Tensor& p = st->groups[gi].params[si].param;
      param_at[{p.storage().get(), p.storage_offset(), p.sizes()}] = {gi, si};
    }
  {
    nn::NamedTensors buffers = root->named_buffers();
    for (const auto& [key, t] : root->state_dict()) {
      detail::StateKey k;
      k.key = key;
      auto it = param_at.find({t.storage().get(), t.storage_offset(), t.sizes()});
      if (it != param_at.end()) {
        k.group = it->second.first;
        k.slot = it->second.second;
      } else {
        for (const auto& [bn, b] : buffers)
          if (b.storage() == t.storage() && b.storage_offset() == t.storage_offset() && b.sizes() == t.sizes())
            k.buffer = b;
        LOOM_CHECK(k.buffer.defined(), "FullyShard: state_dict key '", key, "' is neither a parameter nor a buffer");
      }
      st->state_keys.push_back(std::move(k));
    }
  }

  // Shards from the original values (f32, before any cast to param_dtype), then re-point the parameters into the
  // (empty) full storage: the original storages go.
  {
    autograd::NoGradGuard no_grad;
    for (auto& g : st->groups) {
      Tensor shard = ops::zeros({g.shard_numel}, DType::f32, st->shard_device);
      for (const auto& s : g.params) {
        auto r = g.local_range(s, st->rank);
        if (!r) continue;
        Tensor src = ops::reshape(ops::contiguous(s.param), {s.numel});
        src = ops::to(ops::to(ops::narrow(src, 0, r->lo, r->hi - r->lo), DType::f32), st->shard_device);
        ops::copy_(ops::narrow(shard, 0, r->shard_off, r->hi - r->lo), src);
      }
      shard.set_requires_grad(true);
      g.shard = shard;
      g.full = std::make_shared<Storage>(0, st->compute);
      for (const auto& s : g.params) {
        if (auto* m = autograd::meta(s.param)) m->grad = Tensor();
        repoint(s.param, g.full, s.shape, s.offset, pdt);
      }
    }
    // Floating buffers (e.g. RoPE tables) compute in param_dtype alongside the parameters.
    for (auto& [name, b] : root->named_buffers())
      if (is_floating(b.dtype()) && b.dtype() != pdt) {
        Tensor c = ops::to(b, pdt);
        repoint(b, c.storage(), c.sizes(), c.storage_offset(), pdt);
      }
  }

  st->timeline.resize(st->units.size());
  for (size_t u = 0; u < st->units.size(); ++u) st->timeline[u].name = st->units[u].name;

  // Hooks hold the state weakly: a destroyed wrapper leaves harmless no-ops behind.
  std::weak_ptr<FsdpState> w = st;
  for (size_t u = 0; u < st->units.size(); ++u) {
    nn::Module* m = st->units[u].module;
    st->hooks.emplace_back(m, m->register_forward_pre_hook([w, u](nn::Module&) {
      if (auto s = w.lock()) s->pre_forward(u);
    }));
    st->hooks.emplace_back(m, m->register_forward_hook([w, u](nn::Module&) {
      if (auto s = w.lock()) s->post_forward(u);
    }));
    st->hooks.emplace_back(m, m->register_backward_pre_hook([w, u](nn::Module&) {
      if (auto s = w.lock()) s->pre_backward(u);
    }));
  }
  for (size_t gi = 0; gi < st->groups.size(); ++gi)
    for (size_t si = 0; si < st->groups[gi].params.size(); ++si)
      autograd::register_post_accumulate_grad_hook(st->groups[gi].params[si].param, [w, gi, si](const Tensor&) {
        if (auto s = w.lock()) s->on_grad(gi, si);
      });
  state_ = std::move(st);
}

FullyShard::~FullyShard() {
  if (!state_) return;
  try {
    for (auto& [m, h] : state_->hooks) m->remove_hook(h);
    state_->reshard_all();
  } catch (...) {
    // A failed collective already reported itself; a destructor must not throw.
  }
}

nn::Module& FullyShard::module() { return *state_->root; }

std::vector<Tensor> FullyShard::parameters() const {
  std::vector<Tensor> out;
  for (const auto& g : state_->groups) out.push_back(g.shard);
  return out;
}

std::vector<nn::ParamGroup> FullyShard::param_groups(double lr, double weight_decay) const {
  nn::ParamGroup decay{{}, lr, weight_decay}, no_decay{{}, lr, 0.0};
  for (const auto& g : state_->groups) (g.decay ? decay : no_decay).params.push_back(g.shard);
  std::vector<nn::ParamGroup> out;
  if (!decay.params.empty()) out.push_back(std::move(decay));
  if (!no_decay.params.empty()) out.push_back(std::move(no_decay));
  return out;
}

double FullyShard::clip_grad_norm_(double max_norm, double norm_type,
                                   std::shared_ptr<collectives::ProcessGroup> tp_group) {
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  LOOM_CHECK(inf || norm_type == 2.0, "FullyShard.clip_grad_norm_: norm_type must be 2 or infinity, got ", norm_type);
  LOOM_CHECK(max_norm >= 0.0, "FullyShard.clip_grad_norm_: max_norm must be non-negative, got ", max_norm);
  auto& st = *state_;
  const int tp_size = tp_group ? tp_group->size() : 1;
  double local = 0.0;
  for (const auto& g : st.groups) {
    Tensor grad = g.shard.grad();
    if (!grad.defined()) continue;
    grad = ops::contiguous(grad);
    if (tp_size == 1 || inf) {
      const double r = reduce_norm(grad, inf);
      local = inf ? std::max(local, r) : local + r;
      continue;
    }
    // Replicated parameters appear on every tp rank: weight them 1/tp so they count once.
    for (const auto& s : g.params) {
      auto r = g.local_range(s, st.rank);
      if (!r) continue;
      const double w = tp_placement(s.param) ? 1.0 : 1.0 / tp_size;
      local += w * reduce_norm(ops::narrow(grad, 0, r->shard_off, r->hi - r->lo), false);
    }
  }
  const auto op = inf ? collectives::ReduceOp::kMax : collectives::ReduceOp::kSum;
  Tensor t = ops::full({1}, local, DType::f64, st.compute);  // on the compute device: NCCL groups need it there
  st.pg->allreduce(t, {op})->wait();
  if (tp_group) tp_group->allreduce(t, {op})->wait();
  const double total = inf ? t.item<double>() : std::sqrt(t.item<double>());
  std::vector<Tensor> shards;
  for (const auto& g : st.groups) shards.push_back(g.shard);
  nn::clip_grads_with_norm_(shards, max_norm, total);
  return total;
}

void FullyShard::zero_grad() {
  for (auto& g : state_->groups) {
    if (auto* m = autograd::meta(g.shard)) m->grad = Tensor();
    for (auto& s : g.params)
      if (auto* m = autograd::meta(s.param)) m->grad = Tensor();
  }
}

nn::StateDict FullyShard::full_state_dict(bool rank0_only) {
  auto& st = *state_;
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> full(st.groups.size());
  for (size_t gi = 0; gi < st.groups.size(); ++gi) {
    const FlatGroup& g = st.groups[gi];
    Tensor in = ops::to(loom::detach(g.shard), st.compute);
    Tensor out = empty({g.padded}, DType::f32, st.compute);
    st.pg->all_gather(out, in)->wait();
    full[gi] = ops::to(out, kCPU);
  }
  nn::StateDict dict;
  if (rank0_only && st.rank != 0) return dict;
  for (const auto& k : st.state_keys) {
    if (k.group != detail::kNone) {
      const ParamSlot& s = st.groups[k.group].params[k.slot];
      dict.insert(k.key, ops::clone(ops::view(ops::narrow(full[k.group], 0, s.offset, s.numel), s.shape)));
    } else {
      Tensor b = ops::to(k.buffer, kCPU);
      if (is_floating(b.dtype())) b = ops::to(b, DType::f32);
      dict.insert(k.key, ops::clone(b));
    }
  }
  return dict;
}

void FullyShard::load_full_state_dict(const nn::StateDict& full) {
  auto& st = *state_;
  std::vector<std::string> missing, unexpected;
  std::unordered_set<std::string> own;
  for (const auto& k : st.state_keys) {
    own.insert(k.key);
    if (!full.contains(k.key)) missing.push_back(k.key);
  }
  for (const auto& [key, t] : full)
    if (!own.count(key)) unexpected.push_back(key);
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg;
    if (!missing.empty()) msg += "missing keys: [" + join(missing) + "]";
    if (!unexpected.empty())
      msg += std::string(msg.empty() ? "" : "; ") + "unexpected keys: [" + join(unexpected) + "]";
    LOOM_THROW(InvalidArgument, "FullyShard.load_full_state_dict (", st.root->type_name(), ", rank ", st.rank,
               "): ", msg,
               "; pass the dict full_state_dict(false) gives for the same "
               "architecture");
  }
  for (const auto& k : st.state_keys) {
    const Tensor& v = full.at(k.key);
    LOOM_CHECK(v.defined(), "FullyShard.load_full_state_dict: value for '", k.key, "' is an undefined tensor");
    const Shape& want = k.group != detail::kNone ? st.groups[k.group].params[k.slot].shape : k.buffer.sizes();
    LOOM_CHECK(v.sizes() == want, "FullyShard.load_full_state_dict: size mismatch for '", k.key,
               "': the dict has shape ", shape_str(v.sizes()), ", the module has shape ", shape_str(want));
  }
  st.reshard_all();  // full copies (if any) would be stale
  autograd::NoGradGuard no_grad;
  std::vector<std::vector<bool>> loaded(st.groups.size());
  for (size_t gi = 0; gi < st.groups.size(); ++gi) loaded[gi].assign(st.groups[gi].params.size(), false);
  for (const auto& k : st.state_keys) {
    const Tensor& v = full.at(k.key);
    if (k.group == detail::kNone) {
      ops::copy_(k.buffer, ops::to(v, k.buffer.device()));
      k.buffer.bump_version();
      continue;
    }
    if (loaded[k.group][k.slot]) continue;  // a tied weight: its first name wins
    loaded[k.group][k.slot] = true;
    FlatGroup& g = st.groups[k.group];
    const ParamSlot& s = g.params[k.slot];
    auto r = g.local_range(s, st.rank);
    if (!r) continue;
    Tensor src = ops::reshape(ops::contiguous(v), {s.numel});
    src = ops::to(ops::to(ops::narrow(src, 0, r->lo, r->hi - r->lo), DType::f32), st.shard_device);
    ops::copy_(ops::narrow(g.shard, 0, r->shard_off, r->hi - r->lo), src);
    g.shard.bump_version();
  }
}

std::vector<ShardedTensor> FullyShard::sharded_state_dict() const {
  std::vector<ShardedTensor> out;
  for (size_t gi = 0; gi < state_->groups.size(); ++gi) {
    auto pieces = shard_pieces(gi, state_->groups[gi].shard);
    for (auto& p : pieces) out.push_back(std::move(p));
  }
  return out;
}

std::vector<ShardedTensor> FullyShard::shard_pieces(size_t param_index, const Tensor& shard_like) const {
  const auto& st = *state_;
  LOOM_CHECK(param_index < st.groups.size(), "FullyShard.shard_pieces: param_index ", param_index,
             " is out of range; there are ", st.groups.size(), " flat parameters");
  const FlatGroup& g = st.groups[param_index];
  LOOM_CHECK(shard_like.defined() && shard_like.numel() == g.shard_numel && shard_like.is_contiguous(),
             "FullyShard.shard_pieces: parameter ", param_index, " has a shard of ", g.shard_numel,
             " elements; got a tensor of shape ", shard_like.defined() ? shape_str(shard_like.sizes()) : "(undefined)",
             " (it must be contiguous with as many elements)");
  Tensor flat = ops::view(loom::detach(shard_like), {g.shard_numel});
  std::vector<ShardedTensor> out;
  for (const auto& s : g.params) {
    auto r = g.local_range(s, st.rank);
    if (!r) continue;
    ShardedTensor t;
    t.name = s.name;
    t.shape = s.shape;
    t.flat_begin = r->lo;
    t.flat_end = r->hi;
    t.local = ops::narrow(flat, 0, r->shard_off, r->hi - r->lo);
    t.tp = tp_placement(s.param);
    out.push_back(std::move(t));
  }
  return out;
}

void FullyShard::load_sharded_state_dict(const std::vector<ShardedTensor>& pieces) {
  auto& st = *state_;
  std::unordered_map<std::string, std::pair<size_t, size_t>> by_name;
  for (size_t gi = 0; gi < st.groups.size(); ++gi)
    for (size_t si = 0; si < st.groups[gi].params.size(); ++si) by_name[st.groups[gi].params[si].name] = {gi, si};
  // Validate everything and count coverage before writing anything.
  std::map<std::pair<size_t, size_t>, int64_t> covered;
  for (const auto& p : pieces) {
    auto it = by_name.find(p.name);
    LOOM_CHECK(it != by_name.end(), "FullyShard.load_sharded_state_dict: '", p.name, "' is not a parameter of ",
               st.root->type_name());
    const FlatGroup& g = st.groups[it->second.first];
    const ParamSlot& s = g.params[it->second.second];
    LOOM_CHECK(p.shape == s.shape, "FullyShard.load_sharded_state_dict: size mismatch for '", p.name,
               "': the piece has shape ", shape_str(p.shape), ", the module has shape ", shape_str(s.shape));
    LOOM_CHECK(p.flat_begin >= 0 && p.flat_begin <= p.flat_end && p.flat_end <= s.numel && p.local.defined() &&
                   p.local.numel() == p.flat_end - p.flat_begin,
               "FullyShard.load_sharded_state_dict: the piece of '", p.name, "' covers [", p.flat_begin, ", ",
               p.flat_end, ") of ", s.numel, " elements with a local tensor of ",
               p.local.defined() ? p.local.numel() : 0, " elements");
    auto r = g.local_range(s, st.rank);
    if (!r) continue;
    covered[it->second] += std::max<int64_t>(0, std::min(p.flat_end, r->hi) - std::max(p.flat_begin, r->lo));
  }
  std::vector<std::string> uncovered;
  for (size_t gi = 0; gi < st.groups.size(); ++gi)
    for (size_t si = 0; si < st.groups[gi].params.size(); ++si) {
      const auto& g = st.groups[gi];
      auto r = g.local_range(g.params[si], st.rank);
      if (r && covered[{gi, si}] != r->hi - r->lo)
        uncovered.push_back(g.params[si].name + " (" + std::to_string(covered[{gi, si}]) + " of " +
                            std::to_string(r->hi - r->lo) + " local elements)");
    }
  LOOM_CHECK(uncovered.empty(), "FullyShard.load_sharded_state_dict (rank ", st.rank,
             "): the pieces do not cover this rank's shard of: ", join(uncovered),
             "; pass every piece that overlaps it (pieces must not overlap "
             "each other)");
  st.reshard_all();
  autograd::NoGradGuard no_grad;
  for (const auto& p : pieces) {
    auto [gi, si] = by_name.at(p.name);
    FlatGroup& g = st.groups[gi];
    auto r = g.local_range(g.params[si], st.rank);
    if (!r) continue;
    const int64_t lo = std::max(p.flat_begin, r->lo), hi = std::min(p.flat_end, r->hi);
    if (lo >= hi) continue;
    Tensor src = ops::reshape(ops::contiguous(p.local), {p.local.numel()});
    src = ops::to(ops::to(ops::narrow(src, 0, lo - p.flat_begin, hi - lo), DType::f32), st.shard_device);
    ops::copy_(ops::narrow(g.shard, 0, r->shard_off + (lo - r->lo), hi - lo), src);
    g.shard.bump_version();
  }
}

const std::vector<FullyShard::UnitTime>& FullyShard::forward_timeline() const { return state_->timeline; }

size_t FullyShard::num_units() const { return state_->units.size(); }

int64_t FullyShard::unit_full_bytes(size_t unit) const {
  LOOM_CHECK(unit < state_->units.size(), "FullyShard.unit_full_bytes: unit ", unit, " is out of range; there are ",
             state_->units.size());
  int64_t bytes = 0;
  for (size_t gi : state_->units[unit].groups)
    bytes += state_->groups[gi].padded * static_cast<int64_t>(element_size(state_->pdt()));
  return bytes;
}

const std::string& FullyShard::unit_name(size_t unit) const {
  LOOM_CHECK(unit < state_->units.size(), "FullyShard.unit_name: unit ", unit, " is out of range; there are ",
             state_->units.size());
  return state_->units[unit].name;
}

}  // namespace loom::parallel
