// CUDA reductions: the reduce (sum, max), var, max_dim and norm entries, over the
// middle dim R of a contiguous (O, R, I) input. Rows (I == 1) are reduced by a
// warp (short rows) or a block (long rows) each; columns (I > 1) by a thread per
// output walking R, coalesced across I. When there are too few outputs to fill
// the GPU, R is split into P chunks whose partial results go to a workspace and
// are combined by a second kernel in a fixed order. Everything is deterministic
// (no atomics; the split depends only on the shape), so two runs give the same
// bits. Floating sums, var and norm accumulate in f64 as the CPU kernels do
// (tensor/cpu/reduce.cc); integer sums in i64; max keeps NaN (the first NaN, in
// max_dim) and takes the first index among equal maxima.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

using detail::ReduceOp;

// ---------------------------------------------------------------- combine, load and store policies
template <typename Acc>
struct SumOp {
  __device__ static Acc identity() { return Acc(0); }
  __device__ Acc operator()(Acc a, Acc b) const { return a + b; }
};
template <typename Acc>
struct MaxOp {  // NaN wins
  __device__ static Acc identity() {
    if constexpr (std::is_floating_point_v<Acc>) {
      return -std::numeric_limits<Acc>::infinity();
    } else {
      return std::numeric_limits<Acc>::lowest();
    }
  }
  __device__ Acc operator()(Acc a, Acc b) const {
    if (a != a) return a;
    if (b != b) return b;
    return b > a ? b : a;
  }
};

/// Loads an input element as Acc (exactly: bf16/f16 through f32).
template <typename Acc>
struct LoadAs {
  template <typename In>
  __device__ Acc operator()(const In* p) const {
    return static_cast<Acc>(load_acc(p));
  }
};
template <typename Acc>
struct LoadSquare {
  template <typename In>
  __device__ Acc operator()(const In* p) const {
    const Acc v = static_cast<Acc>(load_acc(p));
    return v * v;
  }
};

/// A sum times scale, stored as Out (integers: the i64 sum unscaled), as the CPU's store_acc.
template <typename Out, typename Acc>
struct StoreSum {
  double scale;
  __device__ Out operator()(Acc a) const {
    if constexpr (std::is_integral_v<Out>) {
      return static_cast<Out>(a);
    } else {
      return from_acc<Out>(static_cast<double>(a) * scale);
    }
  }
};
template <typename Out, typename Acc>
struct StoreAs {
  __device__ Out operator()(Acc a) const { return from_acc<Out>(a); }
};
struct StoreSqrt {  // norm: f32 of the f64 root
  __device__ float operator()(double a) const { return static_cast<float>(sqrt(a)); }
};

