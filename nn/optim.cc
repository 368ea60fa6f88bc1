#include "nn/optim.h"

#include <cmath>
#include <unordered_set>

#include "autograd/autograd.h"
#include "tensor/cuda_dispatch.h"
#include "tensor/ops.h"
#include "tensor/profiler.h"

namespace loom::nn {

namespace {

constexpr int64_t kParallelThreshold = 1 << 15;  // elements; below this one thread is faster

bool fast_path(const Tensor& p, const Tensor& g) {
  return p.device().is_cpu() && g.device().is_cpu() && p.is_contiguous() && g.is_contiguous() &&
         p.dtype() == g.dtype() && (p.dtype() == DType::f32 || p.dtype() == DType::f64);
}

template <typename T>
void adamw_kernel(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t n, double lr,
                  double beta1, double beta2, double eps, double wd, int64_t step) {
  const T decay = static_cast<T>(1.0 - lr * wd);
  const T b2 = static_cast<T>(beta2);
  const T one_minus_b1 = static_cast<T>(1.0 - beta1), one_minus_b2 = static_cast<T>(1.0 - beta2);
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const T step_size = static_cast<T>(lr / bc1);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T e = static_cast<T>(eps);
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    const T mi = m[i] + one_minus_b1 * (gi - m[i]);  // lerp, as torch
    const T vi = b2 * v[i] + one_minus_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const T denom = std::sqrt(vi) / bc2_sqrt + e;
    p[i] = p[i] * decay - step_size * (mi / denom);
  }
}

/// Whether a parameter goes to the CUDA backend's fused multi-tensor AdamW
/// (f32 master weights and moments, contiguous, on one CUDA device).
bool cuda_fused_adamw(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v) {
  if (!p.device().is_cuda() || p.dtype() != DType::f32 || !p.is_contiguous()) return false;
  for (const Tensor* t : {&g, &m, &v})
    if (t->device() != p.device() || t->dtype() != DType::f32 || !t->is_contiguous()) return false;
  return true;
}

/// Runs the collected CUDA updates: one adamw_multi call per device.
void run_cuda_adamw(const std::vector<detail::AdamWParam>& params, const AdamWOptions& opts) {
  std::vector<bool> done(params.size(), false);
  for (size_t i = 0; i < params.size(); ++i) {
    if (done[i]) continue;
    const Tensor& p = params[i].p;
    std::vector<detail::AdamWParam> same_device;
    for (size_t j = i; j < params.size(); ++j) {
      if (done[j] || params[j].p.device() != p.device()) continue;
      same_device.push_back(params[j]);
      done[j] = true;
    }
    detail::need(detail::cuda_kernels("AdamW.step", p).adamw_multi, "AdamW.step", p)(same_device, opts.beta1,
                                                                                     opts.beta2, opts.eps);
  }
}

template <typename T>
void sgd_kernel(T* __restrict p, const T* __restrict g, T* __restrict buf, int64_t n, double lr, double momentum,
                double dampening, bool nesterov, double wd, bool first) {
  const T l = static_cast<T>(lr), mo = static_cast<T>(momentum), damp = static_cast<T>(1.0 - dampening),
          w = static_cast<T>(wd);
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i];
    if (wd != 0.0) d += w * p[i];
    if (buf) {
      const T b = first ? d : mo * buf[i] + damp * d;
      buf[i] = b;
      d = nesterov ? d + mo * b : b;
    }
    p[i] -= l * d;
  }
}

}  // namespace

// ---------------------------------------------------------------- Optimizer

