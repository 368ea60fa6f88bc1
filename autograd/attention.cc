// Fused causal / grouped-query scaled-dot-product attention on CPU: one
// FunctionNode whose forward runs per (batch, head) S = q k^T * scale, mask,
// softmax, P v with BLAS, and saves only q, k, v, out and the per-row
// log-sum-exp; backward recomputes P from them (flash-attention style). CUDA
// tensors go to the kernel table's flash-attention entries the same way
// (sdpa_route in autograd/attention.h says which path runs).
#include "autograd/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/autocast.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "tensor/cpu/blas_threads.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/cuda/attention_plan.h"
#include "tensor/cuda_dispatch.h"
#include "tensor/op_trace.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"

namespace loom {
namespace {

using autograd::SavedTensor;

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

using detail::BlasSingleThreaded;

struct SdpaShape {
  int64_t B, H, Hkv, T, S, D;
  double scale;
  bool causal;
  double p;                       // dropout probability on the attention weights (0: none)
  uint64_t seed = 0, offset = 0;  // Philox stream of the dropout mask
  int64_t group() const { return H / Hkv; }
  /// Keys query row t may see: top-left aligned causal mask (s <= t), as PyTorch's is_causal.
  int64_t visible(int64_t t) const { return causal ? std::min<int64_t>(S, t + 1) : S; }
};

/// Whether attention weight (b*H + h, t, s) survives dropout: a pure function of
/// the Philox stream, so backward regenerates the forward's mask.
bool keep(const SdpaShape& sh, int64_t bh, int64_t t, int64_t s) {
  const uint64_t idx = static_cast<uint64_t>((bh * sh.T + t) * sh.S + s);
  const uint64_t block = sh.offset + idx / 4;
  auto r = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}, sh.seed);
  return uint_to_unit_float(r[idx % 4]) >= static_cast<float>(sh.p);
}

/// Query rows processed together: with a causal mask a block of rows needs only
/// the keys up to its last row, so the gemms skip the masked upper triangle.
constexpr int64_t kRowBlock = 64;

/// Forward for one dtype. q (B,H,T,D), k/v (B,Hkv,S,D), out (B,H,T,D), lse (B,H,T); all contiguous.
template <typename T>
void sdpa_forward(const SdpaShape& sh, const T* q, const T* k, const T* v, T* out, T* lse) {
  const int64_t G = sh.group(), Tq = sh.T, S = sh.S, D = sh.D;
  const T drop_scale = sh.p > 0 ? static_cast<T>(1.0 / (1.0 - sh.p)) : T(1);
  BlasSingleThreaded blas_guard;
  parallel_for(0, sh.B * sh.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scores(static_cast<size_t>(std::min(Tq, kRowBlock) * S));  // (rows, sk)
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / sh.H, h = bh % sh.H, kvh = b * sh.Hkv + h / G;
      const T* kh = k + kvh * S * D;
      const T* vh = v + kvh * S * D;
      for (int64_t t0 = 0; t0 < Tq; t0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, Tq - t0);
        const int64_t sk = sh.visible(t0 + rows - 1);  // keys the block's last row sees
        const T* qb = q + (bh * Tq + t0) * D;
        gemm(false, true, rows, sk, D, static_cast<T>(sh.scale), qb, D, kh, D, T(0), scores.data(), sk);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t t = t0 + r;
          T* row = scores.data() + r * sk;
          const int64_t len = sh.visible(t);
          T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
          for (int64_t j = 0; j < len; ++j) m = std::max(m, row[j]);
          T l = 0;
#pragma omp simd reduction(+ : l)
          for (int64_t j = 0; j < len; ++j) {
            row[j] = detail::exp_acc(row[j] - m);  // vectorised f32 exp (std::exp is a libm call per element)
            l += row[j];
          }
          const T inv = T(1) / l;
          for (int64_t j = 0; j < len; ++j) row[j] *= inv;
          for (int64_t j = len; j < sk; ++j) row[j] = 0;
          if (sh.p > 0)
            for (int64_t j = 0; j < len; ++j) row[j] = keep(sh, bh, t, j) ? row[j] * drop_scale : T(0);
          lse[bh * Tq + t] = m + std::log(l);
        }
        gemm(false, false, rows, D, sk, T(1), scores.data(), sk, vh, D, T(0), out + (bh * Tq + t0) * D, D);
      }
    }
  });
}

