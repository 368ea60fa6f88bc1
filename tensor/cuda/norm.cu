// Layer norm and RMS norm over the last dim of a contiguous (N, C) tensor,
// forward (with llm.c's optional fused residual add: x + residual is written
// out and normalised in the same pass) and backward. One block per row,
// statistics in f32 (f64 for f64). The weight and bias gradients are reduced
// over rows without atomics: per (column tile, row split) partials summed in a
// fixed order, so two runs give the same bits.
#include <algorithm>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/row_common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

/// Threads per block (at most) of the per-row kernels (forward, backward dx): their __launch_bounds__.
constexpr int kNormRowThreads = 256;

// y (N, C) = (x - mean) * rstd * w + b per row; mean (N) and rstd (N) saved (mean only for
// layer norm). With `res`, x is first replaced by x + res (rounded to T) and written to sum_out.
template <typename T, typename W>
__global__ void __launch_bounds__(kNormRowThreads)
    norm_forward_kernel(T* __restrict__ y, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                        const T* __restrict__ x, const W* __restrict__ w, const W* __restrict__ b,
                        const T* __restrict__ res, T* __restrict__ sum_out, int64_t N, int64_t C, acc_t<T> eps,
                        bool rms) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = x + r * C;
    T* yr = y + r * C;
    const T* src = xr;  // where the (summed) input row is read from after the first pass
    A part = A(0);
    if (res) {
      const T* rr = res + r * C;
      T* sr = sum_out + r * C;
      for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
        const T s = from_acc<T>(load_acc(xr + i) + load_acc(rr + i));
        sr[i] = s;
        part += load_acc(&s);
      }
      src = sr;  // each thread re-reads only the elements it wrote
    } else if (!rms) {
      for (int64_t i = threadIdx.x; i < C; i += blockDim.x) part += load_acc(xr + i);
    }
    const A mu = rms ? A(0) : block_sum(part, scratch) / static_cast<A>(C);
    A sq = A(0);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      const A d = load_acc(src + i) - mu;
      sq += d * d;
    }
    const A rs = A(1) / sqrt_acc(block_sum(sq, scratch) / static_cast<A>(C) + eps);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      A v = (load_acc(src + i) - mu) * rs;
      if (w) v *= static_cast<A>(load_acc(w + i));
      if (b) v += static_cast<A>(load_acc(b + i));
      yr[i] = from_acc<T>(v);
    }
    if (threadIdx.x == 0) {
      if (mean) mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// dx (N, C) = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy * xhat)) per row (no mean(w*dy) term for RMS).
template <typename T, typename W>
__global__ void __launch_bounds__(kNormRowThreads)
    norm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                            const W* __restrict__ w, const acc_t<T>* __restrict__ mean,
                            const acc_t<T>* __restrict__ rstd, int64_t N, int64_t C) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = x + r * C;
    const T* gr = dy + r * C;
    T* o = dx + r * C;
    const A mu = mean ? mean[r] : A(0);
    const A rs = rstd[r];
    A s1 = A(0), s2 = A(0);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      const A xh = (load_acc(xr + i) - mu) * rs;
      A wdy = load_acc(gr + i);
      if (w) wdy *= static_cast<A>(load_acc(w + i));
      s1 += wdy;
      s2 += wdy * xh;
    }
    const A mean_wdy = mean ? block_sum(s1, scratch) / static_cast<A>(C) : A(0);
    const A mean_wdy_xh = block_sum(s2, scratch) / static_cast<A>(C);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      const A xh = (load_acc(xr + i) - mu) * rs;
      A wdy = load_acc(gr + i);
      if (w) wdy *= static_cast<A>(load_acc(w + i));
      o[i] = from_acc<T>(rs * (wdy - mean_wdy - xh * mean_wdy_xh));
    }
  }
}

constexpr int kColTile = 32;  // columns per block (one warp wide)
constexpr int kRowLanes = 8;  // rows read at once per block

// Partial dw = sum dy * xhat and db = sum dy over the rows of split blockIdx.y, for the
// kColTile columns of tile blockIdx.x; written to dw_part / db_part (S, C) (either may be null).
template <typename T>
__global__ void __launch_bounds__(kColTile* kRowLanes)
    norm_backward_dwdb_kernel(acc_t<T>* __restrict__ dw_part, acc_t<T>* __restrict__ db_part, const T* __restrict__ dy,
                              const T* __restrict__ x, const acc_t<T>* __restrict__ mean,
                              const acc_t<T>* __restrict__ rstd, int64_t N, int64_t C, int64_t rows_per_split) {
  using A = acc_t<T>;
  __shared__ A sdw[kRowLanes][kColTile + 1];
  __shared__ A sdb[kRowLanes][kColTile + 1];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < N ? r0 + rows_per_split : N;
  A acc_w = A(0), acc_b = A(0);
  if (j < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const A g = load_acc(dy + r * C + j);
      acc_b += g;
      if (dw_part) {
        const A mu = mean ? mean[r] : A(0);
        acc_w += g * (load_acc(x + r * C + j) - mu) * rstd[r];
      }
    }
  }
  sdw[threadIdx.y][threadIdx.x] = acc_w;
  sdb[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && j < C) {
    A tw = A(0), tb = A(0);
#pragma unroll
    for (int k = 0; k < kRowLanes; ++k) {
      tw += sdw[k][threadIdx.x];
      tb += sdb[k][threadIdx.x];
    }
    const int64_t o = static_cast<int64_t>(blockIdx.y) * C + j;
    if (dw_part) dw_part[o] = tw;
    if (db_part) db_part[o] = tb;
  }
}