Optimizer::Optimizer(std::vector<ParamGroup> groups) : groups_(std::move(groups)) {
  LOOM_CHECK(!groups_.empty(), "Optimizer: no parameter groups given");
  std::unordered_set<const TensorImpl*> seen;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const auto& g = groups_[gi];
    LOOM_CHECK(!g.params.empty(), "Optimizer: parameter group ", gi, " is empty");
    LOOM_CHECK(g.lr >= 0.0, "Optimizer: group ", gi, " has a negative learning rate ", g.lr);
    LOOM_CHECK(g.weight_decay >= 0.0, "Optimizer: group ", gi, " has a negative weight_decay ", g.weight_decay);
    for (const auto& p : g.params) {
      LOOM_CHECK(p.defined(), "Optimizer: group ", gi, " holds an undefined tensor");
      LOOM_CHECK(is_floating(p.dtype()), "Optimizer: parameter ", flat_.size(), " has non-floating dtype ",
                 dtype_name(p.dtype()));
      LOOM_CHECK(seen.insert(p.impl_ptr().get()).second, "Optimizer: parameter ", flat_.size(),
                 " appears more than once in the parameter groups");
      flat_.push_back(p);
    }
  }
}

void Optimizer::step_params(const std::vector<Tensor>& params) {
  std::unordered_set<const TensorImpl*> only;
  std::unordered_set<const TensorImpl*> mine;
  for (const auto& p : flat_) mine.insert(p.impl_ptr().get());
  for (size_t k = 0; k < params.size(); ++k) {
    const TensorImpl* impl = params[k].defined() ? params[k].impl_ptr().get() : nullptr;
    if (!mine.count(impl)) {
      const auto* m = params[k].defined() ? autograd::meta(params[k]) : nullptr;
      LOOM_THROW(InvalidArgument, name(), ".step_params: tensor ", k,
                 (m && !m->name.empty() ? " (" + m->name + ")" : std::string()),
                 " is not one of this optimizer's parameters; pass tensors from its param_groups()");
    }
    only.insert(impl);
  }
  if (only.empty()) return;
  only_ = &only;
  try {
    step();
  } catch (...) {
    only_ = nullptr;
    throw;
  }
  only_ = nullptr;
}

void Optimizer::zero_grad(bool set_to_none) {
  profiler::Phase phase("optimizer");
  profiler::Scope scope("zero_grad");
  for (auto& p : flat_) {
    auto* m = autograd::meta(p);
    if (!m || !m->grad.defined()) continue;
    if (set_to_none) {
      m->grad = Tensor();
    } else {
      ops::zero_(m->grad);
    }
  }
}

void Optimizer::set_lr(double lr) {
  for (auto& g : groups_) g.lr = lr;
}

std::string Optimizer::describe_param(int64_t index) const {
  std::string s = "index " + std::to_string(index);
  if (index >= 0 && index < num_params())
    if (auto* m = autograd::meta(flat_[index]); m && !m->name.empty()) s += " (" + m->name + ")";
  return s;
}

OptimizerState Optimizer::state_dict() const {
  OptimizerState out;
  for (const auto& [i, st] : state_) {
    ParamState copy;
    copy.step = st.step;
    for (const auto& [n, t] : st.tensors) copy.tensors[n] = ops::clone(t);
    out.state[i] = std::move(copy);
  }
  int64_t idx = 0;
  for (const auto& g : groups_) {
    OptimizerState::Group og{g.lr, g.weight_decay, {}};
    for (size_t k = 0; k < g.params.size(); ++k) og.params.push_back(idx++);
    out.param_groups.push_back(std::move(og));
  }
  out.hyper = hyper_parameters();
  return out;
}

void Optimizer::load_state_dict(const OptimizerState& s) {
  LOOM_CHECK(s.param_groups.size() == groups_.size(), name(), ".load_state_dict: the state has ", s.param_groups.size(),
             " parameter groups, this optimizer has ", groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    LOOM_CHECK(s.param_groups[gi].params.size() == groups_[gi].params.size(), name(), ".load_state_dict: group ", gi,
               " has ", s.param_groups[gi].params.size(), " parameters in the state, ", groups_[gi].params.size(),
               " here");
  for (const auto& [i, st] : s.state) {
    LOOM_CHECK(i >= 0 && i < num_params(), name(), ".load_state_dict: state for parameter index ", i,
               " but this optimizer has ", num_params(), " parameters");
    for (const auto& [n, t] : st.tensors)
      LOOM_CHECK(t.defined() && t.sizes() == flat_[i].sizes(), name(), ".load_state_dict: state '", n,
                 "' of parameter ", describe_param(i), " has shape ",
                 t.defined() ? shape_str(t.sizes()) : std::string("<undefined>"), " but the parameter has shape ",
                 shape_str(flat_[i].sizes()));
  }
  state_.clear();
  for (const auto& [i, st] : s.state) {
    ParamState copy;
    copy.step = st.step;
    const Tensor& p = flat_[i];
    for (const auto& [n, t] : st.tensors) {
      Tensor c = ops::empty_like(p);
      ops::copy_(c, t);
      copy.tensors[n] = c;
    }
    state_[i] = std::move(copy);
  }
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    groups_[gi].lr = s.param_groups[gi].lr;
    groups_[gi].weight_decay = s.param_groups[gi].weight_decay;
  }
  set_hyper_parameters(s.hyper);
}

