// Host-side plan of the flash-attention kernels in tensor/cuda/attention.cu:
// tile sizes, grids, shared memory, causal tile ranges and the checks of the
// sdpa entries' arguments. Plain C++ (no CUDA header) so the CPU tests check it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "tensor/error.h"
#include "tensor/tensor.h"

namespace loom::cuda_detail {

/// Warps per block of every attention kernel.
constexpr int kSdpaWarps = 4;
/// Query rows (forward, dQ) or keys (dK/dV) each warp owns.
constexpr int kSdpaRowsPerWarp = 4;
/// Query rows (forward, dQ) or keys (dK/dV) per block: (16).
constexpr int kSdpaRows = kSdpaWarps * kSdpaRowsPerWarp;
/// Keys (forward, dQ) or query rows (dK/dV) per inner tile: one per lane (32).
constexpr int kSdpaCols = 32;
/// Threads per block (128).
constexpr int kSdpaThreads = kSdpaWarps * 32;

/// Head dims with a compiled kernel: multiples of 32 (each lane owns D/32 columns) up to 128.
inline bool sdpa_head_dim_supported(int64_t D) { return D == 32 || D == 64 || D == 96 || D == 128; }
/// Element types with a kernel (computed in f32).
inline bool sdpa_dtype_supported(DType dt) { return dt == DType::f32 || dt == DType::bf16 || dt == DType::f16; }

/// q (B, H, T, D), k/v (B, Hkv, S, D).
struct SdpaDims {
  int64_t B = 0, H = 0, Hkv = 0, T = 0, S = 0, D = 0;
  int64_t group() const { return H / Hkv; }
};

/// Shared-memory row stride in floats: D + 1, so a lane reading row `lane` at
/// column d and a warp reading one row at columns lane + 32 i both hit 32
/// distinct banks.
constexpr int64_t sdpa_smem_ld(int64_t D) { return D + 1; }

/// Grid (x: tiles, y: heads, z: batch) and dynamic shared memory of one kernel.
struct SdpaLaunch {
  int64_t grid_x = 0, grid_y = 0, grid_z = 0;
  size_t smem_bytes = 0;
};

/// Forward and dQ: one block per kSdpaRows query rows of one (b, h).
/// Forward smem: q rows (scaled), a K and a V tile, all f32.
inline SdpaLaunch sdpa_forward_launch(const SdpaDims& d) {
  const int64_t rows = kSdpaRows + 2 * kSdpaCols;
  return {(d.T + kSdpaRows - 1) / kSdpaRows, d.H, d.B, static_cast<size_t>(rows * sdpa_smem_ld(d.D)) * sizeof(float)};
}
/// dQ smem: q rows (scaled), dO rows, a K and a V tile.
inline SdpaLaunch sdpa_dq_launch(const SdpaDims& d) {
  const int64_t rows = 2 * kSdpaRows + 2 * kSdpaCols;
  return {(d.T + kSdpaRows - 1) / kSdpaRows, d.H, d.B, static_cast<size_t>(rows * sdpa_smem_ld(d.D)) * sizeof(float)};
}
/// dK/dV: one block per kSdpaRows keys of one (b, kv head), looping over the
/// kv head's H/Hkv query heads (so no two blocks write one dK row: no atomics).
/// smem: K and V rows, a q tile (scaled) and a dO tile, lse and D_i of the tile.
inline SdpaLaunch sdpa_dkv_launch(const SdpaDims& d) {
  const int64_t rows = 2 * kSdpaRows + 2 * kSdpaCols;
  return {(d.S + kSdpaRows - 1) / kSdpaRows, d.Hkv, d.B,
          (static_cast<size_t>(rows * sdpa_smem_ld(d.D)) + 2 * kSdpaCols) * sizeof(float)};
}

/// Keys [0, end) that query rows [t0, t0 + kSdpaRows) can see: the causal mask
/// is top-left aligned (row t sees keys s <= t), as PyTorch's is_causal.
inline int64_t sdpa_key_end(const SdpaDims& d, int64_t t0, bool causal) {
  return causal ? std::min<int64_t>(d.S, t0 + kSdpaRows) : d.S;
}
/// First query row that sees any of keys [s0, s0 + kSdpaRows): rows before s0
/// see none of them under the causal mask.
inline int64_t sdpa_query_begin(int64_t s0, bool causal) { return causal ? s0 : 0; }

/// Checks the grid fits CUDA's limits (y, z <= 65535).
inline void check_sdpa_grid(const SdpaLaunch& l, const char* op) {
  LOOM_CHECK_T(Unsupported, l.grid_x <= 0x7fffffffLL && l.grid_y <= 65535 && l.grid_z <= 65535, op, ": grid (",
               l.grid_x, ", ", l.grid_y, ", ", l.grid_z, ") exceeds CUDA's limits (heads and batch at most 65535)");
}

namespace sdpa_check_detail {
inline void expect_shape(const char* op, const char* what, const Tensor& t, const Shape& want) {
  LOOM_CHECK(t.defined(), op, ": ", what, " is undefined");
  LOOM_CHECK(t.sizes() == want, op, ": ", what, " has shape ", shape_str(t.sizes()), ", expected ", shape_str(want));
  LOOM_CHECK(t.is_contiguous(), op, ": ", what, " ", shape_str(t.sizes()), " must be contiguous");
}
inline void expect_dtype(const char* op, const char* what, const Tensor& t, DType dt) {
  LOOM_CHECK(t.dtype() == dt, op, ": ", what, " is ", dtype_name(t.dtype()), ", expected ", dtype_name(dt));
}
}  // namespace sdpa_check_detail

/// Checks the sdpa_forward entry's arguments (shapes, contiguity, dtypes, head
/// dim, devices) and returns the dims. Throws InvalidArgument for a contract
/// violation, Unsupported for a head dim or dtype without a kernel.
inline SdpaDims check_sdpa_forward(const char* op, const Tensor& out, const Tensor& lse, const Tensor& q,
                                   const Tensor& k, const Tensor& v) {
  using namespace sdpa_check_detail;
  LOOM_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  LOOM_CHECK(q.dim() == 4 && k.dim() == 4, op, ": expected q (B, H, T, D) and k, v (B, Hkv, S, D), got ",
             shape_str(q.sizes()), ", ", shape_str(k.sizes()));
  SdpaDims d{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  LOOM_CHECK(k.size(0) == d.B && k.size(3) == d.D, op, ": q ", shape_str(q.sizes()), " and k ", shape_str(k.sizes()),
             " differ in batch or head dim");
  LOOM_CHECK(d.Hkv > 0 && d.H % d.Hkv == 0, op, ": query heads ", d.H, " must be a multiple of kv heads ", d.Hkv);
  LOOM_CHECK_T(Unsupported, sdpa_head_dim_supported(d.D), op, ": head dim D = ", d.D,
               " has no CUDA flash-attention kernel (supported: 32, 64, 96, 128)");
  LOOM_CHECK_T(Unsupported, sdpa_dtype_supported(q.dtype()), op, ": no CUDA flash-attention kernel for dtype ",
               dtype_name(q.dtype()), " (f32, bf16, f16)");
  expect_shape(op, "q", q, q.sizes());
  expect_shape(op, "k", k, k.sizes());
  expect_shape(op, "v", v, k.sizes());
  expect_shape(op, "out", out, q.sizes());
  expect_shape(op, "lse", lse, {d.B, d.H, d.T});
  for (const Tensor* t : {&k, &v, &out}) expect_dtype(op, "an operand", *t, q.dtype());
  expect_dtype(op, "lse", lse, DType::f32);
  for (const Tensor* t : {&k, &v, &out, &lse})
    LOOM_CHECK(t->device() == q.device(), op, ": operands on ", q.device().str(), " and ", t->device().str());
  return d;
}

/// Checks the sdpa_backward entry's arguments as check_sdpa_forward does, plus
/// dq, dk, dv, dout of the shapes and dtype of q, k, v, q.
inline SdpaDims check_sdpa_backward(const char* op, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                                    const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse) {
  using namespace sdpa_check_detail;
  SdpaDims d = check_sdpa_forward(op, out, lse, q, k, v);
  expect_shape(op, "dq", dq, q.sizes());
  expect_shape(op, "dk", dk, k.sizes());
  expect_shape(op, "dv", dv, k.sizes());
  expect_shape(op, "dout", dout, q.sizes());
  for (const Tensor* t : {&dq, &dk, &dv, &dout}) {
    expect_dtype(op, "a gradient", *t, q.dtype());
    LOOM_CHECK(t->device() == q.device(), op, ": operands on ", q.device().str(), " and ", t->device().str());
  }
  return d;
}

}  // namespace loom::cuda_detail
