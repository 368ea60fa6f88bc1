// The graph and the engine: SavedTensor, Node sequence numbers, AccumulateGrad,
// grad mode, set_history/record, hooks, and backward()/grad() with dependency
// counts and a ready queue ordered by sequence number (reverse creation order).
#include "autograd/autograd.h"
#include "tensor/trace_events.h"

#include <algorithm>
#include <atomic>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "autograd/functions.h"
#include "tensor/ops.h"
#include "tensor/profiler.h"

namespace loom::autograd {
namespace {

std::atomic<uint64_t> g_next_sequence_nr{0};
thread_local bool t_grad_enabled = true;
// Callbacks of the backward pass running on this thread (null outside one).
thread_local std::vector<std::function<void()>>* t_callbacks = nullptr;

/// Adds g into slot (which may be undefined); out of place, so a gradient that
/// several edges share is never written through.
void accumulate_into(Tensor& slot, const Tensor& g) {
  if (!g.defined()) return;
  if (!slot.defined()) {
    slot = g;
    return;
  }
  slot = ops::add(slot, g);
}

}  // namespace

// ---------------------------------------------------------------- SavedTensor

SavedTensor::SavedTensor(const Tensor& t) {
  if (!t.defined()) return;
  data_ = loom::detach(t);  // shares storage and version counter, no history
  version_counter_ = t.impl().version;
  saved_version_ = *version_counter_;
}

Tensor SavedTensor::unpack(const char* op) const {
  if (!data_.defined()) return Tensor();
  LOOM_CHECK(*version_counter_ == saved_version_, op,
             " backward: one of the tensors needed for gradient computation (shape ", shape_str(data_.sizes()),
             ") has been modified by an in-place operation: it is at version ", *version_counter_,
             " but was saved at version ", saved_version_,
             "; clone it before modifying it in place, or modify it after backward");
  return data_;
}

// ---------------------------------------------------------------- Node

Node::Node() : sequence_nr(g_next_sequence_nr.fetch_add(1, std::memory_order_relaxed)) {}

FunctionNode::FunctionNode(std::string name, BackwardFn fn, int num_outputs)
    : name_(std::move(name)), fn_(std::move(fn)) {
  this->num_outputs = num_outputs;
}

void FunctionNode::set_tensor_meta(const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs) {
  auto describe = [](const Tensor& t) {
    Meta m;
    if (t.defined()) {
      m.defined = true;
      m.sizes = t.sizes();
      m.dtype = t.dtype();
      m.device = t.device();
    }
    return m;
  };
  input_meta_.clear();
  output_meta_.clear();
  for (const auto& t : inputs) input_meta_.push_back(describe(t));
  for (const auto& t : outputs) output_meta_.push_back(describe(t));
}

std::vector<Tensor> FunctionNode::apply(std::vector<Tensor>&& grads) {
  LOOM_CHECK(fn_ != nullptr,
             "Trying to backward through the graph a second time (or to use saved tensors after "
             "they were freed) at node ",
             name_,
             ". Saved tensors are freed when backward() finishes; specify "
             "retain_graph=true on the first backward if you need to backward through the graph again");
  bool any = false;
  for (const auto& g : grads) any = any || g.defined();
  if (!any) return std::vector<Tensor>(next_edges.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined() && i < output_meta_.size() && output_meta_[i].defined) {
      const Meta& m = output_meta_[i];
      grads[i] = ops::zeros(m.sizes, m.dtype, m.device);
    }
  }
  std::vector<Tensor> out = fn_(grads);
  LOOM_CHECK(out.size() == next_edges.size(), name_, " backward returned ", out.size(), " gradients for ",
             next_edges.size(), " inputs");
  for (size_t i = 0; i < out.size() && i < input_meta_.size(); ++i) {
    if (!out[i].defined() || !next_edges[i].valid() || !input_meta_[i].defined) continue;
    LOOM_CHECK(out[i].sizes() == input_meta_[i].sizes, name_, " backward: gradient for input ", i, " has shape ",
               shape_str(out[i].sizes()), " but the input has shape ", shape_str(input_meta_[i].sizes));
    if (out[i].dtype() != input_meta_[i].dtype && is_floating(input_meta_[i].dtype)) {
      out[i] = ops::to(out[i], input_meta_[i].dtype);
    }
  }
  return out;
}

