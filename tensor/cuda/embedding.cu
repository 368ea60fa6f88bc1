// Embedding lookup and its deterministic backward, and the index check that
// embedding, index_select and cross_entropy run first for their errors. The
// backward sorts (index, position) pairs with CUB's stable radix sort, then one
// block owns each distinct index and sums its gradient rows in position order:
// no float atomics, the same bits on every run (and the CPU kernel's order).
#include <cub/device/device_radix_sort.cuh>

#include <climits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/row_common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

/// Threads per block (at most) of the row kernels (lookup, backward): their __launch_bounds__.
constexpr int kEmbeddingThreads = 256;

// out (N, C) = weight rows idx (N); weight (V, C) has row stride ws and column stride 1.
// An index outside [0, V) (the op has rejected those already) gives a zero row, not a fault.
template <typename T, typename I>
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_kernel(T* __restrict__ out, const T* __restrict__ weight, const I* __restrict__ idx, int64_t N, int64_t C,
                     int64_t V, int64_t ws) {
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const int64_t v = static_cast<int64_t>(idx[r]);
    T* o = out + r * C;
    if (v < 0 || v >= V) {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = T{};
      continue;
    }
    const T* w = weight + v * ws;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = w[c];
  }
}

// keys (N) = idx as u32 (clamped into [0, V)), positions (N) = 0..N-1: the pairs to sort.
template <typename I>
__global__ void __launch_bounds__(kBlock)
    embedding_sort_keys_kernel(uint32_t* __restrict__ keys, int32_t* __restrict__ pos, const I* __restrict__ idx,
                               int64_t N, int64_t V) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t v = static_cast<int64_t>(idx[i]);
    v = v < 0 ? 0 : (v >= V ? V - 1 : v);
    keys[i] = static_cast<uint32_t>(v);
    pos[i] = static_cast<int32_t>(i);
  }
}

// For each run of equal keys in the sorted keys (N), the block at the run's first
// position adds grad (N, C) rows at the run's positions, in order, into dw (V, C).
template <typename T>
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_backward_kernel(T* __restrict__ dw, const T* __restrict__ grad, const uint32_t* __restrict__ keys,
                              const int32_t* __restrict__ pos, int64_t N, int64_t C) {
  using A = acc_t<T>;
  for (int64_t p = blockIdx.x; p < N; p += gridDim.x) {
    const uint32_t key = keys[p];
    if (p > 0 && keys[p - 1] == key) continue;  // not the first of its run
    int64_t end = p + 1;
    while (end < N && keys[end] == key) ++end;
    T* dst = dw + static_cast<int64_t>(key) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      A acc = A(0);
      for (int64_t q = p; q < end; ++q) acc += load_acc(grad + static_cast<int64_t>(pos[q]) * C + c);
      dst[c] = from_acc<T>(load_acc(dst + c) + acc);
    }
  }
}

// first = min i with idx[i] outside [0, limit) and != skip (first starts at ULLONG_MAX).
template <typename I>
__global__ void __launch_bounds__(kBlock)
    index_check_kernel(unsigned long long* __restrict__ first, const I* __restrict__ idx, int64_t n, int64_t limit,
                       int64_t skip) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = static_cast<int64_t>(idx[i]);
    if ((v < 0 || v >= limit) && v != skip) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

// ---------------------------------------------------------------- launchers

template <typename F>
void dispatch_index(DType dt, const char* op, F&& f) {
  if (dt == DType::i64) return f(int64_t{});
  if (dt == DType::i32) return f(int32_t{});
  LOOM_THROW(InvalidArgument, op, ": indices have dtype ", dtype_name(dt), "; expected int64 or int32");
}

void embedding_entry(const Tensor& out, const Tensor& weight, const Tensor& idx) {
  const char* op = "embedding";
  LOOM_CHECK(weight.dim() == 2 && idx.is_contiguous() && out.is_contiguous() && out.dtype() == weight.dtype(), op,
             ": CUDA kernel expects weight (V, C), contiguous indices and output, got weight ",
             shape_str(weight.sizes()), ", indices ", shape_str(idx.sizes()), ", out ", shape_str(out.sizes()));
  const int64_t V = weight.size(0), C = weight.size(1), N = idx.numel();
  LOOM_CHECK(out.numel() == N * C, op, ": out ", shape_str(out.sizes()), " does not hold ", N, " rows of ", C);
  LOOM_CHECK(C <= 1 || weight.stride(1) == 1, op, ": weight rows must be contiguous, got strides ",
             shape_str(weight.strides()));
  if (N == 0 || C == 0) return;
  DeviceScope scope(weight.device().index);
  dispatch_all(weight.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_index(idx.dtype(), op, [&](auto itag) {
      using I = decltype(itag);
      embedding_kernel<T, I><<<row_grid(N), row_block_size(C, kEmbeddingThreads), 0, stream_for(weight)>>>(
          dptr<T>(out), dptr<const T>(weight), dptr<const I>(idx), N, C, V, weight.stride(0));
      LOOM_CUDA_LAUNCH_CHECK("embedding_kernel");
    });
  });
}

