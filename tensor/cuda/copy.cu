// CUDA copies: copy (broadcasting, dtype-converting, into strided views), fill,
// and the index_select gather. Conversions follow the CPU's (tensor/cpu/copy.cc):
// through f32 for the 16-bit floats (round to nearest even), float to u8
// through int64 as x86 truncates, and fill writes the bits the CPU would.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/loops.cuh"
#include "tensor/cuda_dispatch.h"
#include "tensor/ops.h"

namespace loom::cuda_detail {
namespace {

// ---------------------------------------------------------------- kernels
/// Identity on the source's accumulation value; from_acc then rounds or casts to D.
/// A floating value stored as u8 goes through int64 so that -1.0 gives 255 as on the cpu.
template <typename D, typename A>
struct ConvertF {
  __device__ auto operator()(A v) const {
    if constexpr (std::is_same_v<D, uint8_t> && std::is_floating_point_v<A>) {
      return static_cast<int64_t>(v);
    } else {
      return v;
    }
  }
};

template <typename U>
struct SameBitsF {
  __device__ U operator()(U v) const { return v; }
};

/// Writes `bits` (one element's bytes) into every element of a dense or strided tensor.
template <typename U>
__global__ void __launch_bounds__(kBlock) fill_dense_kernel(U* p, int64_t n, U bits) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) p[i] = bits;
}
template <typename U>
__global__ void __launch_bounds__(kBlock) fill_strided_kernel(U* p, int64_t n, Indexer<1> ix, U bits) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    int64_t off[1];
    ix.offsets(i, off);
    p[off[0]] = bits;
  }
}

/// out (outer, n, inner units) = src (outer, size, inner units) at rows index[k * index_stride]
/// (negative indices count from the end; the op has checked the range). U is a unit of bytes
/// (1 to 16) that divides a row and the alignment of both buffers.
template <typename U>
__global__ void __launch_bounds__(kBlock)
    index_select_kernel(U* __restrict__ out, const U* __restrict__ src, const int64_t* __restrict__ index,
                        int64_t index_stride, int64_t outer, int64_t n, int64_t size, int64_t inner) {
  const int64_t total = outer * n * inner;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += step) {
    const int64_t row = j / inner, col = j - row * inner;
    const int64_t o = row / n, k = row - o * n;
    int64_t r = index[k * index_stride];
    if (r < 0) r += size;
    if (r < 0 || r >= size) continue;  // unreachable after the op's check; never read out of bounds
    out[j] = src[(o * size + r) * inner + col];
  }
}

// ---------------------------------------------------------------- host side
void copy(const Tensor& dst, const Tensor& src) {
  LOOM_CHECK(dst.device() == src.device(), "copy_ (cuda): dst on ", dst.device().str(), ", src on ",
             src.device().str());
  LOOM_CHECK(dst.sizes() == src.sizes(), "copy_ (cuda): src of shape ", shape_str(src.sizes()),
             " is not expanded to the destination shape ", shape_str(dst.sizes()));
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceScope scope(dst.device().index);
  cudaStream_t s = stream_for(dst);
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.data_ptr() != src.data_ptr())
      LOOM_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), dst.nbytes(), cudaMemcpyDeviceToDevice, s));
    return;
  }
  const std::array<const Tensor*, 1> in{&src};
  if (dst.dtype() == src.dtype()) {  // the bits as they are (NaN payloads included), by element size
    switch (dst.element_size()) {
      case 1:
        return launch_loop<uint8_t, uint8_t>("copy_", dst, in, SameBitsF<uint8_t>{}, s);
      case 2:
        return launch_loop<uint16_t, uint16_t>("copy_", dst, in, SameBitsF<uint16_t>{}, s);
      case 4:
        return launch_loop<uint32_t, uint32_t>("copy_", dst, in, SameBitsF<uint32_t>{}, s);
      case 8:
        return launch_loop<uint64_t, uint64_t>("copy_", dst, in, SameBitsF<uint64_t>{}, s);
      default:
        break;
    }
  }
  dispatch_all(dst.dtype(), "copy_", [&](auto dtag) {
    using D = decltype(dtag);
    dispatch_all(src.dtype(), "copy_", [&](auto stag) {
      using S = decltype(stag);
      launch_loop<D, S>("copy_", dst, in, ConvertF<D, acc_t<S>>{}, s);
    });
  });
}

/// The element bytes the CPU's fill_ writes for value (tensor/cpu/copy.cc: convert<T>(value)).
template <typename U>
U host_bits(DType dt, double value) {
  U bits{};
  auto put = [&](auto v) {
    static_assert(sizeof(v) == sizeof(U));
    std::memcpy(&bits, &v, sizeof(U));
  };
  switch (dt) {
    case DType::f32:
      if constexpr (sizeof(U) == 4) put(static_cast<float>(value));
      break;
    case DType::f64:
      if constexpr (sizeof(U) == 8) put(value);
      break;
    case DType::f16:
      if constexpr (sizeof(U) == 2) put(Half::from_float(static_cast<float>(value)));
      break;
    case DType::bf16:
      if constexpr (sizeof(U) == 2) put(BFloat16::from_float(static_cast<float>(value)));
      break;
    case DType::i32:
      if constexpr (sizeof(U) == 4) put(static_cast<int32_t>(value));
      break;
    case DType::i64:
      if constexpr (sizeof(U) == 8) put(static_cast<int64_t>(value));
      break;
    case DType::u8:
      if constexpr (sizeof(U) == 1) put(static_cast<uint8_t>(value));
      break;
  }
  return bits;
}

