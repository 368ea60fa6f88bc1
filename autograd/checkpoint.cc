// checkpoint(): the forward without a graph, and CheckpointNode, whose backward replays the RNG and autocast state,
// reruns the function with grad mode on and backpropagates through the recomputed graph within the running pass.
#include "autograd/checkpoint.h"

#include <memory>
#include <optional>

#include "autograd/autocast.h"
#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace loom::autograd {

namespace {

thread_local int t_recompute_depth = 0;
thread_local detail::SelectiveCache* t_cache = nullptr;

/// Sets the selective cache of this thread for its scope.
class CacheScope {
 public:
  explicit CacheScope(detail::SelectiveCache* c) : prev_(t_cache) { t_cache = c; }
  ~CacheScope() { t_cache = prev_; }
  CacheScope(const CacheScope&) = delete;
  CacheScope& operator=(const CacheScope&) = delete;

 private:
  detail::SelectiveCache* prev_;
};

using RngStates = std::vector<std::pair<Generator*, std::pair<uint64_t, uint64_t>>>;

/// Sets each generator to the given state for its scope, and back to the state it had before, after.
class RngReplay {
 public:
  explicit RngReplay(const RngStates& states) {
    for (const auto& [g, st] : states) {
      saved_.push_back({g, {g->seed(), g->offset()}});
      g->set_state(st.first, st.second);
    }
  }
  ~RngReplay() {
    for (const auto& [g, st] : saved_) g->set_state(st.first, st.second);
  }
  RngReplay(const RngReplay&) = delete;
  RngReplay& operator=(const RngReplay&) = delete;

 private:
  RngStates saved_;
};

struct RecomputeScope {
  RecomputeScope() { ++t_recompute_depth; }
  ~RecomputeScope() { --t_recompute_depth; }
};

struct OutputMeta {
  Shape sizes;
  DType dtype = DType::f32;
  bool defined = false;
};

class CheckpointNode : public Node {
 public:
  CheckpointNode(CheckpointFunction fn, const std::vector<Tensor>& inputs, CheckpointOptions opts, RngStates rng,
                 bool autocast_on, DType autocast_dt, std::unique_ptr<detail::SelectiveCache> cache,
                 const std::vector<Tensor>& outputs)
      : fn_(std::move(fn)),
        opts_(std::move(opts)),
        rng_(std::move(rng)),
        autocast_on_(autocast_on),
        autocast_dt_(autocast_dt),
        cache_(std::move(cache)) {
    for (const auto& t : inputs) {
      inputs_.emplace_back(t);
      input_requires_grad_.push_back(t.defined() && t.requires_grad());
    }
    for (const auto& t : outputs) {
      OutputMeta m;
      if (t.defined()) m = {t.sizes(), t.dtype(), true};
      outputs_.push_back(m);
    }
  }

  std::string name() const override { return "CheckpointBackward"; }
  void release_saved() override {
    fn_ = nullptr;
    inputs_.clear();
    cache_.reset();
  }
  bool released() const override { return !fn_; }

  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override {
    const char* op = "checkpoint";
    LOOM_CHECK(fn_ != nullptr, op, " (", opts_.name,
               "): backward through a checkpointed region a second time; its inputs were freed after the first "
               "backward (pass retain_graph=true to keep them)");
    std::vector<Tensor> detached;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      Tensor t = inputs_[i].unpack(op);
      if (t.defined()) {
        t = loom::detach(t);
        if (input_requires_grad_[i]) t.set_requires_grad(true);
      }
      detached.push_back(t);
    }
    std::vector<Tensor> outs;
    {
      RngReplay replay(opts_.preserve_rng_state ? rng_ : RngStates{});
      AutocastGuard autocast(autocast_dt_, autocast_on_);
      EnableGradGuard grad_on;
      RecomputeScope recompute;
      if (cache_) {
        cache_->replaying_ = true;
        cache_->next = 0;
      }
      CacheScope scope(cache_.get());
      outs = fn_(detached);
      if (cache_)
        LOOM_CHECK(cache_->next == cache_->entries.size(), op, " (", opts_.name, "): the recompute replayed ",
                   cache_->next, " of the ", cache_->entries.size(),
                   " op outputs the selective mode kept in forward; the function must run the same ops in "
                   "backward as in forward");
    }
    LOOM_CHECK(outs.size() == outputs_.size(), op, " (", opts_.name, "): the recompute returned ", outs.size(),
               " outputs but the forward returned ", outputs_.size(),
               "; a checkpointed function must compute the same thing in backward as in forward");
    std::vector<Tensor> roots, root_grads;
    for (size_t i = 0; i < outs.size(); ++i) {
      const OutputMeta& m = outputs_[i];
      LOOM_CHECK(
          outs[i].defined() == m.defined && (!m.defined || (outs[i].sizes() == m.sizes && outs[i].dtype() == m.dtype)),
          op, " (", opts_.name, "): output ", i, " of the recompute is ",
          outs[i].defined() ? shape_str(outs[i].sizes()) + " " + dtype_name(outs[i].dtype()) : "undefined", " but was ",
          m.defined ? shape_str(m.sizes) + " " + dtype_name(m.dtype) : "undefined",
          " in forward; a checkpointed function must compute the same thing in backward as in forward");
      if (i < grads.size() && grads[i].defined() && outs[i].defined() && outs[i].requires_grad()) {
        roots.push_back(outs[i]);
        root_grads.push_back(grads[i]);
      }
    }
    std::vector<Tensor> result(detached.size());
    if (roots.empty()) return result;
    detail::backward_within_pass(roots, root_grads);
    for (size_t i = 0; i < detached.size(); ++i)
      if (input_requires_grad_[i]) result[i] = detached[i].grad();
    return result;
  }