// out (C) = sum over s of part (S, C), in order of s.
template <typename A>
__global__ void __launch_bounds__(kBlock)
    sum_splits_kernel(A* __restrict__ out, const A* __restrict__ part, int64_t S, int64_t C) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < C;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A t = A(0);
    for (int64_t s = 0; s < S; ++s) t += part[s * C + j];
    out[j] = t;
  }
}

// ---------------------------------------------------------------- launchers

/// Calls f(W{}) with W = T when p (a weight or bias) is undefined or of dtype T, W = acc_t<T> when it
/// has the accumulation dtype; w and b must agree.
template <typename T, typename F>
void dispatch_param(const char* op, const Tensor& w, const Tensor& b, F&& f) {
  DType dt = dtype_of<T>();
  if (w.defined())
    dt = w.dtype();
  else if (b.defined())
    dt = b.dtype();
  for (const Tensor* p : {&w, &b}) {
    if (!p->defined()) continue;
    LOOM_CHECK(p->dtype() == dt && p->is_contiguous(), op,
               ": weight and bias must be contiguous and of one dtype, got ", dtype_name(p->dtype()), " ",
               shape_str(p->sizes()));
  }
  if (dt == dtype_of<T>()) return f(T{});
  LOOM_CHECK(dt == acc_dtype<T>(), op, ": weight/bias dtype ", dtype_name(dt), " is neither the input's (",
             dtype_name(dtype_of<T>()), ") nor ", dtype_name(acc_dtype<T>()));
  return f(acc_t<T>{});
}

template <typename P>
const P* opt_ptr(const Tensor& t) {
  return t.defined() ? dptr<const P>(t) : nullptr;
}

void check_stat(const char* op, const Tensor& s, int64_t N, DType dt) {
  if (!s.defined()) return;
  LOOM_CHECK(s.is_contiguous() && s.numel() == N && s.dtype() == dt, op, ": statistics must be contiguous ",
             dtype_name(dt), " of ", N, " values, got ", dtype_name(s.dtype()), " ", shape_str(s.sizes()));
}

void norm_forward_entry(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& x, const Tensor& w,
                        const Tensor& b, double eps, bool rms, const Tensor& residual, const Tensor& sum_out) {
  const char* op = rms ? "rms_norm" : "layer_norm";
  LOOM_CHECK(x.dim() >= 1 && x.is_contiguous() && y.is_contiguous() && y.dtype() == x.dtype() && y.numel() == x.numel(),
             op, ": CUDA kernel expects contiguous x and y of one dtype and size, got ", shape_str(x.sizes()), " and ",
             shape_str(y.sizes()));
  const int64_t C = x.size(-1);
  const int64_t N = C == 0 ? 0 : x.numel() / C;
  if (residual.defined()) {
    LOOM_CHECK(residual.is_contiguous() && residual.dtype() == x.dtype() && residual.numel() == x.numel() &&
                   sum_out.defined() && sum_out.is_contiguous() && sum_out.dtype() == x.dtype() &&
                   sum_out.numel() == x.numel(),
               op, ": residual and sum_out must be contiguous and match x ", shape_str(x.sizes()));
  }
  DeviceScope scope(x.device().index);
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    check_stat(op, mean, N, acc_dtype<T>());
    LOOM_CHECK(rstd.defined(), op, ": rstd is undefined");
    check_stat(op, rstd, N, acc_dtype<T>());
    LOOM_CHECK(rms || mean.defined(), op, ": layer norm needs a mean output");
    if (N == 0) return;
    dispatch_param<T>(op, w, b, [&](auto wtag) {
      using W = decltype(wtag);
      const T* res = residual.defined() ? dptr<const T>(residual) : nullptr;
      T* so = residual.defined() ? dptr<T>(sum_out) : nullptr;
      norm_forward_kernel<T, W><<<row_grid(N), row_block_size(C, kNormRowThreads), 0, stream_for(x)>>>(
          dptr<T>(y), rms ? nullptr : dptr<A>(mean), dptr<A>(rstd), dptr<const T>(x), opt_ptr<W>(w), opt_ptr<W>(b), res,
          so, N, C, static_cast<A>(eps), rms);
      LOOM_CUDA_LAUNCH_CHECK("norm_forward_kernel");
    });
  });
}