// ---------------------------------------------------------------- warp and block reductions
template <typename Acc, typename Op>
__device__ __forceinline__ Acc warp_reduce(Acc v, const Op& op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

/// The whole block's reduction (blockDim.x a multiple of 32), in thread 0; every thread must call it.
template <typename Acc, typename Op>
__device__ Acc block_reduce(Acc v, const Op& op) {
  __shared__ Acc buf[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? buf[threadIdx.x] : Op::identity();
  if (warp == 0) v = warp_reduce(v, op);
  __syncthreads();  // buf may be reused by the next call
  return v;
}

/// The reduction over a group of TPR threads (a warp, or the whole block for TPR == kBlock), in every thread.
template <int TPR, typename Acc, typename Op>
__device__ Acc group_allreduce(Acc v, const Op& op) {
  if constexpr (TPR == 32) {
    v = warp_reduce(v, op);
    return __shfl_sync(0xffffffffu, v, 0);
  } else {
    __shared__ Acc total;
    v = block_reduce(v, op);
    if (threadIdx.x == 0) total = v;
    __syncthreads();
    v = total;
    __syncthreads();
    return v;
  }
}

// ---------------------------------------------------------------- sum / max / norm
/// Rows (I == 1): segment (o, p) covers in[o, p*chunk : (p+1)*chunk] and is reduced by TPR threads
/// (kBlock / TPR segments per block). P == 1 stores out[o]; else partial[p * O + o].
template <int TPR, typename In, typename Out, typename Acc, typename Op, typename Load, typename Store>
__global__ void __launch_bounds__(kBlock)
    reduce_rows_kernel(const In* __restrict__ in, Out* __restrict__ out, Acc* __restrict__ partial, int64_t O,
                       int64_t R, int64_t P, int64_t chunk, Op op, Load load, Store store) {
  constexpr int kPerBlock = kBlock / TPR;
  const int sub = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const int64_t segs = O * P;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock; base < segs;
       base += static_cast<int64_t>(gridDim.x) * kPerBlock) {
    const int64_t seg = base + sub;
    Acc acc = Op::identity();
    int64_t o = 0, p = 0;
    if (seg < segs) {
      o = seg / P;
      p = seg - o * P;
      const int64_t r0 = p * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
      const In* row = in + o * R;
      for (int64_t r = r0 + lane; r < r1; r += TPR) acc = op(acc, load(row + r));
    }
    if constexpr (TPR == 32) {
      acc = warp_reduce(acc, op);
    } else {
      acc = block_reduce(acc, op);
    }
    if (lane == 0 && seg < segs) {
      if (P == 1) {
        out[o] = store(acc);
      } else {
        partial[p * O + o] = acc;
      }
    }
  }
}

/// Columns (I > 1): thread t reduces output j = t % (O*I) over chunk p = t / (O*I) of R.
/// P == 1 stores out[j]; else partial[p * O*I + j].
template <typename In, typename Out, typename Acc, typename Op, typename Load, typename Store>
__global__ void __launch_bounds__(kBlock)
    reduce_cols_kernel(const In* __restrict__ in, Out* __restrict__ out, Acc* __restrict__ partial, int64_t O,
                       int64_t R, int64_t I, int64_t P, int64_t chunk, Op op, Load load, Store store) {
  const int64_t OI = O * I, total = OI * P;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += step) {
    const int64_t p = t / OI, j = t - p * OI;
    const int64_t o = j / I, i = j - o * I;
    const int64_t r0 = p * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
    const In* col = in + o * R * I + i;
    Acc acc = Op::identity();
    for (int64_t r = r0; r < r1; ++r) acc = op(acc, load(col + r * I));
    if (P == 1) {
      out[j] = store(acc);
    } else {
      partial[p * OI + j] = acc;
    }
  }
}

