#include "nn/module.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <unordered_set>

#include "autograd/functions.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"

namespace loom::nn {

namespace {

/// Points every handle of t at `src`'s storage/layout (PyTorch's `param.data = src`).
void replace_data(const Tensor& t, const Tensor& src) {
  TensorImpl& impl = t.impl();
  impl.storage = src.storage();
  impl.sizes = src.sizes();
  impl.strides = src.strides();
  impl.offset = src.storage_offset();
  impl.dtype = src.dtype();
  t.bump_version();
}

std::string indent(const std::string& s, int spaces) {
  std::string pad(spaces, ' ');
  std::string out;
  size_t start = 0;
  bool first = true;
  while (start <= s.size()) {
    size_t nl = s.find('\n', start);
    std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    out += (first ? "" : "\n" + pad) + line;
    first = false;
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out;
}

}  // namespace

std::string format_float(double v) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf);
  if (s.find_first_of(".eni") == std::string::npos) s += ".0";
  return s;
}

Module::Module(std::string type_name) : type_name_(std::move(type_name)) {}

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  LOOM_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ".register_parameter: name '", name,
             "' must be non-empty and contain no '.'");
  LOOM_CHECK(t.defined(), type_name_, ".register_parameter('", name, "'): tensor is undefined");
  LOOM_CHECK(!children_.contains(name) && !buffers_.contains(name), type_name_, ".register_parameter: '", name,
             "' is already a child module or buffer");
  LOOM_CHECK(autograd::is_leaf(t), type_name_, ".register_parameter('", name,
             "'): a parameter must be a leaf tensor (detach it first)");
  if (requires_grad) t.set_requires_grad(true);
  auto& m = autograd::ensure_meta(t);
  if (m.name.empty()) m.name = name;
  params_.insert(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t, bool persistent) {
  LOOM_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ".register_buffer: name '", name,
             "' must be non-empty and contain no '.'");
  LOOM_CHECK(!children_.contains(name) && !params_.contains(name), type_name_, ".register_buffer: '", name,
             "' is already a child module or parameter");
  buffers_.insert(name, BufferEntry{t, persistent});
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  LOOM_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ".register_module: name '", name,
             "' must be non-empty and contain no '.'");
  LOOM_CHECK(m != nullptr, type_name_, ".register_module('", name, "'): module is null");
  LOOM_CHECK(m.get() != this, type_name_, ".register_module('", name, "'): a module cannot contain itself");
  LOOM_CHECK(!params_.contains(name) && !buffers_.contains(name), type_name_, ".register_module: '", name,
             "' is already a parameter or buffer");
  children_.insert(name, std::move(m));
  name_parameters();
}

void Module::name_parameters() {
  for (auto& [name, t] : named_parameters()) autograd::ensure_meta(t).name = name;
}

void Module::collect_state(const std::string& prefix, NamedTensors& out, bool params, bool buffers,
                           bool persistent_only) const {
  if (params)
    for (const auto& [n, t] : params_) out.emplace_back(prefix + n, t);
  if (buffers)
    for (const auto& [n, b] : buffers_)
      if (b.tensor.defined() && (b.persistent || !persistent_only)) out.emplace_back(prefix + n, b.tensor);
  for (const auto& [n, c] : children_) c->collect_state(prefix + n + ".", out, params, buffers, persistent_only);
}

NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors all;
  if (recurse) {
    collect_state("", all, true, false, false);
  } else {
    for (const auto& [n, t] : params_) all.emplace_back(n, t);
  }
  NamedTensors out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& kv : all)
    if (seen.insert(kv.second.impl_ptr().get()).second) out.push_back(std::move(kv));
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& kv : named_parameters(recurse)) out.push_back(kv.second);
  return out;
}

NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors all;
  if (recurse) {
    collect_state("", all, false, true, false);
  } else {
    for (const auto& [n, b] : buffers_)
      if (b.tensor.defined()) all.emplace_back(n, b.tensor);
  }
  NamedTensors out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& kv : all)
    if (seen.insert(kv.second.impl_ptr().get()).second) out.push_back(std::move(kv));
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& kv : named_buffers(recurse)) out.push_back(kv.second);
  return out;
}