template <typename U>
void fill_as(const Tensor& t, double value, cudaStream_t s) {
  const U bits = host_bits<U>(t.dtype(), value);
  const int64_t n = t.numel();
  U* p = dptr<U>(t);
  if (t.is_contiguous()) {
    if (bits == U{0}) {
      LOOM_CUDA_CHECK(cudaMemsetAsync(p, 0, t.nbytes(), s));
      return;
    }
    fill_dense_kernel<U><<<grid_for(n), kBlock, 0, s>>>(p, n, bits);
    LOOM_CUDA_LAUNCH_CHECK("fill_dense_kernel");
    return;
  }
  const Indexer<1> ix = make_indexer<1>({&t}, t.sizes(), "fill_");
  fill_strided_kernel<U><<<grid_for(n), kBlock, 0, s>>>(p, n, ix, bits);
  LOOM_CUDA_LAUNCH_CHECK("fill_strided_kernel");
}

void fill(const Tensor& t, double value) {
  if (t.numel() == 0) return;
  DeviceScope scope(t.device().index);
  cudaStream_t s = stream_for(t);
  switch (t.element_size()) {
    case 1:
      return fill_as<uint8_t>(t, value, s);
    case 2:
      return fill_as<uint16_t>(t, value, s);
    case 4:
      return fill_as<uint32_t>(t, value, s);
    case 8:
      return fill_as<uint64_t>(t, value, s);
    default:
      LOOM_THROW(Unsupported, "fill_ (cuda): no kernel for dtype ", dtype_name(t.dtype()));
  }
}

template <typename U>
void index_select_as(const Tensor& out, const Tensor& src, const Tensor& index, int64_t outer, int64_t n, int64_t size,
                     int64_t row_bytes, cudaStream_t s) {
  const int64_t inner = row_bytes / static_cast<int64_t>(sizeof(U));
  const int64_t total = outer * n * inner;
  if (total == 0) return;
  const int64_t index_stride = index.dim() == 1 ? index.stride(0) : 1;
  index_select_kernel<U><<<grid_for(total), kBlock, 0, s>>>(
      dptr<U>(out), dptr<const U>(src), dptr<const int64_t>(index), index_stride, outer, n, size, inner);
  LOOM_CUDA_LAUNCH_CHECK("index_select_kernel");
}

void index_select(const Tensor& out, const Tensor& t, int64_t dim, const Tensor& index) {
  LOOM_CHECK(index.dtype() == DType::i64 && index.dim() <= 1, "index_select (cuda): index must be 1-D int64, got ",
             dtype_name(index.dtype()), " of shape ", shape_str(index.sizes()));
  LOOM_CHECK(out.dtype() == t.dtype() && out.is_contiguous() && t.dim() == out.dim() && dim >= 0 && dim < t.dim(),
             "index_select (cuda): out ", shape_str(out.sizes()), " does not fit input ", shape_str(t.sizes()),
             " along dim ", dim);
  DeviceScope scope(out.device().index);
  cudaStream_t s = stream_for(out);
  const Tensor src = t.is_contiguous() ? t : ops::contiguous(t);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < dim; ++i) outer *= t.size(i);
  for (int64_t i = dim + 1; i < t.dim(); ++i) inner *= t.size(i);
  const int64_t n = index.numel(), size = t.size(dim);
  LOOM_CHECK(out.size(dim) == n, "index_select (cuda): out has ", out.size(dim), " rows along dim ", dim, " for ", n,
             " indices");
  const int64_t row_bytes = inner * static_cast<int64_t>(t.element_size());
  // The widest unit that divides a row and both buffers' alignment.
  const uintptr_t align = reinterpret_cast<uintptr_t>(out.data_ptr()) | reinterpret_cast<uintptr_t>(src.data_ptr()) |
                          static_cast<uintptr_t>(row_bytes);
  if (align % 16 == 0) return index_select_as<uint4>(out, src, index, outer, n, size, row_bytes, s);
  if (align % 8 == 0) return index_select_as<uint2>(out, src, index, outer, n, size, row_bytes, s);
  if (align % 4 == 0) return index_select_as<uint32_t>(out, src, index, outer, n, size, row_bytes, s);
  if (align % 2 == 0) return index_select_as<uint16_t>(out, src, index, outer, n, size, row_bytes, s);
  index_select_as<uint8_t>(out, src, index, outer, n, size, row_bytes, s);
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {

void register_copy(CudaKernels& k) {
  k.copy = cuda_detail::copy;
  k.fill = cuda_detail::fill;
  k.index_select = cuda_detail::index_select;
}

}  // namespace loom::detail