void norm_backward_entry(const Tensor& dx, const Tensor& dw, const Tensor& db, const Tensor& dy, const Tensor& x,
                         const Tensor& w, const Tensor& mean, const Tensor& rstd, bool rms) {
  const char* op = rms ? "rms_norm_backward" : "layer_norm_backward";
  LOOM_CHECK(x.dim() >= 1 && x.is_contiguous() && dy.is_contiguous() && dx.is_contiguous() && dy.dtype() == x.dtype() &&
                 dx.dtype() == x.dtype() && dy.numel() == x.numel() && dx.numel() == x.numel(),
             op, ": CUDA kernel expects contiguous dx, dy, x of one dtype and size, got ", shape_str(dx.sizes()), ", ",
             shape_str(dy.sizes()), ", ", shape_str(x.sizes()));
  const int64_t C = x.size(-1);
  const int64_t N = C == 0 ? 0 : x.numel() / C;
  DeviceScope scope(x.device().index);
  const cudaStream_t stream = stream_for(x);
  dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const DType ad = acc_dtype<T>();
    check_stat(op, mean, N, ad);
    LOOM_CHECK(rstd.defined(), op, ": rstd is undefined");
    check_stat(op, rstd, N, ad);
    LOOM_CHECK(rms || mean.defined(), op, ": layer norm backward needs the saved mean");
    for (const Tensor* g : {&dw, &db})
      LOOM_CHECK(!g->defined() || (g->is_contiguous() && g->numel() == C && g->dtype() == ad), op,
                 ": dw/db must be contiguous ", dtype_name(ad), " of ", C, " values, got ", dtype_name(g->dtype()), " ",
                 shape_str(g->sizes()));
    const A* mu = rms ? nullptr : dptr<const A>(mean);
    const A* rs = dptr<const A>(rstd);
    if (N > 0) {
      dispatch_param<T>(op, w, Tensor(), [&](auto wtag) {
        using W = decltype(wtag);
        norm_backward_dx_kernel<T, W><<<row_grid(N), row_block_size(C, kNormRowThreads), 0, stream>>>(
            dptr<T>(dx), dptr<const T>(dy), dptr<const T>(x), opt_ptr<W>(w), mu, rs, N, C);
        LOOM_CUDA_LAUNCH_CHECK("norm_backward_dx_kernel");
      });
    }
    if ((!dw.defined() && !db.defined()) || C == 0) return;
    // Row splits: enough blocks to fill a large GPU, each split at least 64 rows. The split
    // depends only on (N, C), so the summation order and the bits do not depend on the device.
    const int64_t tiles = (C + kColTile - 1) / kColTile;
    int64_t S = std::max<int64_t>(1, std::min<int64_t>((N + 63) / 64, (512 + tiles - 1) / tiles));
    S = std::min<int64_t>(S, 65535);
    const int64_t rows_per_split = std::max<int64_t>(1, (N + S - 1) / S);
    S = std::max<int64_t>(1, (N + rows_per_split - 1) / rows_per_split);
    LOOM_CHECK(tiles <= 0x7fffffffLL, op, ": ", C, " columns is too many");
    Tensor dw_part, db_part;
    if (S > 1) {
      if (dw.defined()) dw_part = empty({S, C}, ad, x.device());
      if (db.defined()) db_part = empty({S, C}, ad, x.device());
    }
    A* dwp = !dw.defined() ? nullptr : (S > 1 ? dptr<A>(dw_part) : dptr<A>(dw));
    A* dbp = !db.defined() ? nullptr : (S > 1 ? dptr<A>(db_part) : dptr<A>(db));
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(S));
    const dim3 block(kColTile, kRowLanes);
    norm_backward_dwdb_kernel<T>
        <<<grid, block, 0, stream>>>(dwp, dbp, dptr<const T>(dy), dptr<const T>(x), mu, rs, N, C, rows_per_split);
    LOOM_CUDA_LAUNCH_CHECK("norm_backward_dwdb_kernel");
    if (S > 1) {
      if (dw.defined()) {
        sum_splits_kernel<A><<<grid_for(C), kBlock, 0, stream>>>(dptr<A>(dw), dwp, S, C);
        LOOM_CUDA_LAUNCH_CHECK("sum_splits_kernel");
      }
      if (db.defined()) {
        sum_splits_kernel<A><<<grid_for(C), kBlock, 0, stream>>>(dptr<A>(db), dbp, S, C);
        LOOM_CUDA_LAUNCH_CHECK("sum_splits_kernel");
      }
    }
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {
void register_norm(CudaKernels& k) {
  k.norm_forward = &cuda_detail::norm_forward_entry;
  k.norm_backward = &cuda_detail::norm_backward_entry;
}
}  // namespace loom::detail