/// Backward for one dtype. dout (B,H,T,D) contiguous; writes dq (B,H,T,D) and
/// dk/dv (B,Hkv,S,D), summing over the query heads that share a kv head.
template <typename T>
void sdpa_backward(const SdpaShape& sh, const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout,
                   T* dq, T* dk, T* dv) {
  const int64_t G = sh.group(), Tq = sh.T, S = sh.S, D = sh.D;
  const T drop_scale = sh.p > 0 ? static_cast<T>(1.0 / (1.0 - sh.p)) : T(1);
  // Query heads sharing a kv head (G > 1) all add into its dk/dv. With enough (batch, kv head) pairs to keep every
  // thread busy, one thread runs a kv head's G query heads in turn and accumulates in place; otherwise each (b, h)
  // writes a per-head slot and the slots are summed per kv head below.
  const bool by_kv = G > 1 && sh.B * sh.Hkv >= 2 * static_cast<int64_t>(num_threads());
  const bool slots = G > 1 && !by_kv;
  std::vector<T> dk_heads, dv_heads;
  if (slots) {
    dk_heads.resize(static_cast<size_t>(sh.B * sh.H * S * D));
    dv_heads.resize(static_cast<size_t>(sh.B * sh.H * S * D));
  }
  struct Scratch {
    std::vector<T> p, dp, pd, di;
  };
  // One query head bh: adds its dk/dv into dkh/dvh (S, D) and writes its dq.
  auto head = [&](int64_t bh, T* dkh, T* dvh, Scratch& sc) {
    std::vector<T>&p = sc.p, &dp = sc.dp, &pd = sc.pd, &di = sc.di;
    const int64_t b = bh / sh.H, h = bh % sh.H, kvh = b * sh.Hkv + h / G;
    const T* kh = k + kvh * S * D;
    const T* vh = v + kvh * S * D;
    for (int64_t t0 = 0; t0 < Tq; t0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, Tq - t0);
      const int64_t sk = sh.visible(t0 + rows - 1);
      const int64_t off = (bh * Tq + t0) * D;
      const T* qb = q + off;
      const T* ob = out + off;
      const T* dob = dout + off;
      // P = exp(q k^T * scale - lse), zero where masked.
      gemm(false, true, rows, sk, D, static_cast<T>(sh.scale), qb, D, kh, D, T(0), p.data(), sk);
      for (int64_t r = 0; r < rows; ++r) {
        T* row = p.data() + r * sk;
        const int64_t len = sh.visible(t0 + r);
        const T l = lse[bh * Tq + t0 + r];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) row[j] = detail::exp_acc(row[j] - l);
        for (int64_t j = len; j < sk; ++j) row[j] = 0;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < D; ++d) acc += dob[r * D + d] * ob[r * D + d];
        di[r] = acc;  // rowsum(dO * O) = sum_j P_j dP_j
      }
      // dP = dO v^T
      gemm(false, true, rows, sk, D, T(1), dob, D, vh, D, T(0), dp.data(), sk);
      if (sh.p > 0) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < sk; ++j) {
            const size_t i = static_cast<size_t>(r * sk + j);
            const bool kept = j < sh.visible(t0 + r) && keep(sh, bh, t0 + r, j);
            pd[i] = kept ? p[i] * drop_scale : T(0);
            dp[i] = kept ? dp[i] * drop_scale : T(0);
          }
        }
      }
      // dV += P_dropped^T dO
      gemm(true, false, sk, D, rows, T(1), sh.p > 0 ? pd.data() : p.data(), sk, dob, D, T(1), dvh, D);
      // dS = P * (dP - D_i) * scale, in place in p
      for (int64_t r = 0; r < rows; ++r) {
        T* row = p.data() + r * sk;
        const T* drow = dp.data() + r * sk;
        for (int64_t j = 0; j < sk; ++j) row[j] = row[j] * (drow[j] - di[r]) * static_cast<T>(sh.scale);
      }
      gemm(false, false, rows, D, sk, T(1), p.data(), sk, kh, D, T(0), dq + off, D);  // dQ = dS k
      gemm(true, false, sk, D, rows, T(1), p.data(), sk, qb, D, T(1), dkh, D);        // dK += dS^T q
    }
  };
  BlasSingleThreaded blas_guard;
  parallel_for(0, by_kv ? sh.B * sh.Hkv : sh.B * sh.H, 1, [&](int64_t begin, int64_t end) {
    const size_t block = static_cast<size_t>(std::min(Tq, kRowBlock) * S);
    Scratch sc{std::vector<T>(block), std::vector<T>(block), std::vector<T>(sh.p > 0 ? block : 0),
               std::vector<T>(static_cast<size_t>(kRowBlock))};
    for (int64_t i = begin; i < end; ++i) {
      if (by_kv) {  // i = b * Hkv + kv: its G query heads in turn
        T* dkh = dk + i * S * D;
        T* dvh = dv + i * S * D;
        std::fill(dkh, dkh + S * D, T(0));
        std::fill(dvh, dvh + S * D, T(0));
        const int64_t b = i / sh.Hkv, kv = i % sh.Hkv;
        for (int64_t g = 0; g < G; ++g) head(b * sh.H + kv * G + g, dkh, dvh, sc);
      } else {  // i = b * H + h
        const int64_t kvh = (i / sh.H) * sh.Hkv + (i % sh.H) / G;
        T* dkh = slots ? dk_heads.data() + i * S * D : dk + kvh * S * D;
        T* dvh = slots ? dv_heads.data() + i * S * D : dv + kvh * S * D;
        std::fill(dkh, dkh + S * D, T(0));
        std::fill(dvh, dvh + S * D, T(0));
        head(i, dkh, dvh, sc);
      }
    }
  });
  if (slots) {
    const int64_t slot = S * D;
    parallel_for(0, sh.B * sh.Hkv, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bkv = begin; bkv < end; ++bkv) {
        const int64_t b = bkv / sh.Hkv, kv = bkv % sh.Hkv;
        T* dko = dk + bkv * slot;
        T* dvo = dv + bkv * slot;
        std::fill(dko, dko + slot, T(0));
        std::fill(dvo, dvo + slot, T(0));
        for (int64_t g = 0; g < G; ++g) {
          const int64_t bh = b * sh.H + kv * G + g;
          const T* dks = dk_heads.data() + bh * slot;
          const T* dvs = dv_heads.data() + bh * slot;
          for (int64_t i = 0; i < slot; ++i) {
            dko[i] += dks[i];
            dvo[i] += dvs[i];
          }
        }
      }
    });
  }
}

