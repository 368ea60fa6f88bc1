// Module: the base of every layer and model, as in libtorch/PyTorch. It holds
// named parameters, buffers and child modules (dotted names such as
// `transformer.h.0.attn.c_attn.weight`), the train/eval flag, state_dict I/O,
// a printed summary, and the forward/backward pre-hooks that FSDP attaches to.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "nn/ordered_dict.h"
#include "tensor/tensor.h"
#include "tensor/trace_events.h"

namespace loom::nn {
class Module;
}
namespace loom::detail {
/// While Module::summary(input_shape, forward) runs: the output shape of every module call, in completion order.
struct ModuleOutputShapes {
  std::vector<std::pair<const nn::Module*, Shape>> calls;
};
extern thread_local ModuleOutputShapes* recording_output_shapes;
}  // namespace loom::detail

namespace loom::nn {

/// name -> tensor in registration order (parameters, then persistent buffers, per module, pre-order).
using StateDict = OrderedDict<Tensor>;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

/// What a module's forward keeps for backward under activation checkpointing (autograd::CheckpointMode).
using CheckpointMode = autograd::CheckpointMode;

/// Identifies a registered hook so it can be removed.
struct HookHandle {
  int64_t id = -1;
};

class Module {
 public:
  using ModuleHook = std::function<void(Module&)>;

  /// `type_name` is what the summary prints ("Linear", "GPT2Block", …).
  explicit Module(std::string type_name);
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type_name() const { return type_name_; }

  // ------------------------------------------------------------ registration
  /// Registers (or replaces) a parameter; sets requires_grad and returns the same
  /// tensor handle. Registering a tensor another module already owns ties them
  /// (named_parameters() lists it once, state_dict() under both names).
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  /// Registers (or replaces) a buffer; non-persistent buffers are left out of state_dict().
  Tensor register_buffer(const std::string& name, Tensor t, bool persistent = true);
  /// Registers (or replaces) a child module and returns it. Names the child's
  /// parameters (AutogradMeta::name) with their dotted names relative to this module.
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    static_assert(std::is_base_of_v<Module, M>, "register_module: M must derive from loom::nn::Module");
    add_child(name, m);
    return m;
  }