// ---------------------------------------------------------------- AccumulateGrad

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor>&& grads) {
  auto impl = leaf_.lock();
  if (!impl || grads.empty() || !grads[0].defined()) return {};
  Tensor leaf(impl);
  AutogradMeta& m = ensure_meta(leaf);
  Tensor g = std::move(grads[0]);
  for (auto& hook : m.grad_hooks) {
    Tensor r = hook(g);
    if (r.defined()) g = std::move(r);
  }
  LOOM_CHECK(g.sizes() == leaf.sizes(), "AccumulateGrad: gradient of shape ", shape_str(g.sizes()),
             " does not match the parameter", (m.name.empty() ? "" : " '" + m.name + "'"), " of shape ",
             shape_str(leaf.sizes()));
  if (g.dtype() != leaf.dtype()) g = ops::to(g, leaf.dtype());
  if (!m.grad.defined()) {
    // Keep the incoming buffer when nobody else can see it; otherwise copy, so
    // .grad never aliases another tensor (in-place accumulation would leak).
    const bool exclusive = g.impl_ptr().use_count() == 1 && g.storage().use_count() == 1 && g.is_contiguous() &&
                           g.storage_offset() == 0 && g.nbytes() == g.storage()->nbytes();
    m.grad = exclusive ? g : ops::clone(g);
  } else {
    ops::add_(m.grad, g);
    m.grad.bump_version();
  }
  for (auto& hook : m.post_accumulate_hooks) hook(leaf);
  return {};
}

// ---------------------------------------------------------------- meta helpers

AutogradMeta* meta(const Tensor& t) {
  if (!t.defined()) return nullptr;
  return dynamic_cast<AutogradMeta*>(t.impl().autograd_meta.get());
}

AutogradMeta& ensure_meta(const Tensor& t) {
  AutogradMeta* m = meta(t);
  if (m) return *m;
  auto fresh = std::make_shared<AutogradMeta>();
  m = fresh.get();
  t.impl().autograd_meta = std::move(fresh);
  return *m;
}

std::shared_ptr<Node> grad_fn(const Tensor& t) {
  AutogradMeta* m = meta(t);
  return m ? m->grad_fn : nullptr;
}

bool is_leaf(const Tensor& t) { return grad_fn(t) == nullptr; }

namespace {
std::shared_ptr<AccumulateGrad> grad_accumulator(const Tensor& t) {
  AutogradMeta& m = ensure_meta(t);
  auto acc = m.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(std::weak_ptr<TensorImpl>(t.impl_ptr()));
    m.grad_accumulator = acc;
  }
  return acc;
}
}  // namespace

Edge gradient_edge(const Tensor& t) {
  AutogradMeta* m = meta(t);
  if (!m) return {};
  if (m->grad_fn) return Edge{m->grad_fn, m->output_nr};
  if (m->requires_grad) return Edge{grad_accumulator(t), 0};
  return {};
}

// ---------------------------------------------------------------- grad mode

bool grad_mode_enabled() { return t_grad_enabled; }

NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }
EnableGradGuard::EnableGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { t_grad_enabled = prev_; }

