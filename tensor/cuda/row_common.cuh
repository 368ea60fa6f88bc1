// Shared by the row kernels (softmax, norms, cross-entropy, embedding): warp and
// block reductions (shuffles within a warp, one shared slot per warp across the
// block; fixed order, so a row reduces to the same bits on every run; blocks a
// multiple of 32 threads, at most 1024), row launch geometry, f32/f64 math and
// the DType of a device element type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "tensor/cuda/common.cuh"

namespace loom::cuda_detail {

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

/// Sum of v over the block, returned to every thread. `scratch` holds 32 values
/// of A in shared memory; the call may reuse it right after it returns.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // a previous call's readers are done with scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : A(0);
  return warp_sum(v);
}

/// Max of v over the block (NaN does not win a comparison, as in the CPU loops), to every thread.
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -std::numeric_limits<A>::infinity();
  return warp_max(v);
}

/// Default cap of row_block_size(): the __launch_bounds__ of a row kernel launched without a cap.
constexpr int kRowThreads = 512;

/// Threads per block for a kernel that gives one block to a row of n elements:
/// n rounded up to a whole warp, between 32 and `cap` (a multiple of 32).
inline int row_block_size(int64_t n, int cap = kRowThreads) {
  const int64_t t = (n + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > cap ? cap : t));
}

/// Blocks for a grid-stride loop over `rows` rows, one block per row up to a cap.
inline unsigned row_grid(int64_t rows) {
  const int64_t cap = 65535LL * 32;
  return static_cast<unsigned>(rows < 1 ? 1 : (rows > cap ? cap : rows));
}

/// The DType of a device element type (float, double, __nv_bfloat16, __half, int32_t, int64_t, uint8_t).
template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::f64;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return DType::bf16;
  else if constexpr (std::is_same_v<T, __half>)
    return DType::f16;
  else if constexpr (std::is_same_v<T, int32_t>)
    return DType::i32;
  else if constexpr (std::is_same_v<T, int64_t>)
    return DType::i64;
  else
    return DType::u8;
}
/// The DType in which statistics of T rows are kept: f64 for f64, else f32.
template <typename T>
constexpr DType acc_dtype() {
  return std::is_same_v<T, double> ? DType::f64 : DType::f32;
}

/// exp and log in the accumulation type (f32 or f64).
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }

/// Folds one value into a running (max m, sum of exp(x - m) s); -inf adds nothing, NaN makes s NaN.
template <typename A>
__device__ __forceinline__ void online_add(A v, A& m, A& s) {
  if (v > m) {
    s = (m == -std::numeric_limits<A>::infinity() ? s : s * exp_acc(m - v)) + A(1);  // s is 0 or NaN at -inf
    m = v;
  } else if (v != -std::numeric_limits<A>::infinity()) {
    s += exp_acc(v - m);
  }
}

/// The row's max and sum of exp(x - max) over the block, to every thread.
template <typename T, typename A = acc_t<T>>
__device__ __forceinline__ void row_max_sumexp(const T* x, int64_t D, A* scratch, A& m_out, A& s_out) {
  A m = -std::numeric_limits<A>::infinity(), s = A(0);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) online_add(load_acc(x + i), m, s);
  const A M = block_max(m, scratch);
  // A thread whose values were all -inf (or none) holds s = 0.
  const A scaled = m == -std::numeric_limits<A>::infinity() ? A(0) : s * exp_acc(m - M);
  // A NaN anywhere makes the row NaN, as on the CPU.
  s_out = block_sum(s != s ? s : scaled, scratch);
  m_out = M;
}

}  // namespace loom::cuda_detail