// ---------------------------------------------------------------- AdamW

namespace {
std::vector<ParamGroup> single_group(std::vector<Tensor> params, double lr, double wd) {
  return {ParamGroup{std::move(params), lr, wd}};
}
double get_hyper(const std::map<std::string, double>& h, const char* opt, const char* key) {
  auto it = h.find(key);
  LOOM_CHECK(it != h.end(), opt, ".load_state_dict: the state lacks hyper-parameter '", key, "'");
  return it->second;
}
}  // namespace

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions opts)
    : AdamW(single_group(std::move(params), opts.lr, opts.weight_decay), opts) {}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  LOOM_CHECK(opts.beta1 >= 0.0 && opts.beta1 < 1.0 && opts.beta2 >= 0.0 && opts.beta2 < 1.0,
             "AdamW: betas must be in [0, 1), got (", opts.beta1, ", ", opts.beta2, ")");
  LOOM_CHECK(opts.eps >= 0.0, "AdamW: eps must be non-negative, got ", opts.eps);
}

std::map<std::string, double> AdamW::hyper_parameters() const {
  return {{"beta1", opts_.beta1}, {"beta2", opts_.beta2}, {"eps", opts_.eps}};
}

void AdamW::set_hyper_parameters(const std::map<std::string, double>& h) {
  opts_.beta1 = get_hyper(h, "AdamW", "beta1");
  opts_.beta2 = get_hyper(h, "AdamW", "beta2");
  opts_.eps = get_hyper(h, "AdamW", "eps");
}

void AdamW::step() {
  profiler::Phase phase("optimizer");
  profiler::Scope scope("adamw");
  std::vector<detail::AdamWParam> cuda_params;  // updated together after the loop, in few launches
  for_each_param_with_grad([&](const ParamGroup& group, const Tensor& p, const Tensor& g, ParamState& st) {
    if (st.tensors.empty()) {
      st.tensors["exp_avg"] = ops::zeros_like(p);
      st.tensors["exp_avg_sq"] = ops::zeros_like(p);
    }
    Tensor& m = st.tensors["exp_avg"];
    Tensor& v = st.tensors["exp_avg_sq"];
    st.step += 1;
    const double lr = group.lr, wd = group.weight_decay;
    if (cuda_fused_adamw(p, g, m, v)) {
      cuda_params.push_back(detail::AdamWParam{p, g, m, v, Tensor(), lr, wd, st.step});
    } else if (fast_path(p, g) && m.is_contiguous() && v.is_contiguous()) {
      if (p.dtype() == DType::f32) {
        adamw_kernel(p.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), p.numel(), lr, opts_.beta1,
                     opts_.beta2, opts_.eps, wd, st.step);
      } else {
        adamw_kernel(p.data<double>(), g.data<double>(), m.data<double>(), v.data<double>(), p.numel(), lr, opts_.beta1,
                     opts_.beta2, opts_.eps, wd, st.step);
      }
    } else {
      // The same update in tensor ops (CUDA, 16-bit or strided parameters).
      const double bc1 = 1.0 - std::pow(opts_.beta1, static_cast<double>(st.step));
      const double bc2 = 1.0 - std::pow(opts_.beta2, static_cast<double>(st.step));
      if (wd != 0.0) ops::mul_(p, 1.0 - lr * wd);
      ops::lerp_(m, g, 1.0 - opts_.beta1);
      ops::mul_(v, opts_.beta2);
      ops::addcmul_(v, g, g, 1.0 - opts_.beta2);
      Tensor denom = ops::add(ops::mul(ops::sqrt(v), 1.0 / std::sqrt(bc2)), opts_.eps);
      ops::addcdiv_(p, m, denom, -lr / bc1);
    }
  });
  if (!cuda_params.empty()) run_cuda_adamw(cuda_params, opts_);
}

