// Where a parameter's values live across tensor-parallel ranks. Tensor-parallel
// layers record, for each parameter they shard, which dimension is split and
// which global rows/columns this rank's local tensor holds; FullyShard (to clip
// gradients across TP and FSDP at once) and checkpoints (to write chunks with
// their global coordinates) read it. A parameter without a record is
// replicated across the tp group.
#pragma once

#include <optional>
#include <vector>

#include "tensor/tensor.h"

namespace loom::parallel {

/// Along `dim`, local indices [local_start, local_start + length) are global
/// indices [global_start, global_start + length).
struct TpSegment {
  int64_t local_start = 0, global_start = 0, length = 0;
};

struct TpPlacement {
  int dim = 0;                      // the split dimension of the parameter
  Shape global_shape;               // the unsplit parameter's shape
  std::vector<TpSegment> segments;  // cover the local dim exactly, in local order (a fused qkv has three)
};

/// Records p's placement (keyed by p's TensorImpl, so it survives in-place
/// storage changes such as FSDP's). Throws when the segments do not cover p's dim.
void set_tp_placement(const Tensor& p, TpPlacement placement);
/// p's placement, or nullopt when p is replicated across the tp group.
std::optional<TpPlacement> tp_placement(const Tensor& p);
/// Forgets p's placement (when its module is destroyed or reconverted).
void clear_tp_placement(const Tensor& p);

}  // namespace loom::parallel
