#include "autograd/autocast.h"

#include <unordered_map>

#include "autograd/functions.h"

namespace loom {
namespace {

struct CastEntry {
  Tensor cast;
  int64_t version = 0;
};

struct AutocastState {
  bool enabled = false;
  DType dtype = DType::bf16;
  int depth = 0;  // live guards that enabled autocast
  // Casts of parameters (leaf tensors requiring grad), keyed by their impl, valid while the version is unchanged.
  std::unordered_map<const TensorImpl*, CastEntry> cache;
};
thread_local AutocastState state;

bool is_parameter(const Tensor& t) { return t.requires_grad() && autograd::is_leaf(t); }

Tensor cast(const Tensor& t, DType dtype) {
  if (!is_parameter(t)) return to(t, dtype);
  auto it = state.cache.find(t.impl_ptr().get());
  if (it != state.cache.end() && it->second.version == t.version() && it->second.cast.dtype() == dtype)
    return it->second.cast;
  // A cast made without grad mode has no history: caching it would cut the parameter's gradient off from a later use
  // with grad mode on (activation checkpointing runs a block's first forward without grad mode inside the guard).
  if (!autograd::grad_mode_enabled()) return to(t, dtype);
  Tensor c = to(t, dtype);
  state.cache[t.impl_ptr().get()] = CastEntry{c, t.version()};
  return c;
}

}  // namespace

AutocastGuard::AutocastGuard(DType lowp, bool enabled) : prev_enabled_(state.enabled), prev_dtype_(state.dtype) {
  LOOM_CHECK(lowp == DType::bf16 || lowp == DType::f16,
             "AutocastGuard: the low-precision dtype must be bf16 or f16, got ", dtype_name(lowp));
  state.enabled = enabled;
  state.dtype = lowp;
  ++state.depth;
}

AutocastGuard::~AutocastGuard() {
  state.enabled = prev_enabled_;
  state.dtype = prev_dtype_;
  if (--state.depth == 0) state.cache.clear();
}

bool autocast_enabled() { return state.enabled; }
DType autocast_dtype() { return state.dtype; }

namespace autograd::detail {

Tensor autocast_lowp(const Tensor& t) {
  if (!state.enabled || !t.defined() || t.dtype() != DType::f32) return t;
  return cast(t, state.dtype);
}

Tensor autocast_f32(const Tensor& t) {
  if (!state.enabled || !t.defined() || (t.dtype() != DType::bf16 && t.dtype() != DType::f16)) return t;
  return cast(t, DType::f32);
}

AutocastSuspend::AutocastSuspend() : prev_(state.enabled) { state.enabled = false; }
AutocastSuspend::~AutocastSuspend() { state.enabled = prev_; }

}  // namespace autograd::detail
}  // namespace loom