// ---------------------------------------------------------------- SGD

SGD::SGD(std::vector<Tensor> params, SGDOptions opts)
    : SGD(single_group(std::move(params), opts.lr, opts.weight_decay), opts) {}

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  LOOM_CHECK(opts.momentum >= 0.0, "SGD: momentum must be non-negative, got ", opts.momentum);
  LOOM_CHECK(!opts.nesterov || (opts.momentum > 0.0 && opts.dampening == 0.0),
             "SGD: nesterov needs momentum > 0 and dampening 0 (got momentum ", opts.momentum, ", dampening ",
             opts.dampening, ")");
}

std::map<std::string, double> SGD::hyper_parameters() const {
  return {{"momentum", opts_.momentum}, {"dampening", opts_.dampening}, {"nesterov", opts_.nesterov ? 1.0 : 0.0}};
}

void SGD::set_hyper_parameters(const std::map<std::string, double>& h) {
  opts_.momentum = get_hyper(h, "SGD", "momentum");
  opts_.dampening = get_hyper(h, "SGD", "dampening");
  opts_.nesterov = get_hyper(h, "SGD", "nesterov") != 0.0;
}

void SGD::step() {
  profiler::Phase phase("optimizer");
  profiler::Scope scope("sgd");
  for_each_param_with_grad([&](const ParamGroup& group, const Tensor& p, const Tensor& g, ParamState& st) {
    st.step += 1;
    const bool use_momentum = opts_.momentum != 0.0;
    const bool first = use_momentum && !st.tensors.count("momentum_buffer");
    if (first) st.tensors["momentum_buffer"] = ops::empty_like(p);
    const double lr = group.lr, wd = group.weight_decay;
    Tensor buf = use_momentum ? st.tensors["momentum_buffer"] : Tensor();
    if (fast_path(p, g) && (!buf.defined() || buf.is_contiguous())) {
      if (p.dtype() == DType::f32) {
        sgd_kernel(p.data<float>(), g.data<float>(), buf.defined() ? buf.data<float>() : nullptr, p.numel(), lr,
                   opts_.momentum, opts_.dampening, opts_.nesterov, wd, first);
      } else {
        sgd_kernel(p.data<double>(), g.data<double>(), buf.defined() ? buf.data<double>() : nullptr, p.numel(), lr,
                   opts_.momentum, opts_.dampening, opts_.nesterov, wd, first);
      }
    } else {
      Tensor d = wd != 0.0 ? ops::add(g, ops::mul(p, wd)) : g;
      if (use_momentum) {
        if (first) {
          ops::copy_(buf, d);
        } else {
          ops::mul_(buf, opts_.momentum);
          ops::add_(buf, d, 1.0 - opts_.dampening);
        }
        d = opts_.nesterov ? ops::add(d, ops::mul(buf, opts_.momentum)) : buf;
      }
      ops::add_(p, d, -lr);
    }
  });
}

std::vector<ParamGroup> weight_decay_groups(const NamedTensors& named_params, double lr, double weight_decay) {
  ParamGroup decay{{}, lr, weight_decay}, no_decay{{}, lr, 0.0};
  for (const auto& [n, p] : named_params) {
    if (!p.requires_grad()) continue;
    (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  }
  std::vector<ParamGroup> out;
  if (!decay.params.empty()) out.push_back(std::move(decay));
  if (!no_decay.params.empty()) out.push_back(std::move(no_decay));
  return out;
}

}  // namespace loom::nn