void Module::collect_modules(const std::string& prefix, std::vector<std::pair<std::string, Module*>>& out,
                             std::vector<const Module*>& seen) const {
  for (const auto& [n, c] : children_) {
    if (std::find(seen.begin(), seen.end(), c.get()) != seen.end()) continue;
    seen.push_back(c.get());
    std::string name = prefix.empty() ? n : prefix + "." + n;
    out.emplace_back(name, c.get());
    c->collect_modules(name, out, seen);
  }
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  std::vector<const Module*> seen{this};
  collect_modules("", out, seen);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  return children_.items();
}

std::vector<std::shared_ptr<Module>> Module::children() const {
  std::vector<std::shared_ptr<Module>> out;
  for (const auto& kv : children_) out.push_back(kv.second);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& kv : children_) kv.second->train(on);
}

void Module::to(Device device) {
  autograd::NoGradGuard no_grad;
  auto move = [&](const Tensor& t) {
    if (t.device() != device) replace_data(t, ops::to(t, device));
    if (auto* m = autograd::meta(t); m && m->grad.defined() && m->grad.device() != device)
      m->grad = ops::to(m->grad, device);
  };
  for (auto& [n, t] : named_parameters()) move(t);
  for (auto& [n, t] : named_buffers()) move(t);
}

void Module::to(DType dtype) {
  LOOM_CHECK(is_floating(dtype), type_name_, ".to(", dtype_name(dtype),
             "): modules convert only to a floating dtype (float32, float64, float16, bfloat16)");
  autograd::NoGradGuard no_grad;
  auto convert = [&](const Tensor& t) {
    if (!is_floating(t.dtype())) return;
    if (t.dtype() != dtype) replace_data(t, ops::to(t, dtype));
    if (auto* m = autograd::meta(t); m && m->grad.defined() && m->grad.dtype() != dtype)
      m->grad = ops::to(m->grad, dtype);
  };
  for (auto& [n, t] : named_parameters()) convert(t);
  for (auto& [n, t] : named_buffers()) convert(t);
}

void Module::zero_grad(bool set_to_none) {
  for (auto& [n, t] : named_parameters()) {
    auto* m = autograd::meta(t);
    if (!m || !m->grad.defined()) continue;
    if (set_to_none) {
      m->grad = Tensor();
    } else {
      ops::zero_(m->grad);
    }
  }
}

StateDict Module::state_dict() const {
  NamedTensors all;
  collect_state("", all, true, true, true);
  StateDict out;
  for (auto& [n, t] : all) out.insert(n, detach(t));
  return out;
}