/// out[j] = store(partial[0, j] op partial[1, j] op ... op partial[P-1, j]), in that order.
template <typename Out, typename Acc, typename Op, typename Store>
__global__ void __launch_bounds__(kBlock) reduce_finish_kernel(const Acc* __restrict__ partial, Out* __restrict__ out,
                                                               int64_t OI, int64_t P, Op op, Store store) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < OI; j += step) {
    Acc acc = Op::identity();
    for (int64_t p = 0; p < P; ++p) acc = op(acc, partial[p * OI + j]);
    out[j] = store(acc);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Splitting: rows longer than kLongRow get a block each; with fewer than kRowBlocks rows a row is
// split into chunks of at least kMinRowChunk elements. Columns are split so that about kColThreads
// threads run, each over at least kMinColChunk rows, into at most kMaxColChunks chunks (the finishing
// kernel walks the chunks of an output in order).
constexpr int64_t kLongRow = 512;
constexpr int64_t kRowBlocks = 1024;
constexpr int64_t kMinRowChunk = 8192;
constexpr int64_t kColThreads = 65536;
constexpr int64_t kMinColChunk = 64;
constexpr int64_t kMaxColChunks = 1024;

template <typename In, typename Out, typename Acc, typename Op, typename Load, typename Store>
void run_reduce(const Tensor& out, const Tensor& in, int64_t O, int64_t R, int64_t I, Op op, Load load, Store store,
                cudaStream_t s) {
  const int64_t OI = O * I;
  if (OI == 0) return;
  const In* x = dptr<const In>(in);
  Out* y = dptr<Out>(out);
  const bool rows = I == 1;
  int64_t P = 1;
  if (rows && R > kLongRow) {
    P = clamp64(ceil_div(kRowBlocks, O), 1, ceil_div(R, kMinRowChunk));
  } else if (!rows) {
    P = clamp64(ceil_div(kColThreads, OI), 1, std::max<int64_t>(1, std::min(kMaxColChunks, ceil_div(R, kMinColChunk))));
  }
  const int64_t chunk = P == 1 ? R : ceil_div(R, P);
  Tensor workspace;
  Acc* partial = nullptr;
  if (P > 1) {
    workspace = empty({P * OI * static_cast<int64_t>(sizeof(Acc))}, DType::u8, out.device());
    partial = dptr<Acc>(workspace);
  }
  if (rows && R <= kLongRow) {
    reduce_rows_kernel<32, In, Out, Acc>
        <<<grid_for(O, kBlock / 32), kBlock, 0, s>>>(x, y, partial, O, R, P, chunk, op, load, store);
    LOOM_CUDA_LAUNCH_CHECK("reduce_rows_kernel");
  } else if (rows) {
    reduce_rows_kernel<kBlock, In, Out, Acc>
        <<<grid_for(O * P, 1), kBlock, 0, s>>>(x, y, partial, O, R, P, chunk, op, load, store);
    LOOM_CUDA_LAUNCH_CHECK("reduce_rows_kernel");
  } else {
    reduce_cols_kernel<In, Out, Acc>
        <<<grid_for(OI * P), kBlock, 0, s>>>(x, y, partial, O, R, I, P, chunk, op, load, store);
    LOOM_CUDA_LAUNCH_CHECK("reduce_cols_kernel");
  }
  if (P > 1) {
    reduce_finish_kernel<Out, Acc><<<grid_for(OI), kBlock, 0, s>>>(partial, y, OI, P, op, store);
    LOOM_CUDA_LAUNCH_CHECK("reduce_finish_kernel");
  }
}

void check_ori(const char* op, const Tensor& out, const Tensor& in, int64_t O, int64_t R, int64_t I) {
  LOOM_CHECK(O >= 0 && R >= 0 && I >= 0 && in.is_contiguous() && out.is_contiguous() && in.numel() == O * R * I &&
                 out.numel() == O * I && in.device() == out.device(),
             op, " (cuda): expected a contiguous input of ", O, " x ", R, " x ", I, " elements and output of ", O * I,
             "; got ", shape_str(in.sizes()), " and ", shape_str(out.sizes()));
}

void reduce(ReduceOp op, const Tensor& out, const Tensor& in, int64_t O, int64_t R, int64_t I, double scale) {
  const char* name = op == ReduceOp::kSum ? "sum" : "max";
  check_ori(name, out, in, O, R, I);
  DeviceScope scope(in.device().index);
  cudaStream_t s = stream_for(in);
  dispatch_all(in.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    if (op == ReduceOp::kSum) {
      if constexpr (std::is_integral_v<T>) {
        LOOM_CHECK(out.dtype() == DType::i64, "sum (cuda): an integer sum writes int64, got ", dtype_name(out.dtype()));
        run_reduce<T, int64_t, int64_t>(out, in, O, R, I, SumOp<int64_t>{}, LoadAs<int64_t>{},
                                        StoreSum<int64_t, int64_t>{scale}, s);
      } else {
        LOOM_CHECK(out.dtype() == in.dtype(), "sum (cuda): output dtype ", dtype_name(out.dtype()), " differs from ",
                   dtype_name(in.dtype()));
        run_reduce<T, T, double>(out, in, O, R, I, SumOp<double>{}, LoadAs<double>{}, StoreSum<T, double>{scale}, s);
      }
    } else {
      LOOM_CHECK(out.dtype() == in.dtype(), "max (cuda): output dtype ", dtype_name(out.dtype()), " differs from ",
                 dtype_name(in.dtype()));
      LOOM_CHECK(R > 0, "max (cuda): the max over an empty dim is undefined");
      using A = acc_t<T>;
      run_reduce<T, T, A>(out, in, O, R, I, MaxOp<A>{}, LoadAs<A>{}, StoreAs<T, A>{}, s);
    }
  });
}

void norm(const Tensor& out, const Tensor& in) {
  LOOM_CHECK(out.dtype() == DType::f32 && out.numel() == 1 && in.is_contiguous(),
             "norm (cuda): expects a contiguous input and a one-element f32 output");
  DeviceScope scope(in.device().index);
  cudaStream_t s = stream_for(in);
  const int64_t n = in.numel();
  dispatch_all(in.dtype(), "norm", [&](auto tag) {
    using T = decltype(tag);
    run_reduce<T, float, double>(out, in, 1, n, 1, SumOp<double>{}, LoadSquare<double>{}, StoreSqrt{}, s);
  });
}

