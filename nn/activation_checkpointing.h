// Activation checkpointing of a model's modules: mark a submodule by its dotted name (the root's forward then checks
// that it ran), and the recipe-level spec `none | full | selective | selective:K` applied to a causal LM's blocks.
#pragma once

#include <string>

#include "nn/causal_lm.h"
#include "nn/module.h"

namespace loom::nn {

/// training.activation_checkpointing: what each transformer block keeps for backward.
struct ActivationCheckpointing {
  /// kNone: everything; kFull: each block's input only (the block is recomputed in backward); kSelective with every
  /// == 0: each block's input plus the outputs of its linear layers and attention (out, lse), the cheap ops (norms,
  /// GELU / SwiGLU, residual adds, RoPE, dropout masks) recomputed. GPT-2's fused c_fc + GELU keeps its matmul's
  /// output and recomputes the GELU in f32; in bf16/f16 (autocast) it keeps the GELU's output too, since the fused
  /// GELU runs on the unrounded product and gelu of the rounded one would not give its bits.
  CheckpointMode mode = CheckpointMode::kNone;
  /// selective:K (K >= 1): blocks 0, K, 2K, ... full, the others none (mode is kSelective).
  int every = 0;

  /// Parses "none", "full", "selective" or "selective:K" (K a positive integer). Throws InvalidArgument quoting the
  /// text and listing the accepted values.
  static ActivationCheckpointing parse(const std::string& text);
  /// The text parse() reads back.
  std::string str() const;
  /// What block i of a model keeps.
  CheckpointMode block_mode(size_t i) const;
};

/// Sets activation checkpointing `mode` on root's submodule `name` (dotted, as in named_modules(); "" is root itself)
/// and registers hooks on root so that a forward of root in which that module did not run throws InvalidArgument
/// naming it (a module that is never run cannot be recomputed: marking it is a mistake). kNone only clears the mode.
/// Throws InvalidArgument listing nothing but the bad name when root has no such submodule.
void checkpoint_module(Module& root, const std::string& name, CheckpointMode mode);

/// Applies spec to every block of model (model.blocks()), through checkpoint_module. Composes with DDP, FullyShard,
/// tensor parallelism and autocast in any order of wrapping.
void apply_activation_checkpointing(CausalLM& model, const ActivationCheckpointing& spec);

}  // namespace loom::nn
