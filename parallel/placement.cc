#include "parallel/placement.h"

#include <map>
#include <mutex>

#include "tensor/error.h"

namespace loom::parallel {

namespace {
std::mutex g_mu;
// Keyed by TensorImpl address; the weak_ptr tells a reused address from the original.
struct Entry {
  std::weak_ptr<TensorImpl> impl;
  TpPlacement placement;
};
std::map<const TensorImpl*, Entry>& registry() {
  static std::map<const TensorImpl*, Entry> m;
  return m;
}
}  // namespace

void set_tp_placement(const Tensor& p, TpPlacement placement) {
  LOOM_CHECK(p.defined(), "set_tp_placement: undefined tensor");
  LOOM_CHECK(placement.dim >= 0 && placement.dim < p.dim(), "set_tp_placement: dim ", placement.dim,
             " out of range for a tensor of shape ", shape_str(p.sizes()));
  LOOM_CHECK(static_cast<int64_t>(placement.global_shape.size()) == p.dim(), "set_tp_placement: global shape ",
             shape_str(placement.global_shape), " has a different rank than the local ", shape_str(p.sizes()));
  int64_t covered = 0;
  for (const auto& s : placement.segments) {
    LOOM_CHECK(
        s.local_start == covered && s.length > 0 && s.global_start + s.length <= placement.global_shape[placement.dim],
        "set_tp_placement: segments must cover the local dimension in order and stay inside the global one");
    covered += s.length;
  }
  LOOM_CHECK(covered == p.size(placement.dim), "set_tp_placement: segments cover ", covered, " of ",
             p.size(placement.dim), " local indices along dim ", placement.dim);
  std::lock_guard<std::mutex> lock(g_mu);
  registry()[&p.impl()] = Entry{p.impl_ptr(), std::move(placement)};
}

std::optional<TpPlacement> tp_placement(const Tensor& p) {
  if (!p.defined()) return std::nullopt;
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = registry().find(&p.impl());
  if (it == registry().end()) return std::nullopt;
  if (it->second.impl.lock() != p.impl_ptr()) {  // a new tensor at a freed address
    registry().erase(it);
    return std::nullopt;
  }
  return it->second.placement;
}

void clear_tp_placement(const Tensor& p) {
  if (!p.defined()) return;
  std::lock_guard<std::mutex> lock(g_mu);
  registry().erase(&p.impl());
}

}  // namespace loom::parallel