/// The same attention from recorded small ops, for devices without the fused kernel.
Tensor sdpa_composed(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal, double dropout_p, bool training,
                     Generator& gen, const SdpaShape& sh) {
  Tensor kk = k, vv = v;
  if (sh.group() > 1) {
    auto repeat = [&](const Tensor& t) {
      Tensor e = expand(unsqueeze(t, 2), {sh.B, sh.Hkv, sh.group(), sh.S, sh.D});
      return reshape(e, {sh.B, sh.H, sh.S, sh.D});
    };
    kk = repeat(k);
    vv = repeat(v);
  }
  Tensor scores = mul(matmul(q, transpose(kk, -1, -2)), sh.scale);  // (B, H, T, S)
  if (is_causal) {
    Tensor mask = ops::slice(ops::causal_mask(std::max(sh.T, sh.S), q.device()), 0, 0, sh.T);
    mask = ops::slice(mask, 1, 0, sh.S);
    scores = masked_fill(scores, mask, -std::numeric_limits<double>::infinity());
  }
  Tensor probs = dropout(softmax(scores, -1), dropout_p, training, gen);
  return matmul(probs, vv);
}

/// The CUDA flash-attention entries as one FunctionNode: forward saves q, k, v
/// (in the compute dtype ct), out and lse (B, H, T) f32; backward recomputes P by tiles.
Tensor sdpa_cuda_fused(const Tensor& q, const Tensor& k, const Tensor& v, const SdpaShape& sh, DType ct) {
  const char* op = "scaled_dot_product_attention";
  const detail::CudaKernels& kernels = detail::cuda_kernels(op, q);
  auto forward = detail::need(kernels.sdpa_forward, op, q);
  auto backward = detail::need(kernels.sdpa_backward, op, q);
  Tensor qc = ops::contiguous(ops::to(q, ct)), kc = ops::contiguous(ops::to(k, ct)),
         vc = ops::contiguous(ops::to(v, ct));
  Tensor oc = empty({sh.B, sh.H, sh.T, sh.D}, ct, q.device());
  Tensor lse = empty({sh.B, sh.H, sh.T}, DType::f32, q.device());
  {
    NoGradGuard no_grad;
    forward(oc, lse, qc, kc, vc, sh.scale, sh.causal);
  }
  Tensor out = ops::to(oc, q.dtype());
  if (autograd::any_requires_grad({q, k, v})) {
    SavedTensor Q(qc), K(kc), V(vc), O(oc), L(lse);
    autograd::record("ScaledDotProductAttentionBackward", {q, k, v}, {out}, [=](const std::vector<Tensor>& g) {
      Tensor qq = Q.unpack(op), kk = K.unpack(op), vv = V.unpack(op), oo = O.unpack(op), ll = L.unpack(op);
      Tensor dout = ops::contiguous(ops::to(g[0], ct));
      Tensor dq = empty(qq.sizes(), ct, qq.device()), dk = empty(kk.sizes(), ct, kk.device()),
             dv = empty(vv.sizes(), ct, vv.device());
      backward(dq, dk, dv, dout, qq, kk, vv, oo, ll, sh.scale, sh.causal);
      return std::vector<Tensor>{dq, dk, dv};
    });
  }
  return out;
}

}  // namespace