// ---------------------------------------------------------------- var
/// Two passes per output in f64: the mean, then the sum of squared deviations; / denom.
template <int TPR, typename T>
__global__ void __launch_bounds__(kBlock)
    var_rows_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t O, int64_t R, double denom) {
  constexpr int kPerBlock = kBlock / TPR;
  const int sub = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const SumOp<double> add;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock; base < O;
       base += static_cast<int64_t>(gridDim.x) * kPerBlock) {
    const int64_t o = base + sub;
    const T* row = in + (o < O ? o : 0) * R;
    const int64_t n = o < O ? R : 0;
    double sum = 0;
    for (int64_t r = lane; r < n; r += TPR) sum += static_cast<double>(load_acc(row + r));
    const double m = group_allreduce<TPR>(sum, add) / static_cast<double>(R);
    double ss = 0;
    for (int64_t r = lane; r < n; r += TPR) {
      const double d = static_cast<double>(load_acc(row + r)) - m;
      ss += d * d;
    }
    ss = group_allreduce<TPR>(ss, add);
    if (lane == 0 && o < O) out[o] = from_acc<T>(ss / denom);
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    var_cols_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t O, int64_t R, int64_t I, double denom) {
  const int64_t OI = O * I;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < OI; j += step) {
    const int64_t o = j / I, i = j - o * I;
    const T* col = in + o * R * I + i;
    double sum = 0;
    for (int64_t r = 0; r < R; ++r) sum += static_cast<double>(load_acc(col + r * I));
    const double m = sum / static_cast<double>(R);
    double ss = 0;
    for (int64_t r = 0; r < R; ++r) {
      const double d = static_cast<double>(load_acc(col + r * I)) - m;
      ss += d * d;
    }
    out[j] = from_acc<T>(ss / denom);
  }
}

void var(const Tensor& out, const Tensor& in, int64_t O, int64_t R, int64_t I, int64_t correction) {
  check_ori("var", out, in, O, R, I);
  LOOM_CHECK(out.dtype() == in.dtype(), "var (cuda): output dtype ", dtype_name(out.dtype()), " differs from ",
             dtype_name(in.dtype()));
  if (O * I == 0) return;
  DeviceScope scope(in.device().index);
  cudaStream_t s = stream_for(in);
  const double denom = static_cast<double>(R - correction > 0 ? R - correction : 0);
  dispatch_floating(in.dtype(), "var", [&](auto tag) {
    using T = decltype(tag);
    const T* x = dptr<const T>(in);
    T* y = dptr<T>(out);
    if (I == 1 && R <= kLongRow) {
      var_rows_kernel<32, T><<<grid_for(O, kBlock / 32), kBlock, 0, s>>>(x, y, O, R, denom);
    } else if (I == 1) {
      var_rows_kernel<kBlock, T><<<grid_for(O, 1), kBlock, 0, s>>>(x, y, O, R, denom);
    } else {
      var_cols_kernel<T><<<grid_for(O * I), kBlock, 0, s>>>(x, y, O, R, I, denom);
    }
    LOOM_CUDA_LAUNCH_CHECK("var kernel");
  });
}

// ---------------------------------------------------------------- max_dim
/// True when candidate (v, i) beats the current best (bv, bi): the first NaN, else the larger value,
/// else (equal) the smaller index. A total order, so any reduction tree picks what the CPU's scan picks.
template <typename A>
__device__ __forceinline__ bool beats(A v, int64_t i, A bv, int64_t bi) {
  const bool v_nan = v != v, b_nan = bv != bv;
  if (b_nan) return v_nan && i < bi;
  if (v_nan) return true;
  return v > bv || (v == bv && i < bi);
}

