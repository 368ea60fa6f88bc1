// Flash attention on CUDA (the FlashAttention-2 algorithm): the forward runs an
// online softmax over K/V tiles and saves the per-row log-sum-exp; the backward
// recomputes P by tiles in three deterministic passes (D_i = rowsum(dO * O);
// dK/dV per block of keys, summing over every query head of its kv head; dQ per
// block of query rows), so no float atomics and two runs give the same bits.
// Computed in f32 for every dtype on CUDA cores (no tensor cores yet): in the
// dot products each lane owns one key (or query row) of a 32-wide tile, in the
// accumulations D/32 columns. Tiles and checks: tensor/cuda/attention_plan.h.
#include <cmath>
#include <type_traits>

#include "tensor/cuda/attention_plan.h"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kRowsPerWarp = kSdpaRowsPerWarp;

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

/// dst (rows, D + 1) f32 in shared memory = mul * rows [r0, r0 + rows) of the
/// contiguous (n, D) matrix src; rows at or past n are zero.
template <typename T, int D>
__device__ __forceinline__ void load_rows(float* dst, const T* __restrict__ src, int64_t r0, int rows, int64_t n,
                                          float mul) {
  constexpr int LD = D + 1;
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, c = i % D;
    const int64_t row = r0 + r;
    dst[r * LD + c] = row < n ? load_acc(src + row * D + c) * mul : 0.f;
  }
}

/// Whether key s is visible to query row t (top-left aligned causal mask, as PyTorch's is_causal).
__device__ __forceinline__ bool visible(int64_t t, int64_t s, int64_t Tq, int64_t S, bool causal) {
  return t < Tq && s < S && (!causal || s <= t);
}

/// acc[r][i] += coef_j(r) * tile[j][lane + 32 i] over the kSdpaCols rows j of a shared tile (row stride LD), where
/// lane j holds row r's coefficient for tile row j: P V in the forward, dS K for dQ in the backward.
template <int R, int NT, int LD>
__device__ __forceinline__ void accumulate_tile(float (&acc)[R][NT], const float (&coef)[R], const float* tile,
                                                int lane) {
  for (int j = 0; j < kSdpaCols; ++j) {
    float tj[NT];
#pragma unroll
    for (int i = 0; i < NT; ++i) tj[i] = tile[j * LD + lane + 32 * i];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float cj = __shfl_sync(kFullMask, coef[r], j);
#pragma unroll
      for (int i = 0; i < NT; ++i) acc[r][i] = fmaf(cj, tj[i], acc[r][i]);
    }
  }
}

