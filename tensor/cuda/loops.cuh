// Elementwise loops shared by the CUDA kernel files: out[i] = f(in_0[i], ...)
// for up to three inputs of any element types over one shape. Dense operands
// whose pointers are aligned take vector loads and stores (16 bytes per thread
// for 4-byte types); any other layout goes through the strided Indexer. The
// functor gets each input as its accumulation type (f32 for bf16/f16) and its
// result is stored with from_acc (round to nearest even for the 16-bit floats).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "tensor/cuda/common.cuh"

namespace loom::cuda_detail {

/// V elements of T loaded or stored as one aligned access.
template <typename T, int V>
struct alignas(sizeof(T) * V) VecOf {
  T v[V];
};

/// f applied to the first NIN of the three inputs at p0, p1, p2.
template <int NIN, typename F, typename I0, typename I1, typename I2>
__device__ __forceinline__ auto call_loaded(const F& f, const I0* p0, const I1* p1, const I2* p2) {
  if constexpr (NIN == 1) {
    return f(load_acc(p0));
  } else if constexpr (NIN == 2) {
    return f(load_acc(p0), load_acc(p1));
  } else {
    return f(load_acc(p0), load_acc(p1), load_acc(p2));
  }
}

/// Dense operands: each thread handles V consecutive elements per step with one
/// vector access per operand; the n % V tail goes element by element. `out` may
/// alias an input (same element, same thread), so no __restrict__.
template <int V, int NIN, typename Out, typename I0, typename I1, typename I2, typename F>
__global__ void __launch_bounds__(kBlock)
    loop_dense_kernel(int64_t n, F f, Out* out, const I0* x0, const I1* x1, const I2* x2) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nv = n / V;
  for (int64_t j = first; j < nv; j += step) {
    VecOf<I0, V> a = reinterpret_cast<const VecOf<I0, V>*>(x0)[j];
    VecOf<I1, V> b;
    VecOf<I2, V> c;
    if constexpr (NIN >= 2) b = reinterpret_cast<const VecOf<I1, V>*>(x1)[j];
    if constexpr (NIN >= 3) c = reinterpret_cast<const VecOf<I2, V>*>(x2)[j];
    VecOf<Out, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_acc<Out>(call_loaded<NIN>(f, &a.v[k], &b.v[k], &c.v[k]));
    reinterpret_cast<VecOf<Out, V>*>(out)[j] = o;
  }
  for (int64_t i = nv * V + first; i < n; i += step)
    out[i] = from_acc<Out>(call_loaded<NIN>(f, x0 + i, x1 + i, x2 + i));
}

/// Any strides (0 for broadcast dims): element offsets from the Indexer; one
/// merged dim (a dense or evenly strided operand set) skips the divisions.
template <int NIN, typename Out, typename I0, typename I1, typename I2, typename F>
__global__ void __launch_bounds__(kBlock)
    loop_strided_kernel(int64_t n, Indexer<NIN + 1> ix, F f, Out* out, const I0* x0, const I1* x1, const I2* x2) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[NIN + 1];
    if (ix.ndim == 1) {
#pragma unroll
      for (int k = 0; k <= NIN; ++k) off[k] = i * ix.strides[k][0];
    } else {
      ix.offsets(i, off);
    }
    const I1* p1 = x1;
    const I2* p2 = x2;
    if constexpr (NIN >= 2) p1 += off[2];
    if constexpr (NIN >= 3) p2 += off[NIN >= 3 ? 3 : 0];
    out[off[0]] = from_acc<Out>(call_loaded<NIN>(f, x0 + off[1], p1, p2));
  }
}

template <typename T, int V>
bool aligned_for(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * V) == 0;
}

/// Runs out = f(ins...) on `stream` for NIN = ins.size() inputs of types I0, I1, I2
/// (the unused ones are ignored). Every tensor has out's shape (inputs expanded);
/// the caller has checked dtypes and devices. `op` names the op in errors.
template <typename Out, typename I0, typename I1 = uint8_t, typename I2 = uint8_t, size_t NIN, typename F>
void launch_loop(const char* op, const Tensor& out, const std::array<const Tensor*, NIN>& ins, const F& f,
                 cudaStream_t stream) {
  static_assert(NIN >= 1 && NIN <= 3, "launch_loop takes one to three inputs");
  constexpr int kIn = static_cast<int>(NIN);
  const int64_t n = out.numel();
  if (n == 0) return;
  Out* o = dptr<Out>(out);
  const I0* x0 = dptr<const I0>(*ins[0]);
  const I1* x1 = nullptr;
  const I2* x2 = nullptr;
  if constexpr (NIN >= 2) x1 = dptr<const I1>(*ins[1]);
  if constexpr (NIN >= 3) x2 = dptr<const I2>(*ins[2]);

  bool dense = out.is_contiguous();
  for (const Tensor* t : ins) dense = dense && t->is_contiguous();
  // 16-byte accesses for 4-byte types, 8 elements for 1- and 2-byte types, 32 bytes for 8-byte types.
  constexpr size_t kMaxSize = std::max({sizeof(Out), sizeof(I0), NIN >= 2 ? sizeof(I1) : 1, NIN >= 3 ? sizeof(I2) : 1});
  constexpr int V = kMaxSize <= 2 ? 8 : 4;
  if (dense) {
    bool aligned = aligned_for<Out, V>(o) && aligned_for<I0, V>(x0);
    if constexpr (NIN >= 2) aligned = aligned && aligned_for<I1, V>(x1);
    if constexpr (NIN >= 3) aligned = aligned && aligned_for<I2, V>(x2);
    if (aligned) {
      loop_dense_kernel<V, kIn, Out, I0, I1, I2><<<grid_for(n, kBlock, V), kBlock, 0, stream>>>(n, f, o, x0, x1, x2);
      LOOM_CUDA_LAUNCH_CHECK("loop_dense_kernel");
      return;
    }
  }
  std::array<const Tensor*, NIN + 1> all;
  all[0] = &out;
  for (size_t k = 0; k < NIN; ++k) all[k + 1] = ins[k];
  const Indexer<kIn + 1> ix = make_indexer<kIn + 1>(all, out.sizes(), op);
  loop_strided_kernel<kIn, Out, I0, I1, I2><<<grid_for(n), kBlock, 0, stream>>>(n, ix, f, o, x0, x1, x2);
  LOOM_CUDA_LAUNCH_CHECK("loop_strided_kernel");
}

}  // namespace loom::cuda_detail
