// CPU matrix products on OpenBLAS: matmul (PyTorch semantics), linear, linear_gelu and gemm_.
// A row-major or column-major (transposed-view) operand goes to cblas_?gemm
// as it lies, with the matching transpose flag; anything else is copied once.
// bf16/f16 run in f32; integer dtypes use a plain loop. CUDA tensors go, after
// the same checks, to the kernel table's bmm / linear (tensor/cuda/matmul.cu; linear_gelu with its GELU epilogue):
// batched and broadcast products as one strided-batched call on 3-D views.
#include <cblas.h>

#include <type_traits>

#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"

namespace loom::ops {
namespace {

/// Per-matrix multiply-adds below which OpenBLAS runs single-threaded anyway;
/// batched products this small are spread over batches with OpenMP instead.
constexpr int64_t kSmallGemm = 64 * 64 * 64;

/// A matrix operand as BLAS sees it: element (i, j) of the logical (rows, cols)
/// matrix is at data[i*ld + j] (trans = false) or data[j*ld + i] (trans = true).
struct MatLayout {
  bool trans = false;
  int64_t ld = 1;
};

/// BLAS layout of a (rows, cols) matrix with element strides (rs, cs), if it has one.
std::optional<MatLayout> blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  const int64_t r1 = std::max<int64_t>(rows, 1), c1 = std::max<int64_t>(cols, 1);
  if ((cols <= 1 || cs == 1) && (rows <= 1 || rs >= c1)) return MatLayout{false, rows <= 1 ? c1 : rs};
  if ((rows <= 1 || rs == 1) && (cols <= 1 || cs >= r1)) return MatLayout{true, cols <= 1 ? r1 : cs};
  return std::nullopt;
}

template <typename T>
void gemm_raw(MatLayout la, MatLayout lb, int64_t M, int64_t N, int64_t K, double alpha, const T* A, const T* B,
              double beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C; BLAS implementations differ on K == 0
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0 ? T(0) : static_cast<T>(beta * C[i * ldc + j]);
    return;
  }
  const auto ta = la.trans ? CblasTrans : CblasNoTrans;
  const auto tb = lb.trans ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, static_cast<float>(alpha), A, la.ld, B, lb.ld, static_cast<float>(beta),
                C, ldc);
  } else if constexpr (std::is_same_v<T, double>) {
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, la.ld, B, lb.ld, beta, C, ldc);
  } else {  // integers: a plain loop, accumulated in i64
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        int64_t acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          const T a = la.trans ? A[k * la.ld + i] : A[i * la.ld + k];
          const T b = lb.trans ? B[j * lb.ld + k] : B[k * lb.ld + j];
          acc += static_cast<int64_t>(a) * static_cast<int64_t>(b);
        }
        const double prev = beta == 0 ? 0.0 : beta * static_cast<double>(C[i * ldc + j]);
        C[i * ldc + j] = static_cast<T>(alpha * static_cast<double>(acc) + prev);
      }
  }
}

void check_matmul_dtype(const char* op, DType dt) {
  LOOM_CHECK(dt != DType::u8, op, ": uint8 operands are not supported; convert to a floating or int dtype first");
}

bool is_half(DType dt) { return dt == DType::f16 || dt == DType::bf16; }

/// Broadcasts two batch shapes; names both full operand shapes on mismatch.
Shape broadcast_batch(const Shape& a, const Shape& b, const Tensor& ta, const Tensor& tb) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t x = i + a.size() >= n ? a[i + a.size() - n] : 1;
    const int64_t y = i + b.size() >= n ? b[i + b.size() - n] : 1;
    LOOM_CHECK(x == y || x == 1 || y == 1, "matmul: batch dimensions do not broadcast: ", shape_str(ta.sizes()), " @ ",
               shape_str(tb.sizes()));
    out[i] = x == 1 ? y : x;
  }
  return out;
}

/// Element strides of t's batch dims (all but the last `mat_dims`) broadcast to `batch`.
Shape batch_strides(const Tensor& t, int64_t mat_dims, const Shape& batch) {
  const int64_t nb = t.dim() - mat_dims;
  Shape st(batch.size(), 0);
  for (int64_t i = 0; i < nb; ++i) {
    const size_t j = batch.size() - nb + i;
    st[j] = t.size(i) == 1 ? 0 : t.stride(i);
  }
  return st;
}