// ---------------------------------------------------------------- forward
/// One block per kSdpaRows query rows of one (b, h); warp w owns rows
/// w * kRowsPerWarp + r, lane j key s0 + j of each K/V tile.
/// q, out (B, H, Tq, D); k, v (B, H/G, S, D); lse (B, H, Tq) f32.
template <typename T, int D>
__global__ void __launch_bounds__(kSdpaThreads)
    sdpa_forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q, const T* __restrict__ k,
                        const T* __restrict__ v, int64_t Tq, int64_t S, int64_t H, int64_t G, float scale,
                        bool causal) {
  constexpr int LD = D + 1, NT = D / 32, R = kRowsPerWarp;
  extern __shared__ float smem[];
  float* sq = smem;                 // (kSdpaRows, LD): q * scale
  float* sk = sq + kSdpaRows * LD;  // (kSdpaCols, LD)
  float* sv = sk + kSdpaCols * LD;  // (kSdpaCols, LD)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kSdpaRows;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = b * H + h, bkv = b * (H / G) + h / G;
  const T* kb = k + bkv * S * D;
  const T* vb = v + bkv * S * D;
  load_rows<T, D>(sq, q + bh * Tq * D, t0, kSdpaRows, Tq, scale);

  float o[R][NT], m[R], l[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int i = 0; i < NT; ++i) o[r][i] = 0.f;
  }
  const int64_t key_end = causal && t0 + kSdpaRows < S ? t0 + kSdpaRows : S;  // keys the block's last row sees
  for (int64_t s0 = 0; s0 < key_end; s0 += kSdpaCols) {
    __syncthreads();  // the previous tile is consumed (and sq is written, on the first pass)
    load_rows<T, D>(sk, kb, s0, kSdpaCols, S, 1.f);
    load_rows<T, D>(sv, vb, s0, kSdpaCols, S, 1.f);
    __syncthreads();
    float sc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) sc[r] = 0.f;
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      const float kc = sk[lane * LD + c];
#pragma unroll
      for (int r = 0; r < R; ++r) sc[r] = fmaf(sq[(warp * R + r) * LD + c], kc, sc[r]);
    }
    const int64_t s = s0 + lane;
    float p[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t t = t0 + warp * R + r;
      const bool ok = visible(t, s, Tq, S, causal);
      const float x = ok ? sc[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      const float base = m_new == -INFINITY ? 0.f : m_new;  // no key seen yet: keep everything at 0
      p[r] = ok ? expf(x - base) : 0.f;
      const float alpha = expf(m[r] - base);  // 0 while m[r] is -inf
      l[r] = l[r] * alpha + warp_sum(p[r]);
      m[r] = m_new;
#pragma unroll
      for (int i = 0; i < NT; ++i) o[r][i] *= alpha;
    }
    accumulate_tile<R, NT, LD>(o, p, sv, lane);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t t = t0 + warp * R + r;
    if (t >= Tq) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;  // l == 0 only when S == 0
    T* orow = out + (bh * Tq + t) * D;
#pragma unroll
    for (int i = 0; i < NT; ++i) orow[lane + 32 * i] = from_acc<T>(o[r][i] * inv);
    if (lane == 0) lse[bh * Tq + t] = l[r] > 0.f ? m[r] + logf(l[r]) : -INFINITY;
  }
}

// ---------------------------------------------------------------- backward
/// Threads per block of sdpa_row_dot_kernel (one warp per row).
constexpr int kSdpaDotThreads = 256;
/// di (rows) f32 = rowsum(dout * out) over D, one warp per row.
template <typename T, int D>
__global__ void __launch_bounds__(kSdpaDotThreads)
    sdpa_row_dot_kernel(float* __restrict__ di, const T* __restrict__ dout, const T* __restrict__ out, int64_t rows) {
  constexpr int NT = D / 32;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * warps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; row < rows; row += stride) {
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < NT; ++i)
      acc = fmaf(load_acc(dout + row * D + lane + 32 * i), load_acc(out + row * D + lane + 32 * i), acc);
    acc = warp_sum(acc);
    if (lane == 0) di[row] = acc;
  }
}

/// dq for kSdpaRows query rows of one (b, h): dq = scale * sum_j dS_j k_j over
/// the visible keys, dS = P * (dP - D_i), P = exp(S - lse), dP = dO v^T.
template <typename T, int D>
__global__ void __launch_bounds__(kSdpaThreads)
    sdpa_dq_kernel(T* __restrict__ dq, const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
                   const T* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ di, int64_t Tq,
                   int64_t S, int64_t H, int64_t G, float scale, bool causal) {
  constexpr int LD = D + 1, NT = D / 32, R = kRowsPerWarp;
  extern __shared__ float smem[];
  float* sq = smem;                  // (kSdpaRows, LD): q * scale
  float* sdo = sq + kSdpaRows * LD;  // (kSdpaRows, LD)
  float* sk = sdo + kSdpaRows * LD;  // (kSdpaCols, LD)
  float* sv = sk + kSdpaCols * LD;   // (kSdpaCols, LD)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kSdpaRows;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = b * H + h, bkv = b * (H / G) + h / G;
  const T* kb = k + bkv * S * D;
  const T* vb = v + bkv * S * D;
  load_rows<T, D>(sq, q + bh * Tq * D, t0, kSdpaRows, Tq, scale);
  load_rows<T, D>(sdo, dout + bh * Tq * D, t0, kSdpaRows, Tq, 1.f);

  float acc[R][NT], lse_r[R], di_r[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t t = t0 + warp * R + r;
    lse_r[r] = t < Tq ? lse[bh * Tq + t] : 0.f;
    di_r[r] = t < Tq ? di[bh * Tq + t] : 0.f;
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[r][i] = 0.f;
  }
  const int64_t key_end = causal && t0 + kSdpaRows < S ? t0 + kSdpaRows : S;  // keys the block's last row sees
  for (int64_t s0 = 0; s0 < key_end; s0 += kSdpaCols) {
    __syncthreads();
    load_rows<T, D>(sk, kb, s0, kSdpaCols, S, 1.f);
    load_rows<T, D>(sv, vb, s0, kSdpaCols, S, 1.f);
    __syncthreads();
    float sc[R], dp[R];
#pragma unroll
    for (int r = 0; r < R; ++r) sc[r] = dp[r] = 0.f;
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      const float kc = sk[lane * LD + c], vc = sv[lane * LD + c];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        sc[r] = fmaf(sq[(warp * R + r) * LD + c], kc, sc[r]);
        dp[r] = fmaf(sdo[(warp * R + r) * LD + c], vc, dp[r]);
      }
    }
    const int64_t s = s0 + lane;
    float ds[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t t = t0 + warp * R + r;
      const float p = visible(t, s, Tq, S, causal) ? expf(sc[r] - lse_r[r]) : 0.f;
      ds[r] = p * (dp[r] - di_r[r]);
    }
    accumulate_tile<R, NT, LD>(acc, ds, sk, lane);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t t = t0 + warp * R + r;
    if (t >= Tq) continue;
    T* row = dq + (bh * Tq + t) * D;