template <typename A>
__device__ __forceinline__ void warp_argmax(A& v, int64_t& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A ov = __shfl_down_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_down_sync(0xffffffffu, i, o);
    if (beats(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

template <int TPR, typename T>
__global__ void __launch_bounds__(kBlock) max_dim_rows_kernel(const T* __restrict__ in, T* __restrict__ values,
                                                              int64_t* __restrict__ indices, int64_t O, int64_t R) {
  using A = acc_t<T>;
  constexpr int kPerBlock = kBlock / TPR;
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  __shared__ A sv[32];
  __shared__ int64_t si[32];
  const int sub = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kPerBlock; base < O;
       base += static_cast<int64_t>(gridDim.x) * kPerBlock) {
    const int64_t o = base + sub;
    const T* row = in + (o < O ? o : 0) * R;
    const int64_t n = o < O ? R : 0;
    A bv = MaxOp<A>::identity();
    int64_t bi = kNone;
    for (int64_t r = lane; r < n; r += TPR) {
      const A v = load_acc(row + r);
      if (beats(v, r, bv, bi)) {
        bv = v;
        bi = r;
      }
    }
    warp_argmax(bv, bi);
    if constexpr (TPR != 32) {
      const int wl = threadIdx.x & 31, warp = threadIdx.x >> 5;
      if (wl == 0) {
        sv[warp] = bv;
        si[warp] = bi;
      }
      __syncthreads();
      bv = threadIdx.x < (blockDim.x >> 5) ? sv[threadIdx.x] : MaxOp<A>::identity();
      bi = threadIdx.x < (blockDim.x >> 5) ? si[threadIdx.x] : kNone;
      if (warp == 0) warp_argmax(bv, bi);
      __syncthreads();
    }
    if (lane == 0 && o < O && bi != kNone) {
      values[o] = row[bi];
      indices[o] = bi;
    }
  }
}

/// Columns: a thread per output scans R in order, as the CPU does.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    max_dim_cols_kernel(const T* __restrict__ in, T* __restrict__ values, int64_t* __restrict__ indices, int64_t O,
                        int64_t R, int64_t I) {
  using A = acc_t<T>;
  const int64_t OI = O * I;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < OI; j += step) {
    const int64_t o = j / I, i = j - o * I;
    const T* col = in + o * R * I + i;
    A m = load_acc(col);
    int64_t mi = 0;
    if (m == m) {
      for (int64_t r = 1; r < R; ++r) {
        const A a = load_acc(col + r * I);
        if (a > m || a != a) {
          m = a;
          mi = r;
          if (a != a) break;
        }
      }
    }
    values[j] = col[mi * I];
    indices[j] = mi;
  }
}

void max_dim(const Tensor& values, const Tensor& indices, const Tensor& in, int64_t O, int64_t R, int64_t I) {
  check_ori("max", values, in, O, R, I);
  LOOM_CHECK(values.dtype() == in.dtype() && indices.dtype() == DType::i64 && indices.is_contiguous() &&
                 indices.numel() == O * I,
             "max (cuda): values must have the input's dtype and indices be contiguous int64 of ", O * I, " elements");
  LOOM_CHECK(R > 0, "max (cuda): the max over an empty dim is undefined");
  if (O * I == 0) return;
  DeviceScope scope(in.device().index);
  cudaStream_t s = stream_for(in);
  dispatch_all(in.dtype(), "max", [&](auto tag) {
    using T = decltype(tag);
    const T* x = dptr<const T>(in);
    T* v = dptr<T>(values);
    int64_t* ix = dptr<int64_t>(indices);
    if (I == 1 && R <= kLongRow) {
      max_dim_rows_kernel<32, T><<<grid_for(O, kBlock / 32), kBlock, 0, s>>>(x, v, ix, O, R);
    } else if (I == 1) {
      max_dim_rows_kernel<kBlock, T><<<grid_for(O, 1), kBlock, 0, s>>>(x, v, ix, O, R);
    } else {
      max_dim_cols_kernel<T><<<grid_for(O * I), kBlock, 0, s>>>(x, v, ix, O, R, I);
    }
    LOOM_CUDA_LAUNCH_CHECK("max_dim kernel");
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {

void register_reduce(CudaKernels& k) {
  k.reduce = cuda_detail::reduce;
  k.var = cuda_detail::var;
  k.max_dim = cuda_detail::max_dim;
  k.norm = cuda_detail::norm;
}

}  // namespace loom::detail