/// True when t's dims [0, last] fold into one dim of stride t.stride(last).
bool folds_into(const Tensor& t, int64_t last) {
  int64_t expect = t.stride(last) * t.size(last);
  for (int64_t d = last - 1; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (t.stride(d) != expect) return false;
    expect *= t.size(d);
  }
  return true;
}

template <typename T>
void matmul_typed(const Tensor& a, const Tensor& b, const Tensor& out, const Shape& batch, int64_t M, int64_t N,
                  int64_t K) {
  const bool a_vec = a.dim() == 1, b_vec = b.dim() == 1;
  // Matrix strides of one batch element: a is (M, K), b is (K, N).
  const int64_t a_rs = a_vec ? K : a.stride(-2), a_cs = a.stride(-1);
  const int64_t b_rs = b.stride(b_vec ? 0 : -2), b_cs = b_vec ? 1 : b.stride(-1);
  auto la = blas_layout(M, K, a_rs, a_cs);
  auto lb = blas_layout(K, N, b_rs, b_cs);
  if (!la || !lb) {  // an operand no BLAS call can read as it lies: copy it once
    matmul_typed<T>(la ? a : contiguous(a), lb ? b : contiguous(b), out, batch, M, N, K);
    return;
  }
  T* C = out.data<T>();
  const int64_t nbatch = shape_numel(batch);
  if (nbatch == 0 || M == 0 || N == 0) return;
  // One big gemm when b is shared and a's batch dims fold into its rows.
  if (nbatch > 1 && b.dim() <= 2 && !a_vec && !la->trans && folds_into(a, a.dim() - 2)) {
    gemm_raw<T>(*la, *lb, nbatch * M, N, K, 1.0, a.data<T>(), b.data<T>(), 0.0, C, N);
    return;
  }
  const Shape sa = batch_strides(a, a_vec ? 1 : 2, batch);
  const Shape sb = batch_strides(b, b_vec ? 1 : 2, batch);
  const T* A = a.data<T>();
  const T* B = b.data<T>();
  auto run = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      int64_t oa = 0, ob = 0, rem = i;
      for (int64_t d = static_cast<int64_t>(batch.size()) - 1; d >= 0; --d) {
        const int64_t idx = rem % batch[d];
        rem /= batch[d];
        oa += idx * sa[d];
        ob += idx * sb[d];
      }
      gemm_raw<T>(*la, *lb, M, N, K, 1.0, A + oa, B + ob, 0.0, C + i * M * N, N);
    }
  };
  if (nbatch > 1 && M * N * K < kSmallGemm) {
    // About 32k multiply-adds per task is enough to pay for a thread.
    parallel_for(0, nbatch, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, M * N * K)), run);
  } else {
    run(0, nbatch);  // OpenBLAS threads each product
  }
}

/// t's trailing (rows, cols) matrices over the broadcast `batch` as a 3-D (nbatch, rows, cols)
/// view for the CUDA bmm: the batch dims folded into one stride (0 when broadcast) when their
/// strides allow, else a contiguous copy of t expanded to the batch. A matrix that is neither
/// row- nor column-major is copied first.
Tensor batch3(const Tensor& t, const Shape& batch, int64_t rows, int64_t cols) {
  Tensor m = blas_layout(rows, cols, t.stride(-2), t.stride(-1)) ? t : contiguous(t);
  const Shape st = batch_strides(m, 2, batch);
  int64_t s = 0, mult = 1;
  bool set = false, linear = true;
  for (int64_t d = static_cast<int64_t>(batch.size()) - 1; d >= 0; --d) {
    if (batch[d] == 1) continue;
    if (!set) {
      s = st[d];
      set = true;
    } else if (st[d] != s * mult) {
      linear = false;
    }
    mult *= batch[d];
  }
  if (!linear) {
    Shape full = batch;
    full.push_back(rows);
    full.push_back(cols);
    m = contiguous(expand(m, full));
    s = rows * cols;
  }
  return Tensor(m.storage(), {shape_numel(batch), rows, cols}, {s, m.stride(-2), m.stride(-1)}, m.storage_offset(),
                m.dtype());
}

/// A contiguous out of nbatch * rows * cols elements as the 3-D (nbatch, rows, cols) view bmm writes.
Tensor out3(const Tensor& out, int64_t nbatch, int64_t rows, int64_t cols) {
  return Tensor(out.storage(), {nbatch, rows, cols}, {rows * cols, cols, 1}, out.storage_offset(), out.dtype());
}

