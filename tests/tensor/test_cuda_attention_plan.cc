// The host-side plan of the CUDA flash-attention kernels (tensor/cuda/attention_plan.h):
// tiles cover exactly the visible (query, key) pairs, shared memory fits, and the
// entries' argument checks name what is wrong. The kernels themselves need a GPU.
#include "tensor/cuda/attention_plan.h"

#include <gtest/gtest.h>

#include <string>

#include "tensor/ops.h"

namespace loom::cuda_detail {
namespace {

bool sees(int64_t t, int64_t s, int64_t T, int64_t S, bool causal) { return t < T && s < S && (!causal || s <= t); }

TEST(CudaAttentionPlan, SupportsHeadDimsUpTo128InStepsOf32) {
  for (int64_t D : {32, 64, 96, 128}) EXPECT_TRUE(sdpa_head_dim_supported(D)) << D;
  for (int64_t D : {0, 8, 16, 48, 80, 160, 256}) EXPECT_FALSE(sdpa_head_dim_supported(D)) << D;
  EXPECT_TRUE(sdpa_dtype_supported(DType::bf16));
  EXPECT_TRUE(sdpa_dtype_supported(DType::f16));
  EXPECT_TRUE(sdpa_dtype_supported(DType::f32));
  EXPECT_FALSE(sdpa_dtype_supported(DType::f64));
}

TEST(CudaAttentionPlan, GridsCoverEveryQueryRowAndKey) {
  const SdpaDims d{3, 12, 4, 1000, 777, 64};
  const SdpaLaunch f = sdpa_forward_launch(d), q = sdpa_dq_launch(d), kv = sdpa_dkv_launch(d);
  EXPECT_GE(f.grid_x * kSdpaRows, d.T);
  EXPECT_LT((f.grid_x - 1) * kSdpaRows, d.T);
  EXPECT_EQ(f.grid_y, 12);
  EXPECT_EQ(f.grid_z, 3);
  EXPECT_EQ(q.grid_x, f.grid_x);
  EXPECT_GE(kv.grid_x * kSdpaRows, d.S);
  EXPECT_LT((kv.grid_x - 1) * kSdpaRows, d.S);
  EXPECT_EQ(kv.grid_y, 4);  // one block column per kv head: dK/dV rows have a single writer
  EXPECT_EQ(kv.grid_z, 3);
}

TEST(CudaAttentionPlan, SharedMemoryFitsAnH100Block) {
  for (int64_t D : {32, 64, 96, 128}) {
    const SdpaDims d{1, 1, 1, 64, 64, D};
    for (const SdpaLaunch& l : {sdpa_forward_launch(d), sdpa_dq_launch(d), sdpa_dkv_launch(d)})
      EXPECT_LE(l.smem_bytes, 227u * 1024) << "D = " << D;
  }
  // forward: 16 q rows + 32 K rows + 32 V rows of 129 floats at D = 128
  EXPECT_EQ(sdpa_forward_launch({1, 1, 1, 1, 1, 128}).smem_bytes, (16 + 64) * 129 * sizeof(float));
}

/// Every (t, s) pair the mask lets through is visited by the forward / dQ block
/// that owns row t (s < key end) and by the dK/dV block that owns key s
/// (t >= query begin), and the tiles skip only pairs that are masked.
TEST(CudaAttentionPlan, CausalTileRangesVisitExactlyTheVisiblePairs) {
  for (bool causal : {true, false}) {
    for (auto [T, S] : {std::pair<int64_t, int64_t>{1, 1}, {37, 37}, {100, 61}, {45, 130}, {16, 16}, {33, 1}}) {
      const SdpaDims d{1, 1, 1, T, S, 64};
      for (int64_t t = 0; t < T; ++t) {
        const int64_t t0 = t / kSdpaRows * kSdpaRows;
        const int64_t key_end = sdpa_key_end(d, t0, causal);
        EXPECT_LE(key_end, S);
        for (int64_t s = 0; s < S; ++s) {
          if (!sees(t, s, T, S, causal)) continue;
          EXPECT_LT(s, key_end) << "T " << T << " S " << S << " t " << t << " s " << s;
          const int64_t s0 = s / kSdpaRows * kSdpaRows;
          EXPECT_GE(t, sdpa_query_begin(s0, causal)) << "T " << T << " S " << S << " t " << t << " s " << s;
        }
        // keys skipped by the block are masked for every row of it
        for (int64_t s = key_end; s < S; ++s)
          for (int64_t r = t0; r < std::min(T, t0 + kSdpaRows); ++r) EXPECT_FALSE(sees(r, s, T, S, causal));
      }
    }
  }
}

TEST(CudaAttentionPlan, RejectsGridsBeyondCudaLimits) {
  EXPECT_NO_THROW(check_sdpa_grid(sdpa_forward_launch({65535, 65535, 1, 10, 10, 64}), "op"));
  EXPECT_THROW(check_sdpa_grid(sdpa_forward_launch({65536, 1, 1, 10, 10, 64}), "op"), Unsupported);
  EXPECT_THROW(check_sdpa_grid(sdpa_forward_launch({1, 65536, 1, 10, 10, 64}), "op"), Unsupported);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaAttentionPlan, ForwardChecksAcceptTheContractAndReturnDims) {
  Tensor q = ops::zeros({2, 8, 10, 64}, DType::bf16), k = ops::zeros({2, 2, 12, 64}, DType::bf16),
         v = ops::zeros({2, 2, 12, 64}, DType::bf16);
  Tensor out = ops::zeros({2, 8, 10, 64}, DType::bf16), lse = ops::zeros({2, 8, 10}, DType::f32);
  const SdpaDims d = check_sdpa_forward("op", out, lse, q, k, v);
  EXPECT_EQ(d.B, 2);
  EXPECT_EQ(d.H, 8);
  EXPECT_EQ(d.Hkv, 2);
  EXPECT_EQ(d.T, 10);
  EXPECT_EQ(d.S, 12);
  EXPECT_EQ(d.D, 64);
  EXPECT_EQ(d.group(), 4);
  Tensor dq = ops::zeros_like(q), dk = ops::zeros_like(k), dv = ops::zeros_like(v), dout = ops::zeros_like(q);
  EXPECT_NO_THROW(check_sdpa_backward("op", dq, dk, dv, dout, q, k, v, out, lse));
}

TEST(CudaAttentionPlan, ForwardChecksNameTheHeadDimAndTheBadOperand) {
  auto fwd = [](const Shape& qs, const Shape& ks, DType dt, DType lse_dt) {
    Tensor q = ops::zeros(qs, dt), k = ops::zeros(ks, dt), v = ops::zeros(ks, dt), out = ops::zeros(qs, dt);
    Tensor lse = ops::zeros({qs[0], qs[1], qs[2]}, lse_dt);
    check_sdpa_forward("sdpa_forward (CUDA)", out, lse, q, k, v);
  };
  EXPECT_THROW(fwd({1, 2, 4, 80}, {1, 2, 4, 80}, DType::f32, DType::f32), Unsupported);
  EXPECT_NE(message_of([&] {
              fwd({1, 2, 4, 80}, {1, 2, 4, 80}, DType::f32, DType::f32);
            }).find("D = 80"),
            std::string::npos);
  EXPECT_THROW(fwd({1, 2, 4, 64}, {1, 2, 4, 64}, DType::f64, DType::f32), Unsupported);
  EXPECT_THROW(fwd({1, 3, 4, 64}, {1, 2, 4, 64}, DType::f32, DType::f32), InvalidArgument);    // 3 % 2
  EXPECT_THROW(fwd({1, 2, 4, 64}, {2, 2, 4, 64}, DType::f32, DType::f32), InvalidArgument);    // batch
  EXPECT_THROW(fwd({1, 2, 4, 64}, {1, 2, 4, 64}, DType::bf16, DType::bf16), InvalidArgument);  // lse not f32
  EXPECT_NE(message_of([&] {
              fwd({1, 2, 4, 64}, {1, 2, 4, 64}, DType::bf16, DType::bf16);
            }).find("lse"),
            std::string::npos);

  Tensor q = ops::zeros({1, 2, 4, 64}), k = ops::zeros({1, 2, 4, 64}), out = ops::zeros({1, 2, 4, 64});
  Tensor lse = ops::zeros({1, 2, 4});
  Tensor v_strided = ops::transpose(ops::zeros({1, 4, 2, 64}), 1, 2);  // right shape, not contiguous
  EXPECT_NE(message_of([&] { check_sdpa_forward("op", out, lse, q, k, v_strided); }).find("contiguous"),
            std::string::npos);
  Tensor v_half = ops::zeros({1, 2, 4, 64}, DType::f16);
  EXPECT_THROW(check_sdpa_forward("op", out, lse, q, k, v_half), InvalidArgument);
}

TEST(CudaAttentionPlan, BackwardChecksGradientShapesAndDtypes) {
  Tensor q = ops::zeros({1, 4, 6, 32}), k = ops::zeros({1, 2, 6, 32}), v = ops::zeros({1, 2, 6, 32});
  Tensor out = ops::zeros({1, 4, 6, 32}), lse = ops::zeros({1, 4, 6});
  Tensor dq = ops::zeros_like(q), dk = ops::zeros_like(k), dv = ops::zeros_like(v), dout = ops::zeros_like(q);
  Tensor dk_wrong = ops::zeros({1, 4, 6, 32});  // per query head instead of per kv head
  EXPECT_THROW(check_sdpa_backward("op", dq, dk_wrong, dv, dout, q, k, v, out, lse), InvalidArgument);
  Tensor dq_bf16 = ops::zeros({1, 4, 6, 32}, DType::bf16);
  EXPECT_THROW(check_sdpa_backward("op", dq_bf16, dk, dv, dout, q, k, v, out, lse), InvalidArgument);
}

}  // namespace
}  // namespace loom::cuda_detail
