// The define-by-run graph: per-tensor AutogradMeta, Node with its edges, the
// engine that runs a backward pass in reverse topological order with
// dependency counts, grad mode, and the hooks parallel wrappers attach to.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace loom::autograd {

class Node;

/// Where a gradient flows: input `input_nr` of node `fn`.
struct Edge {
  std::shared_ptr<Node> fn;
  int input_nr = 0;
  bool valid() const { return fn != nullptr; }
};

/// A tensor saved for backward: shares storage but holds no autograd history
/// (no reference cycles), and remembers the version it was saved at so an
/// in-place change before backward is an error, not a wrong gradient.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t);  // NOLINT
  /// The saved tensor; throws naming `op` if it was modified in place since.
  Tensor unpack(const char* op) const;
  bool defined() const { return data_.defined(); }

 private:
  Tensor data_;
  int64_t saved_version_ = 0;
  std::shared_ptr<int64_t> version_counter_;
};

/// One recorded operation. apply() maps the gradients of its outputs to the
/// gradients of its inputs (an undefined Tensor means zero / not needed).
class Node : public std::enable_shared_from_this<Node> {
 public:
  Node();
  virtual ~Node() = default;
  virtual std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) = 0;
  virtual std::string name() const = 0;
  /// Drops saved tensors after a backward pass without retain_graph.
  virtual void release_saved() {}
  virtual bool released() const { return false; }

  /// Number of outputs whose gradients this node receives.
  int num_outputs = 1;
  std::vector<Edge> next_edges;  // one per differentiable input
  /// Creation order; the engine runs larger numbers first.
  uint64_t sequence_nr;
  /// Hooks on the gradient of output i, run before apply (may replace it).
  std::vector<std::pair<int, std::function<Tensor(const Tensor&)>>> pre_hooks;
};

/// The leaf node that adds incoming gradients into a parameter's .grad and then
/// runs its post-accumulate hooks (the gradient is final for this pass).
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(std::weak_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override;
  std::string name() const override { return "AccumulateGrad"; }

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

/// Per-tensor autograd state stored in TensorImpl::autograd_meta.
struct AutogradMeta : AutogradMetaInterface {
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  int output_nr = 0;
  std::weak_ptr<AccumulateGrad> grad_accumulator;  // leaves only
  /// Leaves only: run after the gradient was accumulated, i.e. when it is final
  /// for this backward pass (DDP buckets and FSDP reduce-scatter attach here).
  std::vector<std::function<void(const Tensor& param)>> post_accumulate_hooks;
  /// Leaves only: register_hook's hooks, run on the incoming gradient before it
  /// is accumulated (non-leaves keep theirs as pre_hooks on their grad_fn).
  std::vector<std::function<Tensor(const Tensor&)>> grad_hooks;
  std::string name;  // optional, used in error messages
};

/// The meta of t, or null when it has none.
AutogradMeta* meta(const Tensor& t);
AutogradMeta& ensure_meta(const Tensor& t);
std::shared_ptr<Node> grad_fn(const Tensor& t);
bool is_leaf(const Tensor& t);
/// The edge a gradient of t flows along (its grad_fn or its accumulator); invalid if none.
Edge gradient_edge(const Tensor& t);

/// Whether ops record graph nodes on this thread (true by default).
bool grad_mode_enabled();
/// Disables recording in its scope (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};
/// Enables recording in its scope even inside a NoGradGuard.
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

/// Runs backward from roots with the given gradients (undefined: ones for a
/// scalar root, an error otherwise). Throws when a root needs no gradient or
/// the graph was freed by an earlier backward without retain_graph.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots = {}, bool retain_graph = false);

/// Gradients of outputs w.r.t. inputs without touching .grad (torch.autograd.grad).
/// Only the part of the graph between outputs and inputs runs; an input that no
/// gradient reaches gets zeros of its shape. Throws when an input needs no grad.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, bool retain_graph = false);

/// Queues fn to run on this thread when the backward pass now running ends,
/// after every node ran (torch's queue_callback): DDP waits for its last bucket
/// and FSDP for its last reduce-scatter here, so .grad is final when backward()
/// returns. Callbacks run in order and may queue more. Throws InvalidArgument
/// outside a backward pass (call it from a hook).
void queue_callback(std::function<void()> fn);
/// True while a backward pass runs on this thread.
bool in_backward_pass();

namespace detail {
/// Runs a backward pass from roots as part of the pass running on this thread (activation checkpointing's recompute
/// backward, started from inside a node): callbacks queued by hooks join the running pass's queue and run when it
/// ends, not when this inner pass does. Outside a pass, the same as backward(roots, grad_roots).
void backward_within_pass(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots);
}  // namespace detail

/// Registers a hook on t's gradient; it may return a replacement (or undefined to keep).
/// Hooks run in registration order, before the gradient reaches t's .grad or grad_fn.
void register_hook(const Tensor& t, std::function<Tensor(const Tensor&)> hook);
/// Registers a hook on a leaf that fires once its gradient is final in a pass.
void register_post_accumulate_grad_hook(const Tensor& leaf, std::function<void(const Tensor&)> hook);

/// Records `node` as the producer of outputs and connects it to inputs that need grad.
/// Used by differentiable functions; outputs become non-leaves requiring grad.
void set_history(const std::vector<Tensor>& outputs, const std::shared_ptr<Node>& node,
                 const std::vector<Tensor>& inputs);
/// True when grad mode is on and any input requires grad.
bool any_requires_grad(std::initializer_list<Tensor> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

/// A node whose backward is a function (saved tensors live in its captures,
/// released after the pass unless retain_graph).
class FunctionNode : public Node {
 public:
  using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;
  FunctionNode(std::string name, BackwardFn fn, int num_outputs = 1);
  /// Gradients of all outputs are undefined: returns undefined gradients without
  /// calling fn. Otherwise undefined ones are filled with zeros (when output
  /// shapes were recorded), so fn always sees defined gradients, and the
  /// returned gradients are checked against the recorded input shapes.
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override;
  std::string name() const override { return name_; }
  void release_saved() override { fn_ = nullptr; }
  bool released() const override { return !fn_; }
  /// Records output and input shapes/dtypes (record() calls this).
  void set_tensor_meta(const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs);

 private:
  struct Meta {
    bool defined = false;
    Shape sizes;
    DType dtype = DType::f32;
    Device device;
  };
  std::string name_;
  BackwardFn fn_;
  std::vector<Meta> input_meta_;
  std::vector<Meta> output_meta_;
};

/// Records a differentiable op: when grad is needed, a FunctionNode named
/// `name` links outputs to inputs; `fn` returns one gradient per input.
void record(const char* name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            FunctionNode::BackwardFn fn);

}  // namespace loom::autograd