// ---------------------------------------------------------------- recording

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return false;
  for (const auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

bool any_requires_grad(std::initializer_list<Tensor> inputs) {
  if (!t_grad_enabled) return false;
  for (const auto& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void set_history(const std::vector<Tensor>& outputs, const std::shared_ptr<Node>& node,
                 const std::vector<Tensor>& inputs) {
  node->next_edges.clear();
  node->next_edges.reserve(inputs.size());
  for (const auto& t : inputs) node->next_edges.push_back(t.defined() ? gradient_edge(t) : Edge{});
  node->num_outputs = static_cast<int>(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined()) continue;
    AutogradMeta& m = ensure_meta(outputs[i]);
    m.grad_fn = node;
    m.output_nr = static_cast<int>(i);
    m.requires_grad = true;
    m.grad_accumulator.reset();
  }
}

void record(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            FunctionNode::BackwardFn fn) {
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, std::move(fn), static_cast<int>(outputs.size()));
  node->set_tensor_meta(inputs, outputs);
  set_history(outputs, node, inputs);
}

// ---------------------------------------------------------------- hooks

void register_hook(const Tensor& t, std::function<Tensor(const Tensor&)> hook) {
  LOOM_CHECK(t.requires_grad(), "register_hook: cannot register a hook on a tensor of shape ", shape_str(t.sizes()),
             " that does not require grad");
  AutogradMeta& m = ensure_meta(t);
  if (m.grad_fn) {
    m.grad_fn->pre_hooks.emplace_back(m.output_nr, std::move(hook));
  } else {
    m.grad_hooks.push_back(std::move(hook));
  }
}

void register_post_accumulate_grad_hook(const Tensor& leaf, std::function<void(const Tensor&)> hook) {
  LOOM_CHECK(leaf.requires_grad() && is_leaf(leaf),
             "register_post_accumulate_grad_hook: expected a leaf tensor that requires grad, got one of shape ",
             shape_str(leaf.sizes()), (leaf.requires_grad() ? " with a grad_fn" : " that does not require grad"));
  ensure_meta(leaf).post_accumulate_hooks.push_back(std::move(hook));
}

// ---------------------------------------------------------------- engine

namespace {

/// Scheduling order: accumulators first (their gradient is final the moment
/// they are ready, so DDP/FSDP hooks fire as early as possible), then larger
/// sequence numbers first (reverse creation order).
struct ReadyOrder {
  bool operator()(const Node* a, const Node* b) const {
    const bool acc_a = dynamic_cast<const AccumulateGrad*>(a) != nullptr;
    const bool acc_b = dynamic_cast<const AccumulateGrad*>(b) != nullptr;
    if (acc_a != acc_b) return acc_b;  // b first when only b is an accumulator
    return a->sequence_nr < b->sequence_nr;
  }
};

struct EdgeKey {
  const Node* node;
  int input_nr;
  bool operator==(const EdgeKey& o) const { return node == o.node && input_nr == o.input_nr; }
};
struct EdgeKeyHash {
  size_t operator()(const EdgeKey& k) const {
    return std::hash<const void*>()(k.node) ^ (std::hash<int>()(k.input_nr) * 0x9e3779b97f4a7c15ull);
  }
};

/// Runs one backward pass. With captures (grad()), only the nodes leading to a
/// captured edge run, accumulators do not run, and captured gradients come back.
std::vector<Tensor> run_engine(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                               bool retain_graph, const std::vector<Tensor>* inputs, const char* api) {
  profiler::Phase phase("backward");
  LOOM_CHECK(!roots.empty(), api, ": no tensors to differentiate");
  LOOM_CHECK(grad_roots.empty() || grad_roots.size() == roots.size(), api, ": got ", grad_roots.size(),
             " gradients for ", roots.size(), " tensors");
  // Root gradients.
  std::vector<Edge> root_edges;
  std::vector<Tensor> root_grads;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    LOOM_CHECK(r.defined(), api, ": element ", i, " of tensors is undefined");
    Edge e = gradient_edge(r);
    LOOM_CHECK(e.valid(), api, ": element ", i, " of tensors (shape ", shape_str(r.sizes()),
               ") does not require grad and does not have a grad_fn; call set_requires_grad() on the leaves "
               "you want gradients for, and do not compute it under NoGradGuard");
    Tensor g = grad_roots.empty() ? Tensor() : grad_roots[i];
    if (!g.defined()) {
      LOOM_CHECK(r.numel() == 1, api, ": grad can be implicitly created only for scalar outputs, but element ", i,
                 " has shape ", shape_str(r.sizes()), "; pass a gradient of that shape");
      g = ops::ones_like(r);
    } else {
      LOOM_CHECK(g.sizes() == r.sizes(), api, ": gradient for element ", i, " has shape ", shape_str(g.sizes()),
                 " but the tensor has shape ", shape_str(r.sizes()));
    }
    root_edges.push_back(e);
    root_grads.push_back(g);
  }

  // Captures for grad().
  std::unordered_map<EdgeKey, size_t, EdgeKeyHash> captures;
  std::vector<Tensor> captured;
  if (inputs) {
    captured.resize(inputs->size());
    for (size_t i = 0; i < inputs->size(); ++i) {
      Edge e = gradient_edge((*inputs)[i]);
      LOOM_CHECK(e.valid(), api, ": input ", i, " (shape ", shape_str((*inputs)[i].sizes()), ") does not require grad");
      captures[EdgeKey{e.fn.get(), e.input_nr}] = i;
    }
  }

  // Discover the graph (iterative DFS, post-order so "needed" is known for children first).
  std::unordered_map<Node*, std::shared_ptr<Node>> nodes;
  std::unordered_map<Node*, bool> needed;
  {
    std::vector<std::pair<Node*, size_t>> stack;
    for (const auto& e : root_edges) {
      if (nodes.emplace(e.fn.get(), e.fn).second) stack.emplace_back(e.fn.get(), 0);
      while (!stack.empty()) {
        auto& [n, child] = stack.back();
        if (child < n->next_edges.size()) {
          const Edge& ne = n->next_edges[child++];
          if (ne.valid() && nodes.emplace(ne.fn.get(), ne.fn).second) stack.emplace_back(ne.fn.get(), 0);
          continue;
        }
        bool need = !inputs;
        if (inputs) {
          for (int k = 0; k < std::max(n->num_outputs, 1) && !need; ++k) need = captures.count(EdgeKey{n, k}) > 0;
          for (const auto& ne : n->next_edges)
            if (ne.valid() && needed[ne.fn.get()]) need = true;
        }
        needed[n] = need;
        stack.pop_back();
      }
    }
  }
  // Dependencies along edges between needed nodes.
  std::unordered_map<Node*, int> deps;
  for (auto& [n, sp] : nodes) {
    if (!needed[n]) continue;
    for (const auto& ne : n->next_edges)
      if (ne.valid() && needed[ne.fn.get()]) ++deps[ne.fn.get()];
  }

  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto buffer_of = [&](Node* n) -> std::vector<Tensor>& {
    auto& b = buffers[n];
    if (b.empty()) b.resize(std::max(n->num_outputs, 1));
    return b;
  };
  for (size_t i = 0; i < root_edges.size(); ++i) {
    Node* n = root_edges[i].fn.get();
    auto& b = buffer_of(n);
    LOOM_CHECK(root_edges[i].input_nr < static_cast<int>(b.size()), api, ": bad output index");
    accumulate_into(b[root_edges[i].input_nr], root_grads[i]);
  }

  std::priority_queue<Node*, std::vector<Node*>, ReadyOrder> ready;
  {
    std::unordered_set<Node*> pushed;
    for (const auto& e : root_edges) {
      Node* n = e.fn.get();
      if (needed[n] && deps[n] == 0 && pushed.insert(n).second) ready.push(n);
    }
  }

  NoGradGuard no_grad;  // backward formulas are not themselves recorded
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    std::vector<Tensor> in = std::move(buffer_of(n));
    buffers.erase(n);
    for (auto& [idx, hook] : n->pre_hooks) {
      if (idx < 0 || idx >= static_cast<int>(in.size()) || !in[idx].defined()) continue;
      Tensor r = hook(in[idx]);
      if (r.defined()) in[idx] = std::move(r);
    }
    bool has_needed_child = !inputs;
    if (inputs) {
      for (size_t k = 0; k < in.size(); ++k) {
        auto it = captures.find(EdgeKey{n, static_cast<int>(k)});
        if (it != captures.end() && in[k].defined()) accumulate_into(captured[it->second], in[k]);
      }
      for (const auto& ne : n->next_edges)
        if (ne.valid() && needed[ne.fn.get()]) has_needed_child = true;
    }
    if (!has_needed_child) continue;  // grad(): a captured node whose inputs lead nowhere needed
    if (n->released()) {
      LOOM_THROW(InvalidArgument, api,
                 ": Trying to backward through the graph a second time (or to use saved "
                 "tensors after they were freed) at node ",
                 n->name(),
                 ". Saved tensors are freed when backward() "
                 "finishes; specify retain_graph=true on the first backward if you need to backward through the "
                 "graph a second time");
    }
    std::vector<Tensor> out;
    if (profiler::active()) [[unlikely]] {
      profiler::Scope scope(n->name());
      out = n->apply(std::move(in));
    } else {
      out = n->apply(std::move(in));
    }
    if (!retain_graph) n->release_saved();
    for (size_t k = 0; k < n->next_edges.size(); ++k) {
      const Edge& ne = n->next_edges[k];
      if (!ne.valid() || !needed[ne.fn.get()]) continue;
      Node* c = ne.fn.get();
      if (k < out.size() && out[k].defined()) {
        auto& b = buffer_of(c);
        LOOM_CHECK(ne.input_nr < static_cast<int>(b.size()), api, ": node ", n->name(), " feeds output ", ne.input_nr,
                   " of ", c->name(), " which has only ", b.size());
        accumulate_into(b[ne.input_nr], out[k]);
      }
      if (--deps[c] == 0) ready.push(c);
    }
  }

  if (inputs) {
    for (size_t i = 0; i < captured.size(); ++i) {
      if (!captured[i].defined()) captured[i] = ops::zeros_like((*inputs)[i]);
    }
  }
  return captured;
}

}  // namespace

