// Dropout and rotary position embedding, elementwise kernels of the nn ops.
// Dropout draws the CPU kernel's Philox numbers (tensor/philox.h, the same code
// on host and device): element i uses word i % 4 of block offset + i / 4 of the
// generator's stream, so a seed gives the same mask on either device.
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/row_common.cuh"
#include "tensor/cuda_dispatch.h"
#include "tensor/philox.h"

namespace loom::cuda_detail {
namespace {

// y (n) = keep ? x * scale : 0 and mask (n) = keep, with keep drawn per element from
// Philox block (offset + i / 4); one thread per block of four elements.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    dropout_kernel(T* __restrict__ y, uint8_t* __restrict__ mask, const T* __restrict__ x, int64_t n, float p,
                   acc_t<T> scale, uint64_t seed, uint64_t offset) {
  using A = acc_t<T>;
  const int64_t nblocks = (n + 3) / 4;
  for (int64_t blk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; blk < nblocks;
       blk += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const detail::PhiloxBlock u = detail::philox_stream_block(seed, offset + static_cast<uint64_t>(blk));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = blk * 4 + k;
      if (i >= n) break;
      const bool keep = detail::dropout_keep(u, i, p);
      mask[i] = keep ? 1 : 0;
      y[i] = from_acc<T>(keep ? load_acc(x + i) * scale : A(0));
    }
  }
}

// out = x rotated pair by pair: (x1, x2) at (i, i + H) of each row of D = 2H, with cos/sin
// (T, H) of the row's position t = row % T: (x1 c - x2 s, x2 c + x1 s) (s negated for inverse).
template <typename T>
__global__ void __launch_bounds__(kBlock)
    rope_kernel(T* __restrict__ out, const T* __restrict__ x, const acc_t<T>* __restrict__ cos_t,
                const acc_t<T>* __restrict__ sin_t, int64_t rows, int64_t T_, int64_t H, acc_t<T> sgn) {
  using A = acc_t<T>;
  const int64_t total = rows * H;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / H, i = k - r * H;
    const int64_t t = r % T_;
    const A c = cos_t[t * H + i], s = sgn * sin_t[t * H + i];
    const T* xr = x + r * 2 * H;
    T* o = out + r * 2 * H;
    const A x1 = load_acc(xr + i), x2 = load_acc(xr + i + H);
    o[i] = from_acc<T>(x1 * c - x2 * s);
    o[i + H] = from_acc<T>(x2 * c + x1 * s);
  }
}

// ---------------------------------------------------------------- launchers

void dropout_entry(const Tensor& y, const Tensor& mask, const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  const char* op = "dropout";
  LOOM_CHECK(x.is_contiguous() && y.is_contiguous() && mask.is_contiguous() && y.dtype() == x.dtype() &&
                 mask.dtype() == DType::u8 && y.numel() == x.numel() && mask.numel() == x.numel(),
             op, ": CUDA kernel expects contiguous x, y (same dtype) and a u8 mask of one size, got ",
             shape_str(x.sizes()));
  const int64_t n = x.numel();
  if (n == 0) return;
  DeviceScope scope(x.device().index);
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const A scale = static_cast<A>(1.0 / (1.0 - p));  // as the CPU kernel rounds it
    dropout_kernel<T><<<grid_for((n + 3) / 4), kBlock, 0, stream_for(x)>>>(
        dptr<T>(y), dptr<uint8_t>(mask), dptr<const T>(x), n, static_cast<float>(p), scale, seed, offset);
    LOOM_CUDA_LAUNCH_CHECK("dropout_kernel");
  });
}

void rope_entry(const Tensor& out, const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse) {
  const char* op = "rope";
  LOOM_CHECK(
      x.dim() >= 2 && x.is_contiguous() && out.is_contiguous() && out.dtype() == x.dtype() && out.numel() == x.numel(),
      op, ": CUDA kernel expects contiguous x and out of one dtype and size, got ", shape_str(x.sizes()));
  const int64_t T_ = x.size(-2), D = x.size(-1), H = D / 2;
  LOOM_CHECK(D % 2 == 0 && cos.is_contiguous() && sin.is_contiguous() && cos.numel() == T_ * H && sin.numel() == T_ * H,
             op, ": cos ", shape_str(cos.sizes()), " and sin ", shape_str(sin.sizes()),
             " must be contiguous (T, D/2) for x ", shape_str(x.sizes()));
  const int64_t rows = T_ == 0 || D == 0 ? 0 : x.numel() / D;
  if (rows == 0 || H == 0) return;
  DeviceScope scope(x.device().index);
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    LOOM_CHECK(cos.dtype() == acc_dtype<T>() && sin.dtype() == acc_dtype<T>(), op, ": cos/sin must be ",
               dtype_name(acc_dtype<T>()), " for a ", dtype_name(x.dtype()), " input, got ", dtype_name(cos.dtype()));
    rope_kernel<T><<<grid_for(rows * H), kBlock, 0, stream_for(x)>>>(
        dptr<T>(out), dptr<const T>(x), dptr<const A>(cos), dptr<const A>(sin), rows, T_, H, inverse ? A(-1) : A(1));
    LOOM_CUDA_LAUNCH_CHECK("rope_kernel");
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {
void register_dropout_rope(CudaKernels& k) {
  k.dropout = &cuda_detail::dropout_entry;
  k.rope = &cuda_detail::rope_entry;
}
}  // namespace loom::detail