namespace detail {

SdpaRoute sdpa_route(Device device, DType q, DType k, DType v, int64_t head_dim, double dropout_p) {
  const bool any_f64 = q == DType::f64 || k == DType::f64 || v == DType::f64;
  if (device.is_cpu()) return {SdpaPath::kCpuFused, any_f64 ? DType::f64 : DType::f32};
  const DType ct = q == k && q == v ? q : DType::f32;
  if (device.is_cuda() && dropout_p == 0.0 && !any_f64 && cuda_detail::sdpa_head_dim_supported(head_dim) &&
      cuda_detail::sdpa_dtype_supported(ct))
    return {SdpaPath::kCudaFused, ct};
  return {SdpaPath::kComposed, ct};
}

}  // namespace detail

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal, double dropout_p,
                                    bool training, Generator& gen) {
  if (autocast_enabled()) {  // a matrix product: low precision under autocast (softmax stays f32 inside)
    Tensor lq = autograd::detail::autocast_lowp(q), lk = autograd::detail::autocast_lowp(k),
           lv = autograd::detail::autocast_lowp(v);
    autograd::detail::AutocastSuspend off;
    return scaled_dot_product_attention(lq, lk, lv, is_causal, dropout_p, training, gen);
  }
  const char* op = "scaled_dot_product_attention";
  LOOM_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
             ": expected q (B, H, T, D) and k, v (B, Hkv, S, D), got ", shape_str(q.sizes()), ", ",
             shape_str(k.sizes()), ", ", shape_str(v.sizes()));
  LOOM_CHECK(k.sizes() == v.sizes(), op, ": k ", shape_str(k.sizes()), " and v ", shape_str(v.sizes()),
             " must have the same shape");
  LOOM_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3), op, ": q ", shape_str(q.sizes()), " and k ",
             shape_str(k.sizes()), " differ in batch or head dim");
  LOOM_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": query heads ", q.size(1),
             " must be a multiple of kv heads ", k.size(1), " (q ", shape_str(q.sizes()), ", k ", shape_str(k.sizes()),
             ")");
  LOOM_CHECK(is_floating(q.dtype()) && is_floating(k.dtype()) && is_floating(v.dtype()), op,
             ": expected floating tensors, got ", dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ",
             dtype_name(v.dtype()));
  LOOM_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  check_same_device(op, q, k);
  check_same_device(op, q, v);

  SdpaShape sh{q.size(0),
               q.size(1),
               k.size(1),
               q.size(2),
               k.size(2),
               q.size(3),
               1.0 / std::sqrt(static_cast<double>(q.size(3))),
               is_causal,
               training ? dropout_p : 0.0};
  const detail::SdpaRoute route = detail::sdpa_route(q.device(), q.dtype(), k.dtype(), v.dtype(), sh.D, sh.p);
  // Under an op trace (ONNX export) the composed path runs, so the trace holds attention as matmul, mask and
  // softmax ops of tensor/ops.h rather than one fused kernel.
  if (route.path == detail::SdpaPath::kComposed || optrace::active())
    return sdpa_composed(q, k, v, is_causal, dropout_p, training, gen, sh);
  if (route.path == detail::SdpaPath::kCudaFused) return sdpa_cuda_fused(q, k, v, sh, route.compute);
  profiler::Scope scope("attention");  // the fused CPU path (the composed one shows as its ops)
  if (sh.p > 0) {
    sh.seed = gen.seed();
    sh.offset = gen.advance(static_cast<uint64_t>((sh.B * sh.H * sh.T * sh.S + 3) / 4));
  }

  // Compute in f64 when any input is f64, else in f32 (bf16/f16 are converted).
  const DType ct = route.compute;
  const bool f64 = ct == DType::f64;
  Tensor qc = ops::contiguous(ops::to(q, ct)), kc = ops::contiguous(ops::to(k, ct)),
         vc = ops::contiguous(ops::to(v, ct));
  Tensor oc, lse;
  // Selective activation checkpointing keeps out and lse from the first run and reuses them in the recompute.
  auto* sac = autograd::detail::selective_cache();
  if (sac && sac->replaying()) {
    auto kept = sac->replay("scaled_dot_product_attention");
    oc = kept[0];
    lse = kept[1];
  } else {
    oc = empty({sh.B, sh.H, sh.T, sh.D}, ct);
    lse = empty({sh.B, sh.H, sh.T}, ct);
    NoGradGuard no_grad;
    if (f64) {
      sdpa_forward<double>(sh, qc.data<double>(), kc.data<double>(), vc.data<double>(), oc.data<double>(),
                           lse.data<double>());
    } else {
      sdpa_forward<float>(sh, qc.data<float>(), kc.data<float>(), vc.data<float>(), oc.data<float>(),
                          lse.data<float>());
    }
    if (sac) sac->save("scaled_dot_product_attention", {oc, lse});
  }
  Tensor out = ops::to(oc, q.dtype());
  if (autograd::any_requires_grad({q, k, v})) {
    SavedTensor Q(qc), K(kc), V(vc), O(oc), L(lse);
    autograd::record("ScaledDotProductAttentionBackward", {q, k, v}, {out}, [=](const std::vector<Tensor>& g) {
      profiler::Scope scope("attention_backward");
      Tensor qq = Q.unpack(op), kk = K.unpack(op), vv = V.unpack(op), oo = O.unpack(op), ll = L.unpack(op);
      Tensor dout = ops::contiguous(ops::to(g[0], ct));
      Tensor dq = empty(qq.sizes(), ct), dk = empty(kk.sizes(), ct), dv = empty(vv.sizes(), ct);
      if (f64) {
        sdpa_backward<double>(sh, qq.data<double>(), kk.data<double>(), vv.data<double>(), oo.data<double>(),
                              ll.data<double>(), dout.data<double>(), dq.data<double>(), dk.data<double>(),
                              dv.data<double>());
      } else {
        sdpa_backward<float>(sh, qq.data<float>(), kk.data<float>(), vv.data<float>(), oo.data<float>(),
                             ll.data<float>(), dout.data<float>(), dq.data<float>(), dk.data<float>(),
                             dv.data<float>());
      }
      return std::vector<Tensor>{dq, dk, dv};
    });
  }
  return out;
}

}  // namespace loom