/// matmul on CUDA into the contiguous out: one (nbatch*M, K) @ (K, N) product when b is shared
/// and a's batch dims fold into its rows (as on the cpu), else a strided-batched product.
using BmmFn = decltype(detail::CudaKernels::bmm);
void matmul_cuda(BmmFn bmm, const Tensor& a, const Tensor& b, const Tensor& out, const Shape& batch, int64_t M,
                 int64_t N, int64_t K) {
  const Tensor a2 = a.dim() == 1 ? unsqueeze(a, 0) : a;  // (..., M, K)
  const Tensor b2 = b.dim() == 1 ? unsqueeze(b, 1) : b;  // (..., K, N)
  const int64_t nbatch = shape_numel(batch);
  if (nbatch > 1 && b2.dim() == 2 && folds_into(a2, a2.dim() - 2)) {
    auto la = blas_layout(nbatch * M, K, a2.stride(-2), a2.stride(-1));
    if (la && !la->trans) {
      const Tensor af(a2.storage(), {1, nbatch * M, K}, {0, a2.stride(-2), a2.stride(-1)}, a2.storage_offset(),
                      a2.dtype());
      bmm(out3(out, 1, nbatch * M, N), af, batch3(b2, {}, K, N), 1.0, 0.0);
      return;
    }
  }
  bmm(out3(out, nbatch, M, N), batch3(a2, batch, M, K), batch3(b2, batch, K, N), 1.0, 0.0);
}

/// linear on CUDA: x as a contiguous (rows, in) matrix, the bias (and, when `gelu_pre` is
/// given, the tanh GELU whose pre-activation it receives) in the cuBLASLt epilogue.
Tensor linear_cuda(const Tensor& x, const Tensor& w, const Tensor& b, const char* op, Tensor* gelu_pre = nullptr) {
  const auto lin = detail::need(detail::cuda_kernels(op, x).linear, op, x);
  const int64_t in = x.size(-1), out_f = w.size(0);
  Shape out_sizes(x.sizes().begin(), x.sizes().end() - 1);
  out_sizes.push_back(out_f);
  Tensor out = empty(out_sizes, x.dtype(), x.device());
  if (gelu_pre) *gelu_pre = empty(out_sizes, x.dtype(), x.device());
  if (out.numel() == 0) return out;
  const int64_t rows = out.numel() / out_f;
  lin(reshape(out, {rows, out_f}), reshape(contiguous(x), {rows, in}), contiguous(w),
      b.defined() ? contiguous(b) : Tensor(), gelu_pre ? reshape(*gelu_pre, {rows, out_f}) : Tensor());
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  profiler::Scope scope("matmul");
  const char* op = "matmul";
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
  check_matmul_dtype(op, a.dtype());
  LOOM_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both operands need at least 1 dim, got ", shape_str(a.sizes()),
             " @ ", shape_str(b.sizes()));
  const bool cuda = a.device().is_cuda();
  // The table first: a CUDA tensor where there is no backend throws before anything is allocated.
  const BmmFn bmm = cuda ? detail::need(detail::cuda_kernels(op, a).bmm, op, a) : nullptr;
  if (!cuda && is_half(a.dtype())) {
    {
      Tensor out = to(matmul(to(a, DType::f32), to(b, DType::f32)), a.dtype());
      if (optrace::active()) [[unlikely]]
        optrace::record("matmul", {a, b}, {out});
      return out;
    }
  }
  const bool a_vec = a.dim() == 1, b_vec = b.dim() == 1;
  const int64_t M = a_vec ? 1 : a.size(-2);
  const int64_t K = a.size(-1);
  const int64_t Kb = b_vec ? b.size(0) : b.size(-2);
  const int64_t N = b_vec ? 1 : b.size(-1);
  LOOM_CHECK(K == Kb, "matmul: inner dimensions differ: ", shape_str(a.sizes()), " @ ", shape_str(b.sizes()), " (", K,
             " vs ", Kb, ")");
  const Shape ba(a.sizes().begin(), a.sizes().end() - (a_vec ? 1 : 2));
  const Shape bb(b.sizes().begin(), b.sizes().end() - (b_vec ? 1 : 2));
  const Shape batch = broadcast_batch(ba, bb, a, b);
  Shape out_sizes = batch;
  if (!a_vec) out_sizes.push_back(M);
  if (!b_vec) out_sizes.push_back(N);
  Tensor out = empty(out_sizes, a.dtype(), a.device());
  if (cuda) {
    if (out.numel() > 0) matmul_cuda(bmm, a, b, out, batch, M, N, K);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("matmul", {a, b}, {out});
      return out;
    }
  }
  LOOM_DISPATCH_ALL(a.dtype(), op, [&] {
    if constexpr (!std::is_same_v<scalar_t, Half> && !std::is_same_v<scalar_t, BFloat16> &&
                  !std::is_same_v<scalar_t, uint8_t>) {
      matmul_typed<scalar_t>(a, b, out, batch, M, N, K);
    }
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("matmul", {a, b}, {out});
    return out;
  }
}