/// Runs the engine with a callback queue for this pass; the queue runs when the
/// graph is done. A nested pass (a hook calling backward) has its own queue.
std::vector<Tensor> run_with_callbacks(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                                       bool retain_graph, const std::vector<Tensor>* inputs, const char* api) {
  profiler::Phase phase("backward");  // the end-of-pass callbacks too (DDP's last waits)
  std::vector<std::function<void()>> callbacks;
  auto* outer = t_callbacks;
  t_callbacks = &callbacks;
  struct Restore {
    std::vector<std::function<void()>>* outer;
    ~Restore() { t_callbacks = outer; }
  } restore{outer};
  // The timeline: the whole pass as one span; module backward spans opened by hooks inside it close with it.
  trace::Span span(api, trace::kBackward);
  const size_t open = trace::open_spans();
  auto out = run_engine(roots, grad_roots, retain_graph, inputs, api);
  trace::close_to(open);
  for (size_t i = 0; i < callbacks.size(); ++i) {
    auto fn = std::move(callbacks[i]);  // fn may queue more (callbacks may grow)
    fn();
  }
  return out;
}

void queue_callback(std::function<void()> fn) {
  LOOM_CHECK(t_callbacks != nullptr,
             "queue_callback: no backward pass is running on this thread; call it from a "
             "gradient hook or a module backward hook");
  t_callbacks->push_back(std::move(fn));
}