#pragma unroll
    for (int i = 0; i < NT; ++i) row[lane + 32 * i] = from_acc<T>(acc[r][i] * scale);
  }
}

/// dk, dv for kSdpaRows keys of one (b, kv head), summed over its G query heads
/// and the query rows that see them: dv = sum_i P_i dO_i, dk = sum_i dS_i (scale q_i).
/// Warp w owns keys w * kRowsPerWarp + r, lane i query row q0 + i of each tile.
template <typename T, int D>
__global__ void __launch_bounds__(kSdpaThreads)
    sdpa_dkv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ dout, const T* __restrict__ q,
                    const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ lse,
                    const float* __restrict__ di, int64_t Tq, int64_t S, int64_t H, int64_t G, float scale,
                    bool causal) {
  constexpr int LD = D + 1, NT = D / 32, R = kRowsPerWarp;
  extern __shared__ float smem[];
  float* sk = smem;                    // (kSdpaRows, LD)
  float* sv = sk + kSdpaRows * LD;     // (kSdpaRows, LD)
  float* sq = sv + kSdpaRows * LD;     // (kSdpaCols, LD): q * scale
  float* sdo = sq + kSdpaCols * LD;    // (kSdpaCols, LD)
  float* slse = sdo + kSdpaCols * LD;  // (kSdpaCols)
  float* sdi = slse + kSdpaCols;       // (kSdpaCols)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kSdpaRows;
  const int64_t kvh = blockIdx.y, b = blockIdx.z, Hkv = H / G;
  const int64_t bkv = b * Hkv + kvh;
  load_rows<T, D>(sk, k + bkv * S * D, s0, kSdpaRows, S, 1.f);
  load_rows<T, D>(sv, v + bkv * S * D, s0, kSdpaRows, S, 1.f);

  float acc_k[R][NT], acc_v[R][NT];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int i = 0; i < NT; ++i) acc_k[r][i] = acc_v[r][i] = 0.f;
  }
  const int64_t q_begin = causal ? s0 : 0;  // rows before s0 see none of these keys
  for (int64_t g = 0; g < G; ++g) {
    const int64_t bh = b * H + kvh * G + g;
    const T* qb = q + bh * Tq * D;
    const T* dob = dout + bh * Tq * D;
    for (int64_t q0 = q_begin; q0 < Tq; q0 += kSdpaCols) {
      __syncthreads();  // the previous tile is consumed (and sk, sv are written, on the first pass)
      load_rows<T, D>(sq, qb, q0, kSdpaCols, Tq, scale);
      load_rows<T, D>(sdo, dob, q0, kSdpaCols, Tq, 1.f);
      for (int i = threadIdx.x; i < kSdpaCols; i += blockDim.x) {
        const int64_t t = q0 + i;
        slse[i] = t < Tq ? lse[bh * Tq + t] : 0.f;
        sdi[i] = t < Tq ? di[bh * Tq + t] : 0.f;
      }
      __syncthreads();
      float sc[R], dp[R];
#pragma unroll
      for (int r = 0; r < R; ++r) sc[r] = dp[r] = 0.f;
#pragma unroll 8
      for (int c = 0; c < D; ++c) {
        const float qc = sq[lane * LD + c], doc = sdo[lane * LD + c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          sc[r] = fmaf(sk[(warp * R + r) * LD + c], qc, sc[r]);
          dp[r] = fmaf(sv[(warp * R + r) * LD + c], doc, dp[r]);
        }
      }
      const int64_t t = q0 + lane;
      const float lse_t = slse[lane], di_t = sdi[lane];
      float p[R], ds[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t s = s0 + warp * R + r;
        p[r] = visible(t, s, Tq, S, causal) ? expf(sc[r] - lse_t) : 0.f;
        ds[r] = p[r] * (dp[r] - di_t);
      }
      for (int j = 0; j < kSdpaCols; ++j) {
        float qj[NT], doj[NT];
#pragma unroll
        for (int i = 0; i < NT; ++i) {
          qj[i] = sq[j * LD + lane + 32 * i];
          doj[i] = sdo[j * LD + lane + 32 * i];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float pj = __shfl_sync(kFullMask, p[r], j), dsj = __shfl_sync(kFullMask, ds[r], j);
#pragma unroll
          for (int i = 0; i < NT; ++i) {
            acc_v[r][i] = fmaf(pj, doj[i], acc_v[r][i]);
            acc_k[r][i] = fmaf(dsj, qj[i], acc_k[r][i]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t s = s0 + warp * R + r;
    if (s >= S) continue;
    T* krow = dk + (bkv * S + s) * D;
    T* vrow = dv + (bkv * S + s) * D;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      krow[lane + 32 * i] = from_acc<T>(acc_k[r][i]);
      vrow[lane + 32 * i] = from_acc<T>(acc_v[r][i]);
    }
  }
}

// ---------------------------------------------------------------- launchers
/// Calls f(T{}, std::integral_constant<int, D>{}) for the element type of dt and head dim D.
template <typename F>
void dispatch_sdpa(DType dt, int64_t D, F&& f) {
  auto with_dim = [&](auto tag) {
    switch (D) {
      case 32:
        return f(tag, std::integral_constant<int, 32>{});
      case 64:
        return f(tag, std::integral_constant<int, 64>{});
      case 96:
        return f(tag, std::integral_constant<int, 96>{});
      case 128:
        return f(tag, std::integral_constant<int, 128>{});
      default:
        break;
    }
    // check_sdpa_forward already rejected other head dims with the same message.
    LOOM_THROW(Unsupported, "sdpa: head dim D = ", D,
               " has no CUDA flash-attention kernel (supported: 32, 64, 96, 128)");
  };
  switch (dt) {
    case DType::f32:
      return with_dim(float{});
    case DType::bf16:
      return with_dim(__nv_bfloat16{});
    case DType::f16:
      return with_dim(__half{});
    default:
      break;
  }
  LOOM_THROW(Unsupported, "sdpa: no CUDA flash-attention kernel for dtype ", dtype_name(dt), " (f32, bf16, f16)");
}

/// Lets `kernel` use more than the default 48 KiB of dynamic shared memory.
template <typename K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    LOOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

dim3 grid_of(const SdpaLaunch& l) {
  return dim3(static_cast<unsigned>(l.grid_x), static_cast<unsigned>(l.grid_y), static_cast<unsigned>(l.grid_z));
}

}  // namespace

void sdpa_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                  bool causal) {
  const char* op = "sdpa_forward (CUDA)";
  const SdpaDims d = check_sdpa_forward(op, out, lse, q, k, v);
  if (d.B == 0 || d.H == 0 || d.T == 0) return;
  const SdpaLaunch l = sdpa_forward_launch(d);
  check_sdpa_grid(l, op);
  DeviceScope scope(q.device().index);
  cudaStream_t stream = stream_for(q);
  dispatch_sdpa(q.dtype(), d.D, [&](auto tag, auto dim) {
    using T = decltype(tag);
    constexpr int D = decltype(dim)::value;
    auto kernel = sdpa_forward_kernel<T, D>;
    allow_smem(kernel, l.smem_bytes);
    kernel<<<grid_of(l), kSdpaThreads, l.smem_bytes, stream>>>(dptr<T>(out), dptr<float>(lse), dptr<T>(q), dptr<T>(k),
                                                               dptr<T>(v), d.T, d.S, d.H, d.group(),
                                                               static_cast<float>(scale), causal);
    LOOM_CUDA_LAUNCH_CHECK("sdpa_forward_kernel");
  });
}

void sdpa_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, double scale, bool causal) {
  const char* op = "sdpa_backward (CUDA)";
  const SdpaDims d = check_sdpa_backward(op, dq, dk, dv, dout, q, k, v, out, lse);
  if (d.B == 0 || d.Hkv == 0) return;
  DeviceScope scope(q.device().index);
  cudaStream_t stream = stream_for(q);
  if (d.T == 0 || d.H == 0) {  // no query rows: the keys get no gradient
    const size_t bytes = static_cast<size_t>(dk.numel()) * element_size(dk.dtype());
    LOOM_CUDA_CHECK(cudaMemsetAsync(dk.data_ptr(), 0, bytes, stream));
    LOOM_CUDA_CHECK(cudaMemsetAsync(dv.data_ptr(), 0, bytes, stream));
    return;
  }
  const SdpaLaunch lq = sdpa_dq_launch(d), lkv = sdpa_dkv_launch(d);
  check_sdpa_grid(lq, op);
  check_sdpa_grid(lkv, op);
  // D_i = rowsum(dO * O) (B, H, T) f32; freed into the caching allocator's list
  // of this stream, so its reuse is ordered after the kernels below.
  const Tensor di = empty({d.B, d.H, d.T}, DType::f32, q.device());
  const int64_t rows = d.B * d.H * d.T;
  const float sc = static_cast<float>(scale);
  dispatch_sdpa(q.dtype(), d.D, [&](auto tag, auto dim) {
    using T = decltype(tag);
    constexpr int D = decltype(dim)::value;
    // grid_for with a "block" of 8 rows: one warp per row.
    sdpa_row_dot_kernel<T, D><<<grid_for(rows, kSdpaDotThreads / 32), kSdpaDotThreads, 0, stream>>>(
        dptr<float>(di), dptr<T>(dout), dptr<T>(out), rows);
    LOOM_CUDA_LAUNCH_CHECK("sdpa_row_dot_kernel");
    auto dq_kernel = sdpa_dq_kernel<T, D>;
    allow_smem(dq_kernel, lq.smem_bytes);
    dq_kernel<<<grid_of(lq), kSdpaThreads, lq.smem_bytes, stream>>>(dptr<T>(dq), dptr<T>(dout), dptr<T>(q), dptr<T>(k),
                                                                    dptr<T>(v), dptr<float>(lse), dptr<float>(di), d.T,
                                                                    d.S, d.H, d.group(), sc, causal);
    LOOM_CUDA_LAUNCH_CHECK("sdpa_dq_kernel");
    if (d.S == 0) return;
    auto dkv_kernel = sdpa_dkv_kernel<T, D>;
    allow_smem(dkv_kernel, lkv.smem_bytes);
    dkv_kernel<<<grid_of(lkv), kSdpaThreads, lkv.smem_bytes, stream>>>(
        dptr<T>(dk), dptr<T>(dv), dptr<T>(dout), dptr<T>(q), dptr<T>(k), dptr<T>(v), dptr<float>(lse), dptr<float>(di),
        d.T, d.S, d.H, d.group(), sc, causal);
    LOOM_CUDA_LAUNCH_CHECK("sdpa_dkv_kernel");
  });
}

}  // namespace loom::cuda_detail

namespace loom::detail {

void register_attention(CudaKernels& kernels) {
  kernels.sdpa_forward = &cuda_detail::sdpa_forward;
  kernels.sdpa_backward = &cuda_detail::sdpa_backward;
}

}  // namespace loom::detail
