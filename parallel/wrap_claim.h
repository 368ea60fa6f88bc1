// Which wrapper owns a module: DistributedDataParallel and FullyShard each
// claim the module they wrap (and its descendants' parameters) so that
// wrapping a model twice is an error naming both wrappers, not two sets of
// hooks silently averaging gradients twice.
#pragma once

#include <string>
#include <vector>

#include "nn/module.h"

namespace loom::parallel {

/// Held by a wrapper for its lifetime; the claim is released on destruction.
class WrapClaim {
 public:
  WrapClaim() = default;
  /// Claims every parameter of `module` for `wrapper` ("DistributedDataParallel",
  /// "FullyShard"). Throws InvalidArgument naming the module type, the parameter
  /// and the wrapper that already holds it when any parameter is claimed.
  WrapClaim(const nn::Module& module, std::string wrapper);
  ~WrapClaim();
  WrapClaim(WrapClaim&& o) noexcept;
  WrapClaim& operator=(WrapClaim&& o) noexcept;
  WrapClaim(const WrapClaim&) = delete;
  WrapClaim& operator=(const WrapClaim&) = delete;

 private:
  void release();
  std::vector<const TensorImpl*> params_;
};

}  // namespace loom::parallel