void gemm_(const Tensor& out, const Tensor& a, const Tensor& b, double alpha, double beta) {
  profiler::Scope scope("gemm_");
  const char* op = "gemm_";
  check_same_device(op, a, b);
  check_same_device(op, out, a);
  check_same_dtype(op, a, b);
  check_same_dtype(op, out, a);
  check_matmul_dtype(op, a.dtype());
  LOOM_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "gemm_: expected 2-D operands, got out ",
             shape_str(out.sizes()), " = ", shape_str(a.sizes()), " @ ", shape_str(b.sizes()));
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  LOOM_CHECK(b.size(0) == K, "gemm_: inner dimensions differ: ", shape_str(a.sizes()), " @ ", shape_str(b.sizes()));
  LOOM_CHECK(out.size(0) == M && out.size(1) == N, "gemm_: out has shape ", shape_str(out.sizes()), " but ",
             shape_str(a.sizes()), " @ ", shape_str(b.sizes()), " is ", shape_str({M, N}));
  const bool cuda = a.device().is_cuda();
  if (!cuda && is_half(a.dtype())) {
    Tensor o32 = beta == 0 ? empty({M, N}, DType::f32) : to(contiguous(out), DType::f32);
    gemm_(o32, to(a, DType::f32), to(b, DType::f32), alpha, beta);
    copy_(out, o32);
    return;
  }
  const bool out_ok = (N <= 1 || out.stride(1) == 1) && (M <= 1 || out.stride(0) >= std::max<int64_t>(N, 1));
  LOOM_CHECK(out_ok, "gemm_: out of shape ", shape_str(out.sizes()), " must be row-major (strides ",
             shape_str(out.strides()), "); pass a contiguous tensor");
  if (cuda) {
    const auto bmm = detail::need(detail::cuda_kernels(op, a).bmm, op, a);
    // bmm writes a contiguous out; a row-major out with padded rows goes through a copy.
    Tensor o = out.is_contiguous() ? out : (beta == 0 ? empty({M, N}, out.dtype(), out.device()) : contiguous(out));
    bmm(out3(o, 1, M, N), batch3(a, {}, M, K), batch3(b, {}, K, N), alpha, beta);
    if (!o.is_same(out)) copy_(out, o);
    out.bump_version();
    return;
  }
  const int64_t ldc = M <= 1 ? std::max<int64_t>(N, 1) : out.stride(0);
  auto la = blas_layout(M, K, a.stride(0), a.stride(1));
  auto lb = blas_layout(K, N, b.stride(0), b.stride(1));
  Tensor ac = la ? a : contiguous(a);
  Tensor bc = lb ? b : contiguous(b);
  if (!la) la = blas_layout(M, K, ac.stride(0), ac.stride(1));
  if (!lb) lb = blas_layout(K, N, bc.stride(0), bc.stride(1));
  LOOM_DISPATCH_ALL(a.dtype(), op, [&] {
    if constexpr (!std::is_same_v<scalar_t, Half> && !std::is_same_v<scalar_t, BFloat16> &&
                  !std::is_same_v<scalar_t, uint8_t>) {
      gemm_raw<scalar_t>(*la, *lb, M, N, K, alpha, ac.data<scalar_t>(), bc.data<scalar_t>(), beta, out.data<scalar_t>(),
                         ldc);
    }
  });
  out.bump_version();
}

