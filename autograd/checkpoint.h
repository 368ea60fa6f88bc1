// Activation checkpointing (torch.utils.checkpoint): run a function without keeping its activations and recompute it
// in backward, with the RNG states and the autocast state of the first run replayed, so the recomputed values (dropout
// masks included) are the same bits. The selective variant keeps the outputs of the matrix products (linear) and of
// the attention op from the first run and recomputes only the cheap ops around them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace loom::autograd {

/// What a checkpointed region keeps from its forward for backward.
enum class CheckpointMode {
  kNone,       // nothing special: every op saves what it saves
  kFull,       // only the inputs; everything is recomputed in backward
  kSelective,  // the inputs and the outputs of linear, linear_gelu (pre; out too in bf16/f16) and attention (out, lse)
};

/// "none", "full" or "selective".
const char* checkpoint_mode_name(CheckpointMode mode);

using CheckpointFunction = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

struct CheckpointOptions {
  CheckpointMode mode = CheckpointMode::kFull;
  /// Restore, for the recompute, the state every Generator had when the forward first drew from it (and put back the
  /// states they have when the recompute starts, afterwards).
  bool preserve_rng_state = true;
  /// Names the region in errors ("transformer.h.3 (GPT2Block)").
  std::string name = "checkpointed function";
};

/// Runs fn(inputs) without recording its graph (grad mode off) and returns its outputs, linked to inputs by one node
/// that, when backward reaches it, reruns fn on detached copies of the inputs with grad mode on (RNG states and the
/// autocast state of the first run restored) and backpropagates through that graph: parameters used inside fn get
/// their gradients there (their hooks fire then, once per backward), inputs get theirs from the node. Outside grad
/// mode it is fn(inputs). fn is kept until backward: it must not capture locals by reference, only what outlives the
/// backward pass (the module). fn must compute the same thing twice: a recompute whose outputs differ in number, shape
/// or dtype throws InvalidArgument naming the region. The outputs require grad (even when no input does: fn may use
/// parameters).
std::vector<Tensor> checkpoint(const CheckpointFunction& fn, const std::vector<Tensor>& inputs,
                               const CheckpointOptions& opts = {});

/// True on this thread while a checkpointed region is recomputed in backward (FullyShard does not prefetch the next
/// unit or reshard after such a forward).
bool in_checkpoint_recompute();

namespace detail {
/// The op-level cache of the selective mode; null when no selective region runs on this thread. Ops whose outputs the
/// selective mode keeps call save() with them in the first run and take them back with replay() in the recompute.
class SelectiveCache {
 public:
  /// True in the recompute: replay() the outputs instead of computing them.
  bool replaying() const { return replaying_; }
  /// First run: keeps copies of the handles of the op's outputs.
  void save(const char* op, const std::vector<Tensor>& outputs);
  /// Recompute: the outputs save() kept for the same op at the same position; throws naming the region when the
  /// recompute runs other ops than the first run.
  std::vector<Tensor> replay(const char* op);

  struct Entry {
    std::string op;
    std::vector<Tensor> outputs;
  };
  std::vector<Entry> entries;
  size_t next = 0;
  bool replaying_ = false;
  std::string region;
};
SelectiveCache* selective_cache();
}  // namespace detail

}  // namespace loom::autograd
