#include "parallel/wrap_claim.h"

#include <map>
#include <mutex>

#include "tensor/error.h"

namespace loom::parallel {

namespace {
std::mutex g_mu;
std::map<const TensorImpl*, std::string>& owners() {
  static std::map<const TensorImpl*, std::string> m;
  return m;
}
}  // namespace

WrapClaim::WrapClaim(const nn::Module& module, std::string wrapper) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto named = module.named_parameters();
  for (const auto& [name, p] : named) {
    auto it = owners().find(&p.impl());
    LOOM_CHECK(it == owners().end(), wrapper, ": ", module.type_name(), " is already wrapped by ", it->second,
               " (parameter '", name, "'); wrap a model once, or destroy the first wrapper before wrapping again");
  }
  for (const auto& [name, p] : named) {
    owners()[&p.impl()] = wrapper;
    params_.push_back(&p.impl());
  }
}

WrapClaim::~WrapClaim() { release(); }

WrapClaim::WrapClaim(WrapClaim&& o) noexcept : params_(std::move(o.params_)) { o.params_.clear(); }

WrapClaim& WrapClaim::operator=(WrapClaim&& o) noexcept {
  if (this != &o) {
    release();
    params_ = std::move(o.params_);
    o.params_.clear();
  }
  return *this;
}

void WrapClaim::release() {
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto* p : params_) owners().erase(p);
  params_.clear();
}

}  // namespace loom::parallel
