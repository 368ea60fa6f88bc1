// Element-wise helpers shared by the ProcessGroup and the CPU backends:
// 16-bit float <-> f32 conversion (so reductions accumulate in f32), scaling
// for kAvg, and a typed reduction of one buffer into another.
#pragma once

#include <cstddef>

#include "collectives/types.h"
#include "tensor/tensor.h"

namespace loom::collectives::detail {

/// A new contiguous f32 tensor holding t (f16 or bf16) converted exactly.
Tensor half_to_f32(const Tensor& t);
/// Writes f (f32) into t (f16/bf16), rounding to nearest even.
void f32_to_half(const Tensor& f, Tensor& t);
/// t *= s for floating t (f32/f64).
void scale_inplace(Tensor& t, double s);
/// acc[i] = op(acc[i], b[i]) for n elements of dtype (f32/f64/i32/i64; not kAvg).
void reduce_into(void* acc, const void* b, size_t n, DType dtype, ReduceOp op);
/// out (n elements) = parts[0] + parts[1] + … + parts[w-1] (parts: w * n elements, rank-major), added in that order
/// in f32 for 16-bit floats and in out's dtype otherwise, then multiplied by scale when it is not 1. Host tensors.
void ordered_sum(Tensor& out, const Tensor& parts, int w, double scale);
/// True for the dtypes collectives accept: f32, f64, f16, bf16, i32, i64.
bool collective_dtype(DType d);

}  // namespace loom::collectives::detail
