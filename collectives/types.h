// Small value types shared by the ProcessGroup and its backends: reduce ops,
// the per-collective options structs (all fields defaulted) and the op names.
#pragma once

#include <chrono>
#include <string>

namespace loom::collectives {

using Millis = std::chrono::milliseconds;

/// Element-wise reduction of allreduce/reduce_scatter. kAvg is sum / group
/// size and is defined for floating dtypes only.
enum class ReduceOp { kSum, kAvg, kMin, kMax, kProduct };
const char* reduce_op_name(ReduceOp op);

/// Timeout 0 means "the group's default" (ProcessGroupOptions::timeout).
struct AllreduceOptions {
  ReduceOp op = ReduceOp::kSum;
  Millis timeout{0};
  /// kSum/kAvg only: add the ranks' contributions in rank order (gather them all, then add 0, 1, 2, … on every
  /// rank), so the result is the same bits on every backend, algorithm and rank — what comparisons with single-rank
  /// training need. Costs a W-times buffer and W-1 times the traffic of a ring; host tensors only.
  bool rank_ordered = false;
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::kSum;
  Millis timeout{0};
  /// As AllreduceOptions::rank_ordered (an all_to_all, then the chunks added in rank order).
  bool rank_ordered = false;
};
struct AllGatherOptions {
  Millis timeout{0};
};
struct BroadcastOptions {
  int root = 0;  // rank within the group
  Millis timeout{0};
};
struct BarrierOptions {
  Millis timeout{0};
};
struct AllToAllOptions {
  Millis timeout{0};
};
struct SendRecvOptions {
  int tag = 0;  // matches a send with a recv; 0..2^24-1
  Millis timeout{0};
};

}  // namespace loom::collectives