  // ------------------------------------------------------------ traversal
  /// Parameters with dotted names, own first then children's (pre-order), each
  /// tensor once even when shared (tied weights keep their first name).
  NamedTensors named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  /// Buffers with dotted names (persistent or not), each tensor once.
  NamedTensors named_buffers(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  /// This module (name "") and every descendant, pre-order, each once.
  std::vector<std::pair<std::string, Module*>> named_modules();
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  std::vector<std::shared_ptr<Module>> children() const;

  // ------------------------------------------------------------ mode, placement, grads
  /// Sets the training flag on this module and every descendant.
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  /// Moves every parameter and buffer to device, in place: tensor handles held
  /// elsewhere (layer members, optimizers) see the move; requires_grad is kept
  /// and existing gradients move too.
  void to(Device device);
  /// Converts floating parameters and buffers (and their gradients) to dtype, in place;
  /// integer buffers are left alone. Throws InvalidArgument for a non-floating dtype.
  void to(DType dtype);
  /// Clears gradients: undefined when set_to_none (PyTorch's default), else zero-filled.
  void zero_grad(bool set_to_none = true);

  // ------------------------------------------------------------ state
  /// Parameters and persistent buffers by dotted name, registration order; values
  /// share storage with the module (detached). Tied tensors appear under every name.
  StateDict state_dict() const;
  /// Copies values into the module's tensors in place (converting dtype/device).
  /// strict: a missing or unexpected key throws InvalidArgument listing all of
  /// them. A shape mismatch always throws, naming the key and both shapes.
  void load_state_dict(const StateDict& dict, bool strict = true);
  /// Number of parameter elements, shared tensors counted once.
  int64_t num_parameters() const;

  // ------------------------------------------------------------ printing
  /// The text between the parentheses of this module's line, e.g. "in_features=4, out_features=8, bias=True".
  virtual std::string extra_repr() const { return ""; }
  /// PyTorch's print(model): nested "(name): Type(...)" lines.
  std::string repr() const;
  /// repr() followed by "Total parameters: N" and "Trainable parameters: N".
  std::string summary() const;
  /// Keras's model.summary(): runs forward(zeros(input_shape)) once (no grad, eval mode; the training flag is restored)
  /// and returns a table of the leaf modules that ran, in order: "name (Type)", the output shape (dim 0 printed as
  /// None) and the module's parameter count; then total, trainable and non-trainable parameters. Throws what forward
  /// throws.
  std::string summary(const Shape& input_shape, const std::function<Tensor(const Tensor&)>& forward);

  // ------------------------------------------------------------ hooks
  /// fn(module) runs before every forward of this module (FSDP all-gathers here).
  HookHandle register_forward_pre_hook(ModuleHook fn);
  /// fn(module) runs after every forward of this module, once its output exists
  /// (FSDP frees a unit's full parameters here).
  HookHandle register_forward_hook(ModuleHook fn);
  /// fn(module) runs once per forward call, when the first gradient reaches the
  /// module's output in backward, i.e. before the gradients of its parameters are
  /// computed (FSDP all-gathers for backward here). Only attached when grad mode
  /// is on and an output requires grad. The module must outlive that backward pass.
  HookHandle register_backward_pre_hook(ModuleHook fn);
  /// Removes a hook of either kind; unknown handles are ignored.
  void remove_hook(HookHandle handle);
  /// The name this module's forward/backward spans carry in the timeline
  /// (tensor/trace_events.h); empty: not traced. Set by set_trace_names().
  void set_trace_name(std::string name, int depth) {
    trace_name_ = std::move(name);
    trace_depth_ = depth;
  }
  const std::string& trace_name() const { return trace_name_; }
  /// Whether any forward, forward-pre or backward-pre hook is registered, or activation
  /// checkpointing is set. Fused paths that compute a submodule's output without its
  /// call() (TransformerBlock's residual add + norm, GeluMLP's c_fc + GELU) take the
  /// unfused path when it has hooks.
  bool has_hooks() const {
    return !forward_pre_hooks_.empty() || !forward_hooks_.empty() || !backward_pre_hooks_.empty() ||
           checkpoint_mode_ != CheckpointMode::kNone;
  }

  // ------------------------------------------------------------ activation checkpointing
  /// Sets what this module's forward keeps for backward (autograd::checkpoint): kFull keeps its input only and
  /// recomputes the forward in backward (RNG and autocast state replayed); kSelective also keeps the outputs of its
  /// linear layers and attention; kNone (the default) turns it off. Takes effect in training forwards with grad mode
  /// on. Every layer of nn/ supports it; a module whose operator() does not pass its input to call(x, fn) throws
  /// InvalidArgument naming it at its next forward. To catch a module that is set but never runs, use
  /// nn::checkpoint_module on the root instead.
  void set_activation_checkpointing(CheckpointMode mode) { checkpoint_mode_ = mode; }
  CheckpointMode activation_checkpointing() const { return checkpoint_mode_; }
  /// How many times this module's forward ran through call(x, fn) (checkpointed or not).
  int64_t forward_count() const { return forward_count_; }

 protected:
  /// The call path of a layer whose forward takes one tensor: call(F) around fn(x), or, with activation
  /// checkpointing set, around autograd::checkpoint of fn with x as its input. fn is kept for the recompute in
  /// backward: capture only `this`, take the input from the argument.
  template <typename F>
  Tensor call(const Tensor& x, F&& fn) {
    ++forward_count_;
    if (checkpoint_mode_ == CheckpointMode::kNone) return call_hooks([&] { return fn(x); });
    std::function<Tensor(const Tensor&)> f(std::forward<F>(fn));
    return call_hooks([&] { return checkpointed_forward(x, std::move(f)); });
  }
  /// The call path every layer's operator() uses: forward pre-hooks, then
  /// forward_fn(), then backward pre-hooks attached to the output tensor(s).
  /// Throws InvalidArgument when activation checkpointing is set (use call(x, fn)).
  template <typename F>
  auto call(F&& forward_fn) -> decltype(forward_fn()) {
    if (checkpoint_mode_ != CheckpointMode::kNone) throw_not_checkpointable();
    return call_hooks(std::forward<F>(forward_fn));
  }
  template <typename F>
  auto call_hooks(F&& forward_fn) -> decltype(forward_fn()) {
    // A span over the whole call (hooks included: FSDP's all-gather wait belongs to this module's forward).
    trace::Span span(trace_name_.empty() || !trace::enabled() ? std::string() : "forward " + trace_name_,
                     trace::kForward);
    run_forward_pre_hooks();
    auto out = forward_fn();
    if constexpr (std::is_same_v<std::decay_t<decltype(out)>, Tensor>)
      if (loom::detail::recording_output_shapes)
        loom::detail::recording_output_shapes->calls.emplace_back(this, out.sizes());
    attach_backward_pre_hooks(out);
    run_forward_hooks();
    return out;
  }
  void run_forward_pre_hooks();
  void run_forward_hooks();
  void attach_backward_pre_hooks(const Tensor& out);
  void attach_backward_pre_hooks(const std::vector<Tensor>& outs);

 private:
  struct BufferEntry {
    Tensor tensor;
    bool persistent = true;
  };
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  /// Sets AutogradMeta::name of every parameter below this module to its dotted name.
  void name_parameters();
  void collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out,
                       std::vector<const Module*>& seen) const;
  /// Every (dotted name, tensor) incl. duplicates: params, then buffers (persistent_only), per module pre-order.
  void collect_state(const std::string& prefix, NamedTensors& out, bool params, bool buffers,
                     bool persistent_only) const;
  void run_backward_pre_hooks();
  Tensor checkpointed_forward(const Tensor& x, std::function<Tensor(const Tensor&)> fn);
  [[noreturn]] void throw_not_checkpointable() const;

  std::string type_name_;
  bool training_ = true;
  OrderedDict<Tensor> params_;
  OrderedDict<BufferEntry> buffers_;
  OrderedDict<std::shared_ptr<Module>> children_;
  std::map<int64_t, ModuleHook> forward_pre_hooks_;
  std::map<int64_t, ModuleHook> forward_hooks_;
  std::map<int64_t, ModuleHook> backward_pre_hooks_;
  int64_t next_hook_id_ = 0;
  CheckpointMode checkpoint_mode_ = CheckpointMode::kNone;
  int64_t forward_count_ = 0;
  std::string trace_name_;
  int trace_depth_ = 0;
};

/// Names root and every module below it, down to max_depth dots deep ("" is
/// the root, "transformer.h.0" depth 3), for the timeline: their forward and
/// backward spans then show under these names whenever tracing is on. The root
/// is named `root_name`. Modules deeper than max_depth are left untraced
/// (max_depth < 0: all).
void set_trace_names(Module& root, int max_depth = -1, const std::string& root_name = "model");

/// A list of modules registered as "0", "1", … (PyTorch's nn.ModuleList).
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    register_module(std::to_string(items_.size()), m);
    items_.push_back(m);
    return m;
  }
  size_t size() const { return items_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_.at(i); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

/// Formats a double as PyTorch prints it in a repr: 1e-05, 0.1, 1.0.
std::string format_float(double v);

}  // namespace loom::nn
