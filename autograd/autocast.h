// Autocast: a mixed-precision policy for a region of forward code, as
// torch.autocast does. Inside an AutocastGuard, matrix products (matmul, linear,
// scaled_dot_product_attention) run in the low-precision dtype (bf16 by
// default) with f32 accumulation, while softmax, log_softmax, layer/RMS norm and
// cross-entropy run in f32; elementwise ops promote as always (f32 + bf16 is
// f32). Casts are recorded, so gradients flow back to f32 parameters in f32.
#pragma once

#include "tensor/tensor.h"

namespace loom {

/// Enables autocast for its scope on this thread (nests; the innermost wins).
/// Casts of leaf tensors that require grad (parameters) are cached until the
/// outermost guard ends, so a weight used twice (GPT-2's tied embedding) is cast
/// once per forward. Put the forward and the loss inside it; call backward()
/// and the optimizer step outside, as with torch.autocast.
class AutocastGuard {
 public:
  /// lowp must be bf16 or f16 (InvalidArgument otherwise); enabled=false turns
  /// autocast off for the scope (e.g. around a part that must stay f32).
  explicit AutocastGuard(DType lowp = DType::bf16, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool prev_enabled_;
  DType prev_dtype_;
};

/// True inside an enabled AutocastGuard on this thread.
bool autocast_enabled();
/// The low-precision dtype of the innermost guard.
DType autocast_dtype();

namespace autograd::detail {
/// For ops in the low-precision list: t cast to the autocast dtype when it is a
/// defined f32 tensor and autocast is on; t itself otherwise.
Tensor autocast_lowp(const Tensor& t);
/// For ops in the f32 list: t cast to f32 when it is a defined bf16/f16 tensor
/// and autocast is on; t itself otherwise.
Tensor autocast_f32(const Tensor& t);
/// Turns autocast off for its scope so an op that has cast its inputs runs once,
/// unchanged, on them.
class AutocastSuspend {
 public:
  AutocastSuspend();
  ~AutocastSuspend();
  AutocastSuspend(const AutocastSuspend&) = delete;
  AutocastSuspend& operator=(const AutocastSuspend&) = delete;

 private:
  bool prev_;
};
}  // namespace autograd::detail

}  // namespace loom
