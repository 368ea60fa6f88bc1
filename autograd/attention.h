// Which implementation loom::scaled_dot_product_attention (autograd/functions.h)
// runs for given inputs, and in which dtype: the fused CPU kernel, the CUDA
// flash-attention entries of the kernel table, or recorded small ops.
#pragma once

#include <cstdint>

#include "tensor/device.h"
#include "tensor/dtype.h"

namespace loom::detail {

enum class SdpaPath : uint8_t {
  kCpuFused,   // autograd/attention.cc's BLAS kernel; any dtype (computed in f32, or f64), any dropout
  kCudaFused,  // CudaKernels::sdpa_forward / sdpa_backward (tensor/cuda/attention.cu)
  kComposed,   // matmul, masked_fill, softmax, dropout, matmul as recorded ops
};

struct SdpaRoute {
  SdpaPath path = SdpaPath::kComposed;
  /// The dtype the fused kernels compute in; q, k, v are converted to it.
  DType compute = DType::f32;
};

/// CPU: the fused kernel in f64 when any input is f64, else f32. CUDA: the
/// flash-attention entries when no dropout is applied (dropout_p == 0 after
/// the training flag), no input is f64 and the head dim has a kernel (32, 64,
/// 96, 128); in q's dtype when q, k, v share it, else in f32. Otherwise
/// (dropout, f64 for gradient checks, other head dims) the composed ops.
SdpaRoute sdpa_route(Device device, DType q, DType k, DType v, int64_t head_dim, double dropout_p);

}  // namespace loom::detail
