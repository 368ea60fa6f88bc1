// softmax / log_softmax along the last dim of a contiguous (N, D) tensor and
// their backward: one block per row, statistics in f32 (f64 for f64), an online
// max / sum-of-exp in one read of the row, then one pass that writes it.
#include <limits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/row_common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

// y (N, D) = softmax or log_softmax of x (N, D) along D.
template <typename T>
__global__ void __launch_bounds__(kRowThreads) softmax_kernel(T* y, const T* x, int64_t N, int64_t D, bool log) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    A m, s;
    row_max_sumexp<T>(xr, D, scratch, m, s);
    if (log) {
      const A shift = m + log_acc(s);
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = from_acc<T>(load_acc(xr + i) - shift);
    } else {
      const A inv = A(1) / s;
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = from_acc<T>(exp_acc(load_acc(xr + i) - m) * inv);
    }
  }
}

// dx (N, D) from dy and the forward output y: softmax: y * (dy - <dy, y>); log: dy - exp(y) * sum(dy).
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    softmax_backward_kernel(T* dx, const T* dy, const T* y, int64_t N, int64_t D, bool log) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* g = dy + r * D;
    const T* yr = y + r * D;
    T* o = dx + r * D;
    A part = A(0);
    if (log) {
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x) part += load_acc(g + i);
    } else {
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x) part += load_acc(g + i) * load_acc(yr + i);
    }
    const A tot = block_sum(part, scratch);
    if (log) {
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        o[i] = from_acc<T>(load_acc(g + i) - exp_acc(load_acc(yr + i)) * tot);
    } else {
      for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        const A yi = load_acc(yr + i);
        o[i] = from_acc<T>(yi * (load_acc(g + i) - tot));
      }
    }
  }
}

// ---------------------------------------------------------------- launchers

/// Rows and row length of a tensor taken as (N, D) along its last dim (a 0-dim tensor is one row of 1).
void rows_of(const Tensor& t, int64_t& N, int64_t& D) {
  D = t.dim() == 0 ? 1 : t.size(-1);
  N = D == 0 ? 0 : t.numel() / D;
}

void check_rows(const char* op, const Tensor& a, const Tensor& b) {
  LOOM_CHECK(a.is_contiguous() && b.is_contiguous() && a.dtype() == b.dtype() && a.numel() == b.numel(), op,
             ": CUDA kernel expects contiguous operands of one dtype and size, got ", shape_str(a.sizes()), " and ",
             shape_str(b.sizes()));
}

template <typename T>
void launch_softmax(cudaStream_t stream, T* y, const T* x, int64_t N, int64_t D, bool log) {
  if (N == 0) return;
  softmax_kernel<T><<<row_grid(N), row_block_size(D), 0, stream>>>(y, x, N, D, log);
  LOOM_CUDA_LAUNCH_CHECK("softmax_kernel");
}

template <typename T>
void launch_softmax_backward(cudaStream_t stream, T* dx, const T* dy, const T* y, int64_t N, int64_t D, bool log) {
  if (N == 0) return;
  softmax_backward_kernel<T><<<row_grid(N), row_block_size(D), 0, stream>>>(dx, dy, y, N, D, log);
  LOOM_CUDA_LAUNCH_CHECK("softmax_backward_kernel");
}

void softmax_entry(const Tensor& y, const Tensor& x, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_rows(op, y, x);
  DeviceScope scope(x.device().index);
  int64_t N, D;
  rows_of(x, N, D);
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    launch_softmax<T>(stream_for(x), dptr<T>(y), dptr<T>(x), N, D, log);
  });
}

void softmax_backward_entry(const Tensor& dx, const Tensor& dy, const Tensor& y, bool log) {
  const char* op = log ? "log_softmax_backward" : "softmax_backward";
  check_rows(op, dx, dy);
  check_rows(op, dx, y);
  DeviceScope scope(y.device().index);
  int64_t N, D;
  rows_of(y, N, D);
  dispatch_floating(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    launch_softmax_backward<T>(stream_for(y), dptr<T>(dx), dptr<T>(dy), dptr<T>(y), N, D, log);
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {
void register_softmax(CudaKernels& k) {
  k.softmax = &cuda_detail::softmax_entry;
  k.softmax_backward = &cuda_detail::softmax_backward_entry;
}
}  // namespace loom::detail