namespace {

void check_linear_args(const char* op, const Tensor& x, const Tensor& w, const Tensor& b) {
  check_same_device(op, x, w);
  check_same_dtype(op, x, w);
  check_matmul_dtype(op, x.dtype());
  LOOM_CHECK(x.dim() >= 1 && w.dim() == 2, op, ": expected x (..., in) and weight (out, in), got x ",
             shape_str(x.sizes()), " and weight ", shape_str(w.sizes()));
  const int64_t in = x.size(-1), out_f = w.size(0);
  LOOM_CHECK(w.size(1) == in, op, ": x ", shape_str(x.sizes()), " has ", in, " features but weight ",
             shape_str(w.sizes()), " expects ", w.size(1));
  if (b.defined()) {
    check_same_device(op, x, b);
    check_same_dtype(op, x, b);
    LOOM_CHECK(b.dim() == 1 && b.size(0) == out_f, op, ": bias ", shape_str(b.sizes()), " does not match weight ",
               shape_str(w.sizes()), " (expected [", out_f, "])");
  }
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  profiler::Scope scope("linear");
  const char* op = "linear";
  check_linear_args(op, x, w, b);
  const int64_t in = x.size(-1), out_f = w.size(0);
  if (x.device().is_cuda()) {
    {
      Tensor out = linear_cuda(x, w, b, op);
      if (optrace::active()) [[unlikely]]
        optrace::record("linear", {x, w, b}, {out});
      return out;
    }
  }
  if (is_half(x.dtype())) {
    {
      Tensor out =
          to(linear(to(x, DType::f32), to(w, DType::f32), b.defined() ? to(b, DType::f32) : Tensor()), x.dtype());
      if (optrace::active()) [[unlikely]]
        optrace::record("linear", {x, w, b}, {out});
      return out;
    }
  }
  Shape out_sizes(x.sizes().begin(), x.sizes().end() - 1);
  out_sizes.push_back(out_f);
  Tensor out = empty(out_sizes, x.dtype());
  if (out.numel() == 0) {
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("linear", {x, w, b}, {out});
      return out;
    }
  }
  const int64_t rows = out.numel() / out_f;  // from the output: with in == 0, x has no elements to count rows by
  // x as a (rows, in) matrix: fold the batch dims when the strides allow.
  Tensor xm = x;
  if (x.dim() > 1 && !folds_into(x, x.dim() - 2)) xm = contiguous(x);
  const int64_t x_rs = xm.dim() == 1 ? in : xm.stride(-2);
  auto lx = blas_layout(rows, in, x_rs, xm.stride(-1));
  if (!lx) {
    xm = contiguous(x);
    lx = blas_layout(rows, in, in, 1);
  }
  // w^T is an (in, out) matrix with strides (w.stride(1), w.stride(0)).
  Tensor wm = w;
  auto lw = blas_layout(in, out_f, w.stride(1), w.stride(0));
  if (!lw) {
    wm = contiguous(w);
    lw = blas_layout(in, out_f, 1, in);
  }
  double beta = 0.0;
  LOOM_DISPATCH_ALL(x.dtype(), op, [&] {
    if constexpr (!std::is_same_v<scalar_t, Half> && !std::is_same_v<scalar_t, BFloat16> &&
                  !std::is_same_v<scalar_t, uint8_t>) {
      scalar_t* o = out.data<scalar_t>();
      if (b.defined()) {
        // Bias preloaded into the output, gemm adds onto it (beta = 1 costs OpenBLAS
        // nothing, while beta = 0 zeroes C in a pass of its own). The fill stays on
        // this thread: an OpenMP region here leaves workers spinning on the cores
        // OpenBLAS's threads are about to need (measured ~30% slower).
        Tensor bc = contiguous(b);
        const scalar_t* bp = bc.data<scalar_t>();
        for (int64_t r = 0; r < rows; ++r) std::copy(bp, bp + out_f, o + r * out_f);
        beta = 1.0;
      }
      gemm_raw<scalar_t>(*lx, *lw, rows, out_f, in, 1.0, xm.data<scalar_t>(), wm.data<scalar_t>(), beta, o, out_f);
    }
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("linear", {x, w, b}, {out});
    return out;
  }
}

LinearGeluResult linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b) {
  profiler::Scope scope("linear_gelu");
  check_linear_args("linear_gelu", x, w, b);
  LinearGeluResult res;
  if (x.device().is_cuda()) {
    res.out = linear_cuda(x, w, b, "linear_gelu", &res.pre);
    return res;
  }
  res.pre = linear(x, w, b);
  res.out = gelu(res.pre, GeluApprox::kTanh);
  return res;
}

}  // namespace loom::ops