void Module::load_state_dict(const StateDict& dict, bool strict) {
  NamedTensors own;
  collect_state("", own, true, true, true);
  std::vector<std::string> missing, unexpected;
  std::unordered_set<std::string> own_names;
  for (auto& [n, t] : own) {
    own_names.insert(n);
    if (!dict.contains(n)) missing.push_back(n);
  }
  for (const auto& [n, t] : dict)
    if (!own_names.count(n)) unexpected.push_back(n);
  if (strict && (!missing.empty() || !unexpected.empty())) {
    std::string msg;
    if (!missing.empty()) msg += "missing keys: [" + join(missing) + "]";
    if (!unexpected.empty())
      msg += std::string(msg.empty() ? "" : "; ") + "unexpected keys: [" + join(unexpected) + "]";
    LOOM_THROW(InvalidArgument, type_name_, ".load_state_dict: ", msg,
               " (pass strict=false to load the keys that match)");
  }
  // Check every shape before writing anything, so a failed load leaves the module unchanged.
  for (auto& [n, t] : own) {
    const Tensor* src = dict.find(n);
    if (!src) continue;
    LOOM_CHECK(src->defined(), type_name_, ".load_state_dict: value for '", n, "' is an undefined tensor");
    LOOM_CHECK(src->sizes() == t.sizes(), type_name_, ".load_state_dict: size mismatch for '", n,
               "': checkpoint has shape ", shape_str(src->sizes()), ", the module has shape ", shape_str(t.sizes()));
  }
  autograd::NoGradGuard no_grad;
  for (auto& [n, t] : own) {
    const Tensor* src = dict.find(n);
    if (!src || src->is_same(t)) continue;
    ops::copy_(t, *src);
    t.bump_version();
  }
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

std::string Module::repr() const {
  std::vector<std::string> lines;
  std::string extra = extra_repr();
  if (!extra.empty()) lines.push_back(extra);
  for (const auto& [n, c] : children_) lines.push_back("(" + n + "): " + indent(c->repr(), 2));
  std::string out = type_name_ + "(";
  if (children_.empty()) return out + extra + ")";
  for (const auto& l : lines) out += "\n  " + l;
  return out + "\n)";
}

std::string Module::summary() const {
  int64_t total = 0, trainable = 0;
  for (auto& [n, t] : named_parameters()) {
    total += t.numel();
    if (t.requires_grad()) trainable += t.numel();
  }
  std::ostringstream os;
  os << repr() << "\nTotal parameters: " << total << "\nTrainable parameters: " << trainable;
  return os.str();
}

}  // namespace loom::nn
namespace loom::detail {
thread_local ModuleOutputShapes* recording_output_shapes = nullptr;
}
namespace loom::nn {

std::string Module::summary(const Shape& input_shape, const std::function<Tensor(const Tensor&)>& forward) {
  loom::detail::ModuleOutputShapes shapes;
  const bool was_training = training_;
  {
    autograd::NoGradGuard no_grad;
    eval();
    loom::detail::ModuleOutputShapes* outer = loom::detail::recording_output_shapes;
    loom::detail::recording_output_shapes = &shapes;
    try {
      forward(ops::zeros(input_shape));
    } catch (...) {
      loom::detail::recording_output_shapes = outer;
      train(was_training);
      throw;
    }
    loom::detail::recording_output_shapes = outer;
    train(was_training);
  }
  std::map<const Module*, std::string> names;
  for (auto& [n, m] : named_modules()) names[m] = n;
  std::vector<std::array<std::string, 3>> rows;
  for (auto& [m, shape] : shapes.calls) {
    if (!m->children_.empty() || !names.count(m)) continue;
    std::string s = "(None";
    for (size_t d = 1; d < shape.size(); ++d) s += ", " + std::to_string(shape[d]);
    s += shape.size() == 1 ? ",)" : ")";
    int64_t own = 0;
    for (auto& [pn, t] : m->named_parameters(false)) own += t.numel();
    rows.push_back({names[m] + " (" + m->type_name() + ")", s, std::to_string(own)});
  }
  size_t w0 = 24, w1 = 20, w2 = 10;
  for (auto& r : rows) w0 = std::max(w0, r[0].size() + 2), w1 = std::max(w1, r[1].size() + 2);
  auto line = [&](char c) { return std::string(w0 + w1 + w2, c) + "\n"; };
  auto row = [&](const std::string& a, const std::string& b, const std::string& c) {
    return a + std::string(w0 - a.size(), ' ') + b + std::string(w1 - b.size(), ' ') + c + "\n";
  };
  int64_t total = 0, trainable = 0;
  for (auto& [n, t] : named_parameters()) {
    total += t.numel();
    if (t.requires_grad()) trainable += t.numel();
  }
  std::string out =
      "Model: \"" + type_name_ + "\"\n" + line('_') + row("Layer (type)", "Output Shape", "Param #") + line('=');
  for (size_t i = 0; i < rows.size(); ++i) {
    out += row(rows[i][0], rows[i][1], rows[i][2]);
    if (i + 1 < rows.size()) out += line('_');
  }
  out += line('=');
  out += "Total params: " + std::to_string(total) + "\nTrainable params: " + std::to_string(trainable) +
         "\nNon-trainable params: " + std::to_string(total - trainable) + "\n" + line('_');
  return out;
}

HookHandle Module::register_forward_pre_hook(ModuleHook fn) {
  int64_t id = next_hook_id_++;
  forward_pre_hooks_.emplace(id, std::move(fn));
  return HookHandle{id};
}

HookHandle Module::register_forward_hook(ModuleHook fn) {
  int64_t id = next_hook_id_++;
  forward_hooks_.emplace(id, std::move(fn));
  return HookHandle{id};
}

HookHandle Module::register_backward_pre_hook(ModuleHook fn) {
  int64_t id = next_hook_id_++;
  backward_pre_hooks_.emplace(id, std::move(fn));
  return HookHandle{id};
}

void Module::remove_hook(HookHandle handle) {
  forward_pre_hooks_.erase(handle.id);
  forward_hooks_.erase(handle.id);
  backward_pre_hooks_.erase(handle.id);
}

void Module::run_forward_pre_hooks() {
  // Under an op trace (the ONNX exporter) ops record the module running them; popped in run_forward_hooks.
  if (optrace::active()) [[unlikely]]
    optrace::detail::t_active->push_module(this);
  // Copy: a hook may remove itself.
  auto hooks = forward_pre_hooks_;
  for (auto& [id, fn] : hooks) fn(*this);
}

void Module::run_forward_hooks() {
  if (optrace::active()) [[unlikely]]
    optrace::detail::t_active->pop_module();
  auto hooks = forward_hooks_;
  for (auto& [id, fn] : hooks) fn(*this);
}

void Module::run_backward_pre_hooks() {
  auto hooks = backward_pre_hooks_;
  for (auto& [id, fn] : hooks) fn(*this);
}

Tensor Module::checkpointed_forward(const Tensor& x, std::function<Tensor(const Tensor&)> fn) {
  autograd::CheckpointOptions opts;
  opts.mode = checkpoint_mode_;
  opts.name = type_name_;
  auto outs = autograd::checkpoint(
      [fn = std::move(fn)](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in[0])}; }, {x}, opts);
  return outs[0];
}

