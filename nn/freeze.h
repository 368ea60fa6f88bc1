// Freezing parameters by name: `requires_grad = false` on every parameter whose dotted name matches one of a list of
// shell-style globs (`transformer.wte.*`, `transformer.h.*.attn.c_attn.weight`), as the recipe key model.freeze does.
// A frozen parameter gets no gradient, so no optimizer state, no gradient memory and no gradient traffic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/module.h"

namespace loom::nn {

/// Parameter and element counts after freeze_parameters (tied tensors counted once).
struct FreezeStats {
  int64_t trainable_params = 0, trainable_numel = 0;
  int64_t frozen_params = 0, frozen_numel = 0;
};

/// Counts m's trainable and frozen parameters.
FreezeStats freeze_stats(const Module& m);

/// Sets requires_grad = false on every parameter of m whose dotted name (any of its names, for tied tensors) matches
/// one of `globs` (fnmatch: `*` also matches dots), and returns the counts. Validates before changing anything: throws
/// InvalidArgument naming `key` and the index ("model.freeze[1] 'transformer.h.*.mlp.x' matches none of the 76
/// parameters; names look like transformer.h.0.mlp.c_fc.weight") when a glob matches no parameter, and naming the
/// counts when the globs would freeze every parameter that requires grad (nothing would train).
FreezeStats freeze_parameters(Module& m, const std::vector<std::string>& globs, const std::string& key = "freeze");

}  // namespace loom::nn
