// The seam between tensor/cpu/conv.cc's ops and the cuDNN convolution in
// tensor/cuda/conv_cudnn.cu: plain C++, no CUDA header. The table is filled on
// first use in a CUDA build (empty otherwise); an op on CUDA tensors whose entry
// is empty throws Unsupported naming the op.
#pragma once

#include "tensor/conv.h"

namespace loom::detail {

/// cuDNN entries. Every tensor is contiguous, on one CUDA device, of one dtype (f32/f64/f16/bf16), already checked
/// by the op; outputs are allocated by the caller. They run on the device's current stream.
struct ConvCudaKernels {
  /// y (N, OC, OH, OW) = conv2d(x, w) + b (b may be undefined).
  void (*conv2d_forward)(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b,
                         const Conv2dOptions& opts) = nullptr;
  /// dx (x's shape) from dy and w.
  void (*conv2d_backward_input)(const Tensor& dx, const Tensor& dy, const Tensor& w,
                                const Conv2dOptions& opts) = nullptr;
  /// dw (w's shape) from dy and x.
  void (*conv2d_backward_weight)(const Tensor& dw, const Tensor& dy, const Tensor& x,
                                 const Conv2dOptions& opts) = nullptr;
  /// db (OC) = dy summed over N, H, W.
  void (*conv2d_backward_bias)(const Tensor& db, const Tensor& dy) = nullptr;
};

/// The table (empty in a build without CUDA).
const ConvCudaKernels& conv_cuda_kernels();

#if LOOM_WITH_CUDA
/// Fills the table (tensor/cuda/conv_cudnn.cu); a no-op where cudnn.h was not found at build time.
void register_conv_cudnn(ConvCudaKernels& kernels);
#endif

}  // namespace loom::detail