void Module::throw_not_checkpointable() const {
  LOOM_THROW(InvalidArgument, type_name_, ": activation checkpointing is set (",
             autograd::checkpoint_mode_name(checkpoint_mode_),
             ") but this module's operator() calls call(fn), which "
             "does not say what the forward's input is; route it through call(x, fn) or checkpoint a module that does "
             "(a transformer block, an MLP, a layer of nn/)");
}

void Module::attach_backward_pre_hooks(const Tensor& out) { attach_backward_pre_hooks(std::vector<Tensor>{out}); }

void Module::attach_backward_pre_hooks(const std::vector<Tensor>& outs) {
  // With tracing on, a traced module's backward span opens when the first gradient reaches its output (and is
  // closed by the next module at its depth or an outer one, or by the end of the backward pass).
  const bool traced = !trace_name_.empty() && trace::enabled();
  if ((backward_pre_hooks_.empty() && !traced) || !autograd::grad_mode_enabled()) return;
  auto fired = std::make_shared<bool>(false);
  Module* self = this;
  std::string span = traced ? "backward " + trace_name_ : std::string();
  const int depth = trace_depth_;
  std::string path = trace_depth_ == 0 ? std::string() : trace_name_;
  for (const auto& o : outs) {
    if (!o.defined() || !o.requires_grad()) continue;
    autograd::register_hook(o, [fired, self, span, depth, path](const Tensor&) -> Tensor {
      if (!*fired) {
        *fired = true;
        if (!span.empty()) trace::open_span(span, trace::kBackward, depth, path);
        self->run_backward_pre_hooks();
      }
      return Tensor();
    });
  }
}

void set_trace_names(Module& root, int max_depth, const std::string& root_name) {
  for (auto& [name, m] : root.named_modules()) {
    const int depth = name.empty() ? 0 : 1 + static_cast<int>(std::count(name.begin(), name.end(), '.'));
    if (max_depth >= 0 && depth > max_depth) {
      m->set_trace_name("", 0);
    } else {
      m->set_trace_name(name.empty() ? root_name : name, depth);
    }
  }
}

}  // namespace loom::nn