bool in_backward_pass() { return t_callbacks != nullptr; }

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots, bool retain_graph) {
  run_with_callbacks(roots, grad_roots, retain_graph, nullptr, "backward");
}

namespace detail {
void backward_within_pass(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots) {
  if (t_callbacks == nullptr) {
    run_with_callbacks(roots, grad_roots, false, nullptr, "backward");
    return;
  }
  run_engine(roots, grad_roots, false, nullptr, "backward");
}
}  // namespace detail

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph) {
  LOOM_CHECK(!inputs.empty(), "grad: no inputs to differentiate with respect to");
  return run_with_callbacks(outputs, grad_outputs, retain_graph, &inputs, "grad");
}

}  // namespace loom::autograd

// ---------------------------------------------------------------- Tensor members

namespace loom {

bool Tensor::requires_grad() const {
  auto* m = autograd::meta(*this);
  return m && m->requires_grad;
}

Tensor& Tensor::set_requires_grad(bool value) {
  auto* m = autograd::meta(*this);
  LOOM_CHECK(!(m && m->grad_fn), "set_requires_grad: tensor of shape ", shape_str(sizes()),
             " is not a leaf (it has a grad_fn); you can only change requires_grad of leaf tensors, use detach()");
  LOOM_CHECK(!value || is_floating(dtype()),
             "set_requires_grad: only floating-point tensors can require "
             "gradients, got ",
             dtype_name(dtype()), " of shape ", shape_str(sizes()));
  if (!m && !value) return *this;
  autograd::ensure_meta(*this).requires_grad = value;
  return *this;
}

Tensor Tensor::grad() const {
  auto* m = autograd::meta(*this);
  return m ? m->grad : Tensor();
}

void Tensor::set_grad(const Tensor& g) const {
  LOOM_CHECK(!g.defined() || g.sizes() == sizes(), "set_grad: gradient of shape ", shape_str(g.sizes()),
             " does not match the tensor's shape ", shape_str(sizes()));
  autograd::ensure_meta(*this).grad = g;
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::backward({*this}, gradient.defined() ? std::vector<Tensor>{gradient} : std::vector<Tensor>{}, retain_graph);
}

}  // namespace loom
