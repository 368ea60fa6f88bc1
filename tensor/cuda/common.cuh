// Shared by the CUDA kernel files: error checks that throw loom errors, the
// current stream, launch geometry, element types (bf16/f16 through cuda_bf16.h
// and cuda_fp16.h, computed in f32) and strided N-d indexing for kernels that
// take views as they lie.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>

#include "tensor/error.h"
#include "tensor/tensor.h"

namespace loom::cuda_detail {

// ---------------------------------------------------------------- errors
[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  LOOM_THROW(Error, what, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", file, ":", line);
}
}  // namespace loom::cuda_detail

/// Throws loom::Error naming the call and the CUDA error when `expr` fails.
#define LOOM_CUDA_CHECK(expr)                                                           \
  do {                                                                                  \
    cudaError_t loom_cuda_err_ = (expr);                                                \
    if (loom_cuda_err_ != cudaSuccess)                                                  \
      ::loom::cuda_detail::throw_cuda_error(loom_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

/// After a <<<...>>> launch: throws naming the kernel when the launch failed.
#define LOOM_CUDA_LAUNCH_CHECK(kernel_name)                                                                \
  do {                                                                                                     \
    cudaError_t loom_cuda_err_ = cudaGetLastError();                                                       \
    if (loom_cuda_err_ != cudaSuccess)                                                                     \
      ::loom::cuda_detail::throw_cuda_error(loom_cuda_err_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)

namespace loom::cuda_detail {

// ---------------------------------------------------------------- streams and devices
/// The current stream of `device` (tensor/cuda/runtime.cu): the one a StreamGuard
/// set on this thread, else the device's default compute stream.
cudaStream_t current_stream(int device);

/// Makes `device` current for its scope and restores the previous one.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    LOOM_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) LOOM_CUDA_CHECK(cudaSetDevice(device));
    cur_ = device;
  }
  ~DeviceScope() {
    if (prev_ != cur_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
  int cur_ = 0;
};

/// The stream an op on tensor t runs on (after making t's device current through a DeviceScope).
inline cudaStream_t stream_for(const Tensor& t) { return current_stream(t.device().index); }

// ---------------------------------------------------------------- launch geometry
constexpr int kBlock = 256;
/// Blocks for n elements at `per_thread` each, capped so grid-stride loops cover the rest.
inline unsigned grid_for(int64_t n, int block = kBlock, int per_thread = 1) {
  const int64_t want = (n + static_cast<int64_t>(block) * per_thread - 1) / (static_cast<int64_t>(block) * per_thread);
  const int64_t cap = 65535LL * 16;
  return static_cast<unsigned>(want < 1 ? 1 : (want > cap ? cap : want));
}

// ---------------------------------------------------------------- element types
/// Device element type of a DType and its accumulation type (f32 for the 16-bit floats).
template <typename T>
struct Acc {
  using type = T;
};
template <>
struct Acc<__nv_bfloat16> {
  using type = float;
};
template <>
struct Acc<__half> {
  using type = float;
};
template <typename T>
using acc_t = typename Acc<T>::type;

template <typename T>
__device__ __forceinline__ acc_t<T> load_acc(const T* p) {
  return static_cast<acc_t<T>>(*p);
}
template <>
__device__ __forceinline__ float load_acc<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <>
__device__ __forceinline__ float load_acc<__half>(const __half* p) {
  return __half2float(*p);
}
/// Converts an accumulated value to T (round to nearest even for bf16/f16).
template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

/// Calls f with a value of the device element type of dt for the floating dtypes only (f32, f64, bf16, f16);
/// other dtypes throw Unsupported naming op.
template <typename F>
void dispatch_floating(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::bf16:
      return f(__nv_bfloat16{});
    case DType::f16:
      return f(__half{});
    default:
      break;
  }
  LOOM_THROW(Unsupported, op, ": no CUDA kernel for dtype ", dtype_name(dt), " (floating dtypes only)");
}
/// As dispatch_floating, and also i32, i64, u8.
template <typename F>
void dispatch_all(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    case DType::u8:
      return f(uint8_t{});
    default:
      return dispatch_floating(dt, op, f);
  }
}

// ---------------------------------------------------------------- strided indexing
constexpr int kMaxDims = 8;

/// Maps a row-major linear index of a common shape to the element offsets of up
/// to N operands with their own strides (0 for broadcast dims). Built on the host
/// from tensors already expanded to the shape; passed to kernels by value.
template <int N>
struct Indexer {
  int ndim = 0;
  int64_t sizes[kMaxDims];
  int64_t strides[N][kMaxDims];  // in elements

  __device__ __forceinline__ void offsets(int64_t linear, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t s = sizes[d];
      const int64_t i = linear % s;
      linear /= s;
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
    }
  }
};

/// An Indexer over tensors that all have `shape`; drops size-1 dims and merges
/// dims that are contiguous in every operand. Throws Unsupported beyond kMaxDims
/// dims after merging.
template <int N>
Indexer<N> make_indexer(const std::array<const Tensor*, N>& ts, const Shape& shape, const char* op) {
  Indexer<N> ix;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = ix.ndim > 0;
    for (int k = 0; k < N && merge; ++k)
      merge = ix.strides[k][ix.ndim - 1] == ts[k]->stride(static_cast<int64_t>(d)) * shape[d];
    if (merge) {
      ix.sizes[ix.ndim - 1] *= shape[d];
      for (int k = 0; k < N; ++k) ix.strides[k][ix.ndim - 1] = ts[k]->stride(static_cast<int64_t>(d));
      continue;
    }
    if (ix.ndim == kMaxDims)
      LOOM_THROW(Unsupported, op, ": a view of shape ", shape_str(shape), " has more than ", kMaxDims,
                 " dims that cannot be merged; make it contiguous first");
    ix.sizes[ix.ndim] = shape[d];
    for (int k = 0; k < N; ++k) ix.strides[k][ix.ndim] = ts[k]->stride(static_cast<int64_t>(d));
    ++ix.ndim;
  }
  return ix;
}

/// Typed device pointer to a tensor's first element.
template <typename T>
T* dptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace loom::cuda_detail