void embedding_backward_entry(const Tensor& dw, const Tensor& grad, const Tensor& idx) {
  const char* op = "embedding_backward";
  LOOM_CHECK(
      dw.dim() == 2 && dw.is_contiguous() && grad.is_contiguous() && idx.is_contiguous() && grad.dtype() == dw.dtype(),
      op, ": CUDA kernel expects contiguous dw (V, C), grad and indices of one float dtype, got dw ",
      shape_str(dw.sizes()), ", grad ", shape_str(grad.sizes()));
  const int64_t V = dw.size(0), C = dw.size(1), N = idx.numel();
  LOOM_CHECK(grad.numel() == N * C, op, ": grad ", shape_str(grad.sizes()), " does not hold ", N, " rows of ", C);
  LOOM_CHECK(N <= INT_MAX && V <= static_cast<int64_t>(UINT_MAX), op, ": ", N, " indices into ", V,
             " rows is beyond the sort's 32-bit keys and positions");
  if (N == 0 || C == 0 || V == 0) return;
  DeviceScope scope(dw.device().index);
  const cudaStream_t stream = stream_for(dw);
  const Device dev = dw.device();
  // Sort keys: only the bits that can be set in an index below V.
  int end_bit = 1;
  while (end_bit < 32 && (static_cast<uint64_t>(V - 1) >> end_bit) != 0) ++end_bit;
  Tensor keys = empty({N}, DType::i32, dev), pos = empty({N}, DType::i32, dev);
  Tensor keys_sorted = empty({N}, DType::i32, dev), pos_sorted = empty({N}, DType::i32, dev);
  dispatch_index(idx.dtype(), op, [&](auto itag) {
    using I = decltype(itag);
    embedding_sort_keys_kernel<I>
        <<<grid_for(N), kBlock, 0, stream>>>(dptr<uint32_t>(keys), dptr<int32_t>(pos), dptr<const I>(idx), N, V);
    LOOM_CUDA_LAUNCH_CHECK("embedding_sort_keys_kernel");
  });
  size_t temp_bytes = 0;
  LOOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, dptr<const uint32_t>(keys),
                                                  dptr<uint32_t>(keys_sorted), dptr<const int32_t>(pos),
                                                  dptr<int32_t>(pos_sorted), static_cast<int>(N), 0, end_bit, stream));
  Tensor temp = empty({static_cast<int64_t>(temp_bytes > 0 ? temp_bytes : 1)}, DType::u8, dev);
  LOOM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, dptr<const uint32_t>(keys),
                                                  dptr<uint32_t>(keys_sorted), dptr<const int32_t>(pos),
                                                  dptr<int32_t>(pos_sorted), static_cast<int>(N), 0, end_bit, stream));
  dispatch_floating(dw.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_kernel<T><<<row_grid(N), row_block_size(C, kEmbeddingThreads), 0, stream>>>(
        dptr<T>(dw), dptr<const T>(grad), dptr<const uint32_t>(keys_sorted), dptr<const int32_t>(pos_sorted), N, C);
    LOOM_CUDA_LAUNCH_CHECK("embedding_backward_kernel");
  });
}

int64_t index_check_entry(const Tensor& idx, int64_t limit, int64_t skip) {
  const char* op = "index_check";
  LOOM_CHECK(idx.is_contiguous(), op, ": indices ", shape_str(idx.sizes()), " must be contiguous");
  const int64_t n = idx.numel();
  if (n == 0) return -1;
  DeviceScope scope(idx.device().index);
  const cudaStream_t stream = stream_for(idx);
  Tensor first = empty({1}, DType::i64, idx.device());
  LOOM_CUDA_CHECK(cudaMemsetAsync(first.data_ptr(), 0xff, sizeof(unsigned long long), stream));
  dispatch_index(idx.dtype(), op, [&](auto itag) {
    using I = decltype(itag);
    index_check_kernel<I>
        <<<grid_for(n), kBlock, 0, stream>>>(dptr<unsigned long long>(first), dptr<const I>(idx), n, limit, skip);
    LOOM_CUDA_LAUNCH_CHECK("index_check_kernel");
  });
  unsigned long long host = 0;
  LOOM_CUDA_CHECK(cudaMemcpyAsync(&host, first.data_ptr(), sizeof(host), cudaMemcpyDeviceToHost, stream));
  LOOM_CUDA_CHECK(cudaStreamSynchronize(stream));  // the one sync: the caller throws on the host
  return host == ULLONG_MAX ? -1 : static_cast<int64_t>(host);
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {
void register_embedding(CudaKernels& k) {
  k.embedding = &cuda_detail::embedding_entry;
  k.embedding_backward = &cuda_detail::embedding_backward_entry;
  k.index_check = &cuda_detail::index_check_entry;
}
}  // namespace loom::detail