 private:
  CheckpointFunction fn_;
  CheckpointOptions opts_;
  RngStates rng_;
  bool autocast_on_;
  DType autocast_dt_;
  std::unique_ptr<detail::SelectiveCache> cache_;
  std::vector<SavedTensor> inputs_;
  std::vector<bool> input_requires_grad_;
  std::vector<OutputMeta> outputs_;
};

}  // namespace

const char* checkpoint_mode_name(CheckpointMode mode) {
  switch (mode) {
    case CheckpointMode::kNone:
      return "none";
    case CheckpointMode::kFull:
      return "full";
    case CheckpointMode::kSelective:
      return "selective";
  }
  return "?";
}

std::vector<Tensor> checkpoint(const CheckpointFunction& fn, const std::vector<Tensor>& inputs,
                               const CheckpointOptions& opts) {
  LOOM_CHECK(fn != nullptr, "checkpoint (", opts.name, "): the function is empty");
  if (!grad_mode_enabled() || opts.mode == CheckpointMode::kNone) return fn(inputs);
  std::unique_ptr<detail::SelectiveCache> cache;
  if (opts.mode == CheckpointMode::kSelective) {
    cache = std::make_unique<detail::SelectiveCache>();
    cache->region = opts.name;
  }
  std::vector<Tensor> outs;
  RngStates rng;
  {
    loom::detail::RngTracker tracker;
    NoGradGuard no_grad;
    CacheScope scope(cache.get());
    outs = fn(inputs);
    rng = tracker.states();
  }
  // Fresh handles: an output may be an input itself (an identity), whose history must stay.
  for (auto& o : outs)
    if (o.defined()) o = loom::detach(o);
  auto node = std::make_shared<CheckpointNode>(fn, inputs, opts, std::move(rng), autocast_enabled(), autocast_dtype(),
                                               std::move(cache), outs);
  set_history(outs, node, inputs);
  return outs;
}

bool in_checkpoint_recompute() { return t_recompute_depth > 0; }

namespace detail {

SelectiveCache* selective_cache() { return t_cache; }

void SelectiveCache::save(const char* op, const std::vector<Tensor>& outputs) {
  Entry e;
  e.op = op;
  for (const auto& t : outputs) e.outputs.push_back(loom::detach(t));
  entries.push_back(std::move(e));
}

std::vector<Tensor> SelectiveCache::replay(const char* op) {
  LOOM_CHECK(next < entries.size() && entries[next].op == op, "checkpoint (", region, "): selective recompute runs ",
             op, " as kept op ", next, " but the forward kept ",
             next < entries.size() ? entries[next].op : std::string("only ") + std::to_string(entries.size()) + " ops",
             " there; the function must run the same ops in backward as in forward");
  return entries[next++].outputs;
}

}  // namespace detail

}  // namespace loom::autograd
