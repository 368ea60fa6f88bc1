// CPU neural-network kernels: softmax / log_softmax and their backward, layer
// and RMS norm, embedding, fused cross-entropy, dropout and rotary embedding.
// Each is a row-wise loop parallel over rows; rows of 16-bit floats are
// widened to f32 in a per-thread buffer, f64 rows are computed in f64. CUDA
// tensors go, after the same checks, to the kernel table's entries
// (tensor/cuda/{softmax,norm,embedding,cross_entropy,dropout_rope}.cu).
// FP comparisons may then be if-converted into selects, which lets the loops
// around fast_expf vectorise; loom never reads floating-point exception flags.
#pragma GCC optimize("no-trapping-math")

#include <array>
#include <cstring>
#include <type_traits>

#include "tensor/cpu/vec_math.h"
#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"

namespace loom::ops {
namespace {

using detail::exp_acc;

/// The CUDA kernel table for op on t (throws Unsupported where there is none).
const detail::CudaKernels& cuda(const char* op, const Tensor& t) { return detail::cuda_kernels(op, t); }

/// Rows per task so that a task touches about kElementwiseGrain elements.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(cols, 1)); }

/// Dtype in which statistics (mean, rstd, lse) are saved: f64 for f64 inputs, else f32.
DType stat_dtype(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

template <typename A, typename T>
inline void widen(const T* src, A* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<A>(static_cast<acc_t<T>>(src[i]));
}
template <typename T, typename A>
inline void narrow_to(const A* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(static_cast<acc_t<T>>(src[i]));
}

/// Calls f(row, in_rows, out_row, D) for every row of NIN contiguous (rows, D) inputs
/// and one contiguous (rows, D) output, all of type T, with rows given as
/// pointers of acc_t<T> (converted through a per-thread buffer for 16-bit floats).
template <typename T, size_t NIN, typename F>
void rowwise(std::array<const T*, NIN> in, T* out, int64_t rows, int64_t D, F&& f) {
  using A = acc_t<T>;
  parallel_for(0, rows, row_grain(D), [&](int64_t b, int64_t e) {
    std::vector<A> buf;
    if constexpr (!std::is_same_v<T, A>) buf.resize((NIN + 1) * static_cast<size_t>(D));
    for (int64_t r = b; r < e; ++r) {
      std::array<const A*, NIN> ip;
      A* op;
      if constexpr (std::is_same_v<T, A>) {
        for (size_t k = 0; k < NIN; ++k) ip[k] = in[k] + r * D;
        op = out + r * D;
      } else {
        for (size_t k = 0; k < NIN; ++k) {
          widen(in[k] + r * D, buf.data() + k * D, D);
          ip[k] = buf.data() + k * D;
        }
        op = buf.data() + NIN * D;
      }
      f(r, ip, op, D);
      if constexpr (!std::is_same_v<T, A>) narrow_to(op, out + r * D, D);
    }
  });
}

template <typename A>
inline A row_max(const A* x, int64_t n) {
  A m[8];
  for (int k = 0; k < 8; ++k) m[k] = -std::numeric_limits<A>::infinity();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
  for (; i < n; ++i) m[0] = x[i] > m[0] ? x[i] : m[0];
  A r = m[0];
  for (int k = 1; k < 8; ++k) r = m[k] > r ? m[k] : r;
  return r;
}

template <typename A>
inline A row_sum(const A* x, int64_t n) {
  A s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[i + k];
  for (; i < n; ++i) s[0] += x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

template <typename A>
inline A row_dot(const A* x, const A* y, int64_t n) {
  A s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[i + k] * y[i + k];
  for (; i < n; ++i) s[0] += x[i] * y[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/// sum_i exp(x[i] - m), in blocks so the exp loop vectorises.
template <typename A>
inline A row_sum_exp(const A* x, A m, int64_t n) {
  constexpr int64_t kBlk = 256;
  A tmp[kBlk];
  A s = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kBlk) {
    const int64_t len = std::min(kBlk, n - i0);
    for (int64_t i = 0; i < len; ++i) tmp[i] = exp_acc(x[i0 + i] - m);
    s += row_sum(tmp, len);
  }
  return s;
}

/// A view of t with dim moved to the end (or, inverse, the last dim moved to dim).
Tensor move_dim(const Tensor& t, int64_t dim, bool to_last) {
  std::vector<int64_t> perm;
  const int64_t nd = t.dim();
  if (to_last) {
    for (int64_t d = 0; d < nd; ++d)
      if (d != dim) perm.push_back(d);
    perm.push_back(dim);
  } else {
    for (int64_t d = 0; d < nd - 1; ++d) {
      if (d == dim) perm.push_back(nd - 1);
      perm.push_back(d);
    }
    if (dim == nd - 1) perm.push_back(nd - 1);
  }
  Shape sz, st;
  for (int64_t p : perm) {
    sz.push_back(t.size(p));
    st.push_back(t.stride(p));
  }
  return Tensor(t.storage(), sz, st, t.storage_offset(), t.dtype());
}

enum class SoftmaxKind { kSoftmax, kLogSoftmax };

template <typename A>
void softmax_row(const A* x, A* y, int64_t D, SoftmaxKind kind) {
  const A m = row_max(x, D);
  if (kind == SoftmaxKind::kSoftmax) {
    for (int64_t i = 0; i < D; ++i) y[i] = exp_acc(x[i] - m);
    const A inv = A(1) / row_sum(y, D);
    for (int64_t i = 0; i < D; ++i) y[i] *= inv;
  } else {
    const A shift = m + std::log(row_sum_exp(x, m, D));
    for (int64_t i = 0; i < D; ++i) y[i] = x[i] - shift;
  }
}

Tensor softmax_impl(const Tensor& t, int64_t dim, SoftmaxKind kind, const char* op) {
  LOOM_CHECK(is_floating(t.dtype()), op, ": input of shape ", shape_str(t.sizes()), " has dtype ",
             dtype_name(t.dtype()), "; expected a floating dtype");
  const int64_t nd = t.dim();
  dim = wrap_dim(dim, nd, op);
  if (nd > 0 && dim != nd - 1) {
    Tensor y = softmax_impl(contiguous(move_dim(t, dim, true)), -1, kind, op);
    return contiguous(move_dim(y, dim, false));
  }
  if (t.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, t).softmax, op, t);
    Tensor y = empty(t.sizes(), t.dtype(), t.device());
    kernel(y, contiguous(t), kind == SoftmaxKind::kLogSoftmax);
    return y;
  }
  Tensor x = contiguous(t);
  Tensor y = empty(t.sizes(), t.dtype());
  const int64_t D = nd == 0 ? 1 : t.size(-1);
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  LOOM_DISPATCH_FLOATING(t.dtype(), op, [&] {
    rowwise<scalar_t, 1>({x.data<scalar_t>()}, y.data<scalar_t>(), rows, D,
                         [&](int64_t, auto in, auto* out, int64_t n) { softmax_row(in[0], out, n, kind); });
  });
  return y;
}

Tensor softmax_backward_impl(const Tensor& grad, const Tensor& y, int64_t dim, SoftmaxKind kind, const char* op) {
  check_same_device(op, grad, y);
  check_same_dtype(op, grad, y);
  LOOM_CHECK(grad.sizes() == y.sizes(), op, ": grad ", shape_str(grad.sizes()), " and output ", shape_str(y.sizes()),
             " shapes differ");
  LOOM_CHECK(is_floating(y.dtype()), op, ": expected a floating dtype, got ", dtype_name(y.dtype()));
  const int64_t nd = y.dim();
  dim = wrap_dim(dim, nd, op);
  if (nd > 0 && dim != nd - 1) {
    Tensor dx =
        softmax_backward_impl(contiguous(move_dim(grad, dim, true)), contiguous(move_dim(y, dim, true)), -1, kind, op);
    return contiguous(move_dim(dx, dim, false));
  }
  if (y.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, y).softmax_backward, op, y);
    Tensor dx = empty(y.sizes(), y.dtype(), y.device());
    kernel(dx, contiguous(grad), contiguous(y), kind == SoftmaxKind::kLogSoftmax);
    return dx;
  }
  Tensor g = contiguous(grad), yc = contiguous(y);
  Tensor dx = empty(y.sizes(), y.dtype());
  const int64_t D = nd == 0 ? 1 : y.size(-1);
  const int64_t rows = D == 0 ? 0 : y.numel() / D;
  LOOM_DISPATCH_FLOATING(y.dtype(), op, [&] {
    rowwise<scalar_t, 2>({g.data<scalar_t>(), yc.data<scalar_t>()}, dx.data<scalar_t>(), rows, D,
                         [&](int64_t, auto in, auto* out, int64_t n) {
                           const auto* gr = in[0];
                           const auto* yr = in[1];
                           if (kind == SoftmaxKind::kSoftmax) {  // y * (g - <g, y>)
                             const auto dot = row_dot(gr, yr, n);
                             for (int64_t i = 0; i < n; ++i) out[i] = yr[i] * (gr[i] - dot);
                           } else {  // g - exp(y) * sum(g)
                             const auto s = row_sum(gr, n);
                             for (int64_t i = 0; i < n; ++i) out[i] = gr[i] - exp_acc(yr[i]) * s;
                           }
                         });
  });
  return dx;
}

/// Checks a (C) parameter (weight or bias, may be undefined) against the input x.
void check_param(const Tensor& p, int64_t C, const char* op, const char* what, const Tensor& x) {
  if (!p.defined()) return;
  check_same_device(op, x, p);
  LOOM_CHECK(p.dim() == 1 && p.size(0) == C, op, ": ", what, " has shape ", shape_str(p.sizes()), " but the input ",
             shape_str(x.sizes()), " needs [", C, "]");
}

/// (C) parameter as a contiguous vector in the accumulation type A (empty when undefined).
template <typename A>
std::vector<A> param_vector(const Tensor& p, int64_t C, const char* op, const char* what, const Tensor& x) {
  if (!p.defined()) return {};
  check_param(p, C, op, what, x);
  Tensor c = contiguous(to(p, DTypeOf<A>::value));
  const A* d = c.data<A>();
  return std::vector<A>(d, d + C);
}

/// Weight and bias for the CUDA norm kernels: contiguous, both of x's dtype when they have it,
/// else both converted to the statistics dtype (the CPU loops compute with them in that dtype).
std::pair<Tensor, Tensor> cuda_params(const Tensor& w, const Tensor& b, const Tensor& x) {
  const bool same = (!w.defined() || w.dtype() == x.dtype()) && (!b.defined() || b.dtype() == x.dtype());
  const DType dt = same ? x.dtype() : stat_dtype(x.dtype());
  auto prep = [&](const Tensor& p) { return p.defined() ? contiguous(to(p, dt)) : Tensor(); };
  return {prep(w), prep(b)};
}

/// Number of row chunks (at most one per thread) for a per-chunk-partials loop.
int64_t row_chunks(int64_t rows, int64_t cols) {
  return std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows / row_grain(cols)));
}

/// Calls f(chunk, lo, hi) for `chunks` consecutive row ranges covering [0, rows), in parallel.
template <typename F>
void for_row_chunks(int64_t rows, int64_t chunks, F&& f) {
  const int64_t len = (rows + chunks - 1) / chunks;
  parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) f(c, std::min(rows, c * len), std::min(rows, (c + 1) * len));
  });
}

/// Sums per-chunk (chunks, C) partials into a (C) tensor of dtype dt.
template <typename A>
Tensor reduce_partials(const std::vector<A>& part, int64_t chunks, int64_t C, DType dt) {
  std::vector<A> total(static_cast<size_t>(C), A(0));
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < C; ++j) total[j] += part[c * C + j];
  return to(from_vector(total, {C}), dt);
}

void check_norm_input(const char* op, const Tensor& x) {
  LOOM_CHECK(x.dim() >= 1 && is_floating(x.dtype()), op, ": expected a floating input with at least 1 dim, got ",
             dtype_name(x.dtype()), " ", shape_str(x.sizes()));
}

/// Multi-dimensional position of flat element `flat` in a tensor of `sizes`, as "[i, j]".
std::string index_position(int64_t flat, const Shape& sizes) {
  Shape pos(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    pos[d] = sizes[d] == 0 ? 0 : flat % sizes[d];
    flat = sizes[d] == 0 ? 0 : flat / sizes[d];
  }
  return shape_str(pos);
}

void check_index_dtype(const Tensor& indices, const char* op) {
  LOOM_CHECK(indices.dtype() == DType::i64 || indices.dtype() == DType::i32, op, ": indices of shape ",
             shape_str(indices.sizes()), " have dtype ", dtype_name(indices.dtype()), "; expected int64 or int32");
}

[[noreturn]] void throw_bad_index(const char* op, int64_t value, int64_t flat, const Tensor& indices, int64_t V) {
  LOOM_THROW(InvalidArgument, op, ": index ", value, " at position ", index_position(flat, indices.sizes()),
             " of indices ", shape_str(indices.sizes()), " is out of range for a table of ", V,
             " rows (expected 0 <= index < ", V, ")");
}

/// Reads indices (i64 or i32) as i64 and checks each is in [0, V).
std::vector<int64_t> checked_indices(const Tensor& indices, int64_t V, const char* op) {
  check_index_dtype(indices, op);
  std::vector<int64_t> idx = indices.to_vector<int64_t>();
  for (size_t i = 0; i < idx.size(); ++i)
    if (idx[i] < 0 || idx[i] >= V) throw_bad_index(op, idx[i], static_cast<int64_t>(i), indices, V);
  return idx;
}

/// Element `flat` of a contiguous index tensor on any device, read on the host (an error path).
int64_t index_at(const Tensor& idx, int64_t flat) {
  return narrow(reshape(idx, {-1}), 0, flat, 1).to_vector<int64_t>()[0];
}

/// CUDA: the indices contiguous on the device, checked to lie in [0, V) by the kernel table's
/// index_check (one host sync), with the CPU's error naming the first index outside.
Tensor cuda_checked_indices(const Tensor& indices, int64_t V, const char* op) {
  check_index_dtype(indices, op);
  const auto check = detail::need(cuda(op, indices).index_check, op, indices);
  Tensor idx = contiguous(indices);
  // With V = 0 every index is out of range; else skip = 0 lies inside [0, V), so none is exempt.
  const int64_t bad = V == 0 ? (idx.numel() > 0 ? 0 : -1) : check(idx, V, 0);
  if (bad >= 0) throw_bad_index(op, index_at(idx, bad), bad, indices, V);
  return idx;
}

}  // namespace

Tensor softmax(const Tensor& t, int64_t dim) {
  profiler::Scope scope("softmax");
  {
    Tensor out = softmax_impl(t, dim, SoftmaxKind::kSoftmax, "softmax");
    if (optrace::active()) [[unlikely]]
      optrace::record("softmax", {t}, {out}, {{"dim", dim}});
    return out;
  }
}
Tensor log_softmax(const Tensor& t, int64_t dim) {
  profiler::Scope scope("log_softmax");
  {
    Tensor out = softmax_impl(t, dim, SoftmaxKind::kLogSoftmax, "log_softmax");
    if (optrace::active()) [[unlikely]]
      optrace::record("log_softmax", {t}, {out}, {{"dim", dim}});
    return out;
  }
}
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim) {
  profiler::Scope scope("softmax_backward");
  return softmax_backward_impl(grad, y, dim, SoftmaxKind::kSoftmax, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim) {
  profiler::Scope scope("log_softmax_backward");
  return softmax_backward_impl(grad, y, dim, SoftmaxKind::kLogSoftmax, "log_softmax_backward");
}

// ---------------------------------------------------------------- layer norm / rms norm

namespace {

/// Shared forward of layer_norm (rms = false) and rms_norm (rms = true).
NormResult norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, bool rms, const char* op) {
  check_norm_input(op, x);
  const int64_t C = x.size(-1);
  const int64_t rows = C == 0 ? 0 : x.numel() / C;
  if (x.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, x).norm_forward, op, x);
    check_param(w, C, op, "weight", x);
    check_param(b, C, op, "bias", x);
    const auto [wc, bc] = cuda_params(w, b, x);
    NormResult res;
    res.y = empty(x.sizes(), x.dtype(), x.device());
    if (!rms) res.mean = empty({rows}, stat_dtype(x.dtype()), x.device());
    res.rstd = empty({rows}, stat_dtype(x.dtype()), x.device());
    kernel(res.y, res.mean, res.rstd, contiguous(x), wc, bc, eps, rms, Tensor(), Tensor());
    return res;
  }
  Tensor xc = contiguous(x);
  NormResult res;
  res.y = empty(x.sizes(), x.dtype());
  if (!rms) res.mean = empty({rows}, stat_dtype(x.dtype()));
  res.rstd = empty({rows}, stat_dtype(x.dtype()));
  LOOM_DISPATCH_FLOATING(x.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const std::vector<A> wv = param_vector<A>(w, C, op, "weight", x);
    const std::vector<A> bv = param_vector<A>(b, C, op, "bias", x);
    A* mean_out = rms ? nullptr : res.mean.data<A>();
    A* rstd_out = res.rstd.data<A>();
    rowwise<scalar_t, 1>(
        {xc.data<scalar_t>()}, res.y.data<scalar_t>(), rows, C, [&](int64_t row, auto in, A* y, int64_t n) {
          const A* xr = in[0];
          const A mu = rms ? A(0) : row_sum(xr, n) / static_cast<A>(n);
          A v[8] = {};
          int64_t i = 0;
          for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; ++k) v[k] += (xr[i + k] - mu) * (xr[i + k] - mu);
          for (; i < n; ++i) v[0] += (xr[i] - mu) * (xr[i] - mu);
          const A ms = (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) / static_cast<A>(n);
          const A rs = A(1) / std::sqrt(ms + static_cast<A>(eps));
          if (!wv.empty()) {
            for (int64_t j = 0; j < n; ++j) y[j] = (xr[j] - mu) * rs * wv[j];
          } else {
            for (int64_t j = 0; j < n; ++j) y[j] = (xr[j] - mu) * rs;
          }
          if (!bv.empty())
            for (int64_t j = 0; j < n; ++j) y[j] += bv[j];
          if (mean_out) mean_out[row] = mu;
          rstd_out[row] = rs;
        });
  });
  return res;
}

/// Shared backward of layer_norm (mean defined) and rms_norm (mean undefined).
NormGrads norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                        bool has_bias, const char* op) {
  check_norm_input(op, x);
  check_same_device(op, dy, x);
  check_same_dtype(op, dy, x);
  LOOM_CHECK(dy.sizes() == x.sizes(), op, ": grad ", shape_str(dy.sizes()), " and input ", shape_str(x.sizes()),
             " shapes differ");
  const int64_t C = x.size(-1);
  const int64_t rows = C == 0 ? 0 : x.numel() / C;
  const DType sd = stat_dtype(x.dtype());
  LOOM_CHECK(rstd.defined() && rstd.numel() == rows && (!mean.defined() || mean.numel() == rows), op,
             ": saved statistics do not match the input ", shape_str(x.sizes()), " (expected ", rows, " rows)");
  Tensor xc = contiguous(x), dyc = contiguous(dy);
  Tensor rs_t = contiguous(to(rstd, sd));
  Tensor mu_t = mean.defined() ? contiguous(to(mean, sd)) : Tensor();
  if (x.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, x).norm_backward, op, x);
    check_param(w, C, op, "weight", x);
    const Tensor wc = cuda_params(w, Tensor(), x).first;
    NormGrads g;
    g.dx = empty(x.sizes(), x.dtype(), x.device());
    Tensor dw = w.defined() ? empty({C}, sd, x.device()) : Tensor();
    Tensor db = has_bias ? empty({C}, sd, x.device()) : Tensor();
    kernel(g.dx, dw, db, dyc, xc, wc, mu_t, rs_t, /*rms=*/!mean.defined());
    const DType pd = w.defined() ? w.dtype() : x.dtype();
    if (dw.defined()) g.dw = to(dw, pd);
    if (db.defined()) g.db = to(db, pd);
    return g;
  }
  NormGrads g;
  g.dx = empty(x.sizes(), x.dtype());
  const bool want_dw = w.defined();
  const int64_t chunks = row_chunks(rows, C);
  LOOM_DISPATCH_FLOATING(x.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const std::vector<A> wv = param_vector<A>(w, C, op, "weight", x);
    const A* rsp = rs_t.data<A>();
    const A* mup = mu_t.defined() ? mu_t.data<A>() : nullptr;
    std::vector<A> dw_part(want_dw ? static_cast<size_t>(chunks * C) : 0, A(0));
    std::vector<A> db_part(has_bias ? static_cast<size_t>(chunks * C) : 0, A(0));
    const scalar_t* xp = xc.data<scalar_t>();
    const scalar_t* dyp = dyc.data<scalar_t>();
    scalar_t* dxp = g.dx.data<scalar_t>();
    for_row_chunks(rows, chunks, [&](int64_t c, int64_t lo, int64_t hi) {
      std::vector<A> buf(4 * static_cast<size_t>(C));
      A* xh = buf.data();  // normalised x
      A* wdy = xh + C;     // w * dy
      A* dxb = wdy + C;    // dx in A (16-bit types)
      A* dyb = dxb + C;    // dy in A (16-bit types)
      A* dw = want_dw ? dw_part.data() + c * C : nullptr;
      A* db = has_bias ? db_part.data() + c * C : nullptr;
      for (int64_t r = lo; r < hi; ++r) {
        const scalar_t* xr = xp + r * C;
        const A* dyr;
        if constexpr (std::is_same_v<scalar_t, A>) {
          dyr = reinterpret_cast<const A*>(dyp + r * C);
        } else {
          widen(dyp + r * C, dyb, C);
          dyr = dyb;
        }
        const A mu = mup ? mup[r] : A(0);
        const A rs = rsp[r];
        for (int64_t j = 0; j < C; ++j) xh[j] = (static_cast<A>(static_cast<acc_t<scalar_t>>(xr[j])) - mu) * rs;
        if (want_dw) {
          for (int64_t j = 0; j < C; ++j) wdy[j] = wv[j] * dyr[j];
          for (int64_t j = 0; j < C; ++j) dw[j] += dyr[j] * xh[j];
        } else {
          for (int64_t j = 0; j < C; ++j) wdy[j] = dyr[j];
        }
        if (has_bias)
          for (int64_t j = 0; j < C; ++j) db[j] += dyr[j];
        const A mean_wdy = mup ? row_sum(wdy, C) / static_cast<A>(C) : A(0);
        const A mean_wdy_xh = row_dot(wdy, xh, C) / static_cast<A>(C);
        A* dxr;
        if constexpr (std::is_same_v<scalar_t, A>) {
          dxr = reinterpret_cast<A*>(dxp + r * C);
        } else {
          dxr = dxb;
        }
        for (int64_t j = 0; j < C; ++j) dxr[j] = rs * (wdy[j] - mean_wdy - xh[j] * mean_wdy_xh);
        if constexpr (!std::is_same_v<scalar_t, A>) narrow_to(dxr, dxp + r * C, C);
      }
    });
    const DType pd = w.defined() ? w.dtype() : x.dtype();
    if (want_dw) g.dw = reduce_partials(dw_part, chunks, C, pd);
    if (has_bias) g.db = reduce_partials(db_part, chunks, C, pd);
  });
  return g;
}

/// Shared forward of add_layer_norm and add_rms_norm. On CPU (and on CUDA when the
/// operands' shapes or dtypes differ) it is add() then norm_forward(), so the bits are
/// those of the unfused ops; on CUDA the kernel table's norm_forward with a residual.
AddNormResult add_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b, double eps,
                               bool rms, const char* op) {
  LOOM_CHECK(x.defined() && residual.defined(), op, ": x and residual must be defined");
  check_same_device(op, x, residual);
  AddNormResult res;
  // The kernel adds operands of one dtype: under autocast a bf16 branch output joins an
  // f32 residual stream, so the narrower one is widened first (exactly, as add() would).
  const DType dt = promote_types(x.dtype(), residual.dtype());
  if (x.device().is_cuda() && residual.sizes() == x.sizes() && (x.dtype() == dt || residual.dtype() == dt)) {
    const Tensor xw = to(x, dt), rw = to(residual, dt);
    check_norm_input(op, xw);
    const auto kernel = detail::need(cuda(op, xw).norm_forward, op, xw);
    const int64_t C = xw.size(-1);
    const int64_t rows = C == 0 ? 0 : xw.numel() / C;
    check_param(w, C, op, "weight", xw);
    check_param(b, C, op, "bias", xw);
    const auto [wc, bc] = cuda_params(w, b, xw);
    res.sum = empty(xw.sizes(), xw.dtype(), xw.device());
    res.y = empty(xw.sizes(), xw.dtype(), xw.device());
    if (!rms) res.mean = empty({rows}, stat_dtype(xw.dtype()), xw.device());
    res.rstd = empty({rows}, stat_dtype(xw.dtype()), xw.device());
    if (xw.numel() > 0) {
      kernel(res.y, res.mean, res.rstd, contiguous(xw), wc, bc, eps, rms, contiguous(rw), res.sum);
    }
    return res;
  }
  res.sum = add(x, residual);
  NormResult n = norm_forward(res.sum, w, b, eps, rms, op);
  res.y = n.y;
  res.mean = n.mean;
  res.rstd = n.rstd;
  return res;
}

}  // namespace

AddNormResult add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b, double eps) {
  profiler::Scope scope("add_layer_norm");
  AddNormResult res = add_norm_forward(x, residual, w, b, eps, /*rms=*/false, "add_layer_norm");
  if (optrace::active()) [[unlikely]]
    optrace::record("add_layer_norm", {x, residual, w, b}, {res.sum, res.y}, {{"eps", eps}});
  return res;
}

AddNormResult add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& w, double eps) {
  profiler::Scope scope("add_rms_norm");
  AddNormResult res = add_norm_forward(x, residual, w, Tensor(), eps, /*rms=*/true, "add_rms_norm");
  if (optrace::active()) [[unlikely]]
    optrace::record("add_rms_norm", {x, residual, w}, {res.sum, res.y}, {{"eps", eps}});
  return res;
}

NormResult layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  profiler::Scope scope("layer_norm");
  NormResult res = norm_forward(x, w, b, eps, /*rms=*/false, "layer_norm");
  if (optrace::active()) [[unlikely]]
    optrace::record("layer_norm", {x, w, b}, {res.y}, {{"eps", eps}});
  return res;
}

NormGrads layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                              const Tensor& rstd, bool has_bias) {
  profiler::Scope scope("layer_norm_backward");
  LOOM_CHECK(mean.defined(), "layer_norm_backward: the saved mean is undefined");
  return norm_backward(dy, x, w, mean, rstd, has_bias, "layer_norm_backward");
}

NormResult rms_norm(const Tensor& x, const Tensor& w, double eps) {
  profiler::Scope scope("rms_norm");
  NormResult res = norm_forward(x, w, Tensor(), eps, /*rms=*/true, "rms_norm");
  if (optrace::active()) [[unlikely]]
    optrace::record("rms_norm", {x, w}, {res.y}, {{"eps", eps}});
  return res;
}

NormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd) {
  profiler::Scope scope("rms_norm_backward");
  return norm_backward(dy, x, w, Tensor(), rstd, /*has_bias=*/false, "rms_norm_backward");
}

// ---------------------------------------------------------------- embedding

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  profiler::Scope scope("embedding");
  const char* op = "embedding";
  check_same_device(op, weight, indices);
  LOOM_CHECK(weight.dim() == 2, "embedding: weight must be (V, C), got ", shape_str(weight.sizes()));
  const int64_t V = weight.size(0), C = weight.size(1);
  if (weight.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, weight).embedding, op, weight);
    const Tensor idx = cuda_checked_indices(indices, V, op);
    Shape out_sizes = indices.sizes();
    out_sizes.push_back(C);
    Tensor out = empty(out_sizes, weight.dtype(), weight.device());
    kernel(out, weight.stride(1) == 1 || C <= 1 ? weight : contiguous(weight), idx);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("embedding", {weight, indices}, {out});
      return out;
    }
  }
  const std::vector<int64_t> idx = checked_indices(indices, V, op);
  Shape out_sizes = indices.sizes();
  out_sizes.push_back(C);
  Tensor out = empty(out_sizes, weight.dtype());
  Tensor wc = weight.stride(1) == 1 || C <= 1 ? weight : contiguous(weight);
  const int64_t n = static_cast<int64_t>(idx.size());
  const size_t es = wc.element_size();
  const char* src = static_cast<const char*>(wc.data_ptr());
  const int64_t row_stride = wc.stride(0) * static_cast<int64_t>(es);
  char* dst = static_cast<char*>(out.data_ptr());
  parallel_for(0, n, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      std::memcpy(dst + i * C * static_cast<int64_t>(es), src + idx[i] * row_stride, static_cast<size_t>(C) * es);
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("embedding", {weight, indices}, {out});
    return out;
  }
}

Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_weights) {
  profiler::Scope scope("embedding_backward");
  const char* op = "embedding_backward";
  check_same_device(op, grad, indices);
  LOOM_CHECK(grad.dim() >= 1 && is_floating(grad.dtype()), op, ": grad must be floating (..., C), got ",
             dtype_name(grad.dtype()), " ", shape_str(grad.sizes()));
  const int64_t C = grad.size(-1);
  LOOM_CHECK(grad.numel() == indices.numel() * C, op, ": grad ", shape_str(grad.sizes()), " does not match indices ",
             shape_str(indices.sizes()), " (expected indices' shape + [C])");
  LOOM_CHECK(num_weights >= 0, op, ": num_weights must be >= 0, got ", num_weights);
  if (grad.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, grad).embedding_backward, op, grad);
    const Tensor idx = cuda_checked_indices(indices, num_weights, op);
    Tensor out = zeros({num_weights, C}, grad.dtype(), grad.device());
    kernel(out, contiguous(grad), idx);
    return out;
  }
  const std::vector<int64_t> idx = checked_indices(indices, num_weights, op);
  const int64_t n = static_cast<int64_t>(idx.size());
  Tensor gc = contiguous(grad);
  Tensor out = empty({num_weights, C}, grad.dtype());
  LOOM_DISPATCH_FLOATING(grad.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* g = gc.data<scalar_t>();
    std::vector<A> acc_buf;
    A* acc;
    if constexpr (std::is_same_v<scalar_t, A>) {
      acc = out.data<A>();
    } else {
      acc_buf.resize(static_cast<size_t>(num_weights * C));
      acc = acc_buf.data();
    }
    std::memset(static_cast<void*>(acc), 0, static_cast<size_t>(num_weights * C) * sizeof(A));
    // Each task owns a block of columns for every row: no two tasks write one element,
    // and the order of accumulation is fixed (deterministic).
    constexpr int64_t kColBlock = 64;
    const int64_t nblk = (C + kColBlock - 1) / kColBlock;
    const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, n * kColBlock));
    parallel_for(0, nblk, grain, [&](int64_t b, int64_t e) {
      const int64_t c0 = b * kColBlock, c1 = std::min(C, e * kColBlock);
      for (int64_t i = 0; i < n; ++i) {
        A* dst = acc + idx[i] * C;
        const scalar_t* src = g + i * C;
        for (int64_t c = c0; c < c1; ++c) dst[c] += static_cast<A>(src[c]);
      }
    });
    if constexpr (!std::is_same_v<scalar_t, A>) {
      scalar_t* o = out.data<scalar_t>();
      parallel_for(0, num_weights * C, kElementwiseGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) o[i] = static_cast<scalar_t>(acc[i]);
      });
    }
  });
  return out;
}

// ---------------------------------------------------------------- cross-entropy

namespace {

void check_ce_inputs(const char* op, const Tensor& logits, const Tensor& target, int64_t ignore_index) {
  check_same_device(op, logits, target);
  LOOM_CHECK(logits.dim() == 2 && is_floating(logits.dtype()), op, ": logits must be floating (N, V), got ",
             dtype_name(logits.dtype()), " ", shape_str(logits.sizes()));
  LOOM_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op, ": target ", shape_str(target.sizes()),
             " does not match logits ", shape_str(logits.sizes()), " (expected [", logits.size(0), "])");
  LOOM_CHECK(target.dtype() == DType::i64 || target.dtype() == DType::i32, op, ": target has dtype ",
             dtype_name(target.dtype()), "; expected int64");
  (void)ignore_index;
}

[[noreturn]] void throw_bad_target(const char* op, int64_t value, int64_t row, int64_t V, int64_t ignore_index) {
  LOOM_THROW(InvalidArgument, op, ": target ", value, " at row ", row, " is out of range for ", V,
             " classes (expected 0 <= target < ", V, ", or ignore_index ", ignore_index, ")");
}

std::vector<int64_t> checked_targets(const char* op, const Tensor& target, int64_t V, int64_t ignore_index) {
  std::vector<int64_t> t = target.to_vector<int64_t>();
  for (size_t i = 0; i < t.size(); ++i)
    if (t[i] != ignore_index && (t[i] < 0 || t[i] >= V))
      throw_bad_target(op, t[i], static_cast<int64_t>(i), V, ignore_index);
  return t;
}

}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index) {
  profiler::Scope scope("cross_entropy");
  const char* op = "cross_entropy";
  check_ce_inputs(op, logits, target, ignore_index);
  const int64_t N = logits.size(0), V = logits.size(1);
  if (logits.device().is_cuda()) {
    const detail::CudaKernels& k = cuda(op, logits);
    const auto kernel = detail::need(k.cross_entropy, op, logits);
    const auto check = detail::need(k.index_check, op, target);
    const Tensor tg = contiguous(target);
    // Host sync 1 of 2: targets outside [0, V) (other than ignore_index) throw the CPU's error.
    const int64_t bad = check(tg, V, ignore_index);
    if (bad >= 0) throw_bad_target(op, index_at(tg, bad), bad, V, ignore_index);
    const DType sd = stat_dtype(logits.dtype());
    CrossEntropyResult res;
    res.lse = empty({N}, sd, logits.device());
    Tensor row_loss = empty({N}, sd, logits.device());
    kernel(row_loss, res.lse, contiguous(logits), tg, ignore_index);
    // Host sync 2 of 2: the rows that count, summed on the device and read once (the result
    // carries the count on the host for the backward's scale).
    res.count =
        static_cast<int64_t>(sum(ne(tg, full({}, static_cast<double>(ignore_index), tg.dtype(), tg.device()))).item());
    // Mean over counted rows; with none counted this is 0 * inf = nan, as PyTorch gives.
    res.loss = to(mul(sum(row_loss), 1.0 / static_cast<double>(res.count)), logits.dtype());
    return res;
  }
  const std::vector<int64_t> tg = checked_targets(op, target, V, ignore_index);
  Tensor lc = contiguous(logits);
  CrossEntropyResult res;
  res.lse = empty({N}, stat_dtype(logits.dtype()));
  res.loss = empty({}, logits.dtype());
  int64_t count = 0;
  for (int64_t t : tg) count += t != ignore_index;
  res.count = count;
  double total = 0;
  LOOM_DISPATCH_FLOATING(logits.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* lp = lc.data<scalar_t>();
    A* lse = res.lse.data<A>();
    const int64_t chunks = row_chunks(N, V);
    std::vector<double> part(static_cast<size_t>(chunks), 0.0);
    for_row_chunks(N, chunks, [&](int64_t c, int64_t lo, int64_t hi) {
      std::vector<A> buf;
      if constexpr (!std::is_same_v<scalar_t, A>) buf.resize(static_cast<size_t>(V));
      double s = 0;
      for (int64_t r = lo; r < hi; ++r) {
        const A* x;
        if constexpr (std::is_same_v<scalar_t, A>) {
          x = reinterpret_cast<const A*>(lp + r * V);
        } else {
          widen(lp + r * V, buf.data(), V);
          x = buf.data();
        }
        const A m = row_max(x, V);
        const A l = m + std::log(row_sum_exp(x, m, V));
        lse[r] = l;
        if (tg[r] != ignore_index) s += static_cast<double>(l) - static_cast<double>(x[tg[r]]);
      }
      part[c] = s;
    });
    for (double v : part) total += v;
    // Mean over counted rows; with none counted this is 0/0 = nan, as PyTorch gives.
    *res.loss.data<scalar_t>() = static_cast<scalar_t>(static_cast<A>(total / static_cast<double>(count)));
  });
  return res;
}

Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& target, const Tensor& lse,
                              int64_t count, int64_t ignore_index) {
  profiler::Scope scope("cross_entropy_backward");
  const char* op = "cross_entropy_backward";
  check_ce_inputs(op, logits, target, ignore_index);
  check_same_device(op, grad_loss, logits);
  LOOM_CHECK(grad_loss.numel() == 1, op, ": grad_loss must hold one value, got shape ", shape_str(grad_loss.sizes()));
  const int64_t N = logits.size(0), V = logits.size(1);
  LOOM_CHECK(lse.defined() && lse.numel() == N, op, ": saved lse does not match logits ", shape_str(logits.sizes()));
  if (logits.device().is_cuda()) {
    // No target check here (it would cost a host sync per step): the forward checked the same
    // targets, and the kernel reads nothing outside a row whatever a target holds.
    const auto kernel = detail::need(cuda(op, logits).cross_entropy_backward, op, logits);
    Tensor dx = empty(logits.sizes(), logits.dtype(), logits.device());
    kernel(dx, grad_loss, contiguous(logits), contiguous(target), contiguous(to(lse, stat_dtype(logits.dtype()))),
           count, ignore_index);
    return dx;
  }
  const std::vector<int64_t> tg = checked_targets(op, target, V, ignore_index);
  Tensor lc = contiguous(logits);
  Tensor lse_c = contiguous(to(lse, stat_dtype(logits.dtype())));
  Tensor dx = empty(logits.sizes(), logits.dtype());
  const double g = count > 0 ? grad_loss.item() / static_cast<double>(count) : 0.0;
  LOOM_DISPATCH_FLOATING(logits.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const A* lsep = lse_c.data<A>();
    const A ga = static_cast<A>(g);
    rowwise<scalar_t, 1>({lc.data<scalar_t>()}, dx.data<scalar_t>(), N, V, [&](int64_t r, auto in, A* y, int64_t n) {
      const A* x = in[0];
      if (tg[r] == ignore_index) {
        for (int64_t i = 0; i < n; ++i) y[i] = A(0);
        return;
      }
      const A l = lsep[r];
      for (int64_t i = 0; i < n; ++i) y[i] = ga * exp_acc(x[i] - l);
      y[tg[r]] -= ga;
    });
  });
  return dx;
}

// ---------------------------------------------------------------- dropout

std::pair<Tensor, Tensor> detail_dropout(const Tensor& x, double p, Generator& gen);

std::pair<Tensor, Tensor> dropout(const Tensor& x, double p, Generator& gen) {
  profiler::Scope scope("dropout");
  auto res = detail_dropout(x, p, gen);
  if (optrace::active()) [[unlikely]]
    optrace::record("dropout", {x}, {res.first, res.second}, {{"p", p}});
  return res;
}

std::pair<Tensor, Tensor> detail_dropout(const Tensor& x, double p, Generator& gen) {
  const char* op = "dropout";
  LOOM_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  LOOM_CHECK(is_floating(x.dtype()), "dropout: input of shape ", shape_str(x.sizes()), " has dtype ",
             dtype_name(x.dtype()), "; expected a floating dtype");
  const int64_t n = x.numel();
  const int64_t nblocks = (n + 3) / 4;
  if (x.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, x).dropout, op, x);
    Tensor y = empty(x.sizes(), x.dtype(), x.device());
    Tensor mask = empty(x.sizes(), DType::u8, x.device());
    Tensor xc = contiguous(x);
    // The same draw as below (tensor/philox.h on the device): the same seed gives the same mask.
    const uint64_t start = gen.advance(static_cast<uint64_t>(nblocks));
    kernel(y, mask, xc, p, gen.seed(), start);
    return {y, mask};
  }
  Tensor xc = contiguous(x);
  Tensor y = empty(x.sizes(), x.dtype());
  Tensor mask = empty(x.sizes(), DType::u8);
  // Element i uses word i % 4 of Philox block (start + i / 4): independent of threads.
  const uint64_t start = gen.advance(static_cast<uint64_t>(nblocks));
  const uint64_t seed = gen.seed();
  const float pf = static_cast<float>(p);
  uint8_t* mp = mask.data<uint8_t>();
  LOOM_DISPATCH_FLOATING(x.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const A scale = static_cast<A>(1.0 / (1.0 - p));
    const scalar_t* xp = xc.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    parallel_for(0, nblocks, kElementwiseGrain / 4, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const uint64_t ctr = start + static_cast<uint64_t>(blk);
        const auto u = philox4x32({static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32), 0u, 0u}, seed);
        for (int64_t k = 0; k < 4; ++k) {
          const int64_t i = blk * 4 + k;
          if (i >= n) break;
          const uint8_t keep = uint_to_unit_float(u[k]) >= pf ? 1 : 0;
          mp[i] = keep;
          yp[i] = static_cast<scalar_t>(keep ? static_cast<A>(xp[i]) * scale : A(0));
        }
      }
    });
  });
  return {y, mask};
}

// ---------------------------------------------------------------- rotary embedding

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse) {
  profiler::Scope scope("rope");
  const char* op = "rope";
  check_same_device(op, x, cos);
  check_same_device(op, x, sin);
  LOOM_CHECK(x.dim() >= 2 && is_floating(x.dtype()), "rope: x must be floating (..., T, D), got ",
             dtype_name(x.dtype()), " ", shape_str(x.sizes()));
  const int64_t T = x.size(-2), D = x.size(-1), H = D / 2;
  LOOM_CHECK(D % 2 == 0, "rope: head dim D of x ", shape_str(x.sizes()), " must be even");
  LOOM_CHECK(cos.sizes() == Shape({T, H}) && sin.sizes() == Shape({T, H}), "rope: cos ", shape_str(cos.sizes()),
             " and sin ", shape_str(sin.sizes()), " must both be (T, D/2) = ", shape_str({T, H}), " for x ",
             shape_str(x.sizes()));
  if (x.device().is_cuda()) {
    const auto kernel = detail::need(cuda(op, x).rope, op, x);
    const DType sd = stat_dtype(x.dtype());
    Tensor y = empty(x.sizes(), x.dtype(), x.device());
    kernel(y, contiguous(x), contiguous(to(cos, sd)), contiguous(to(sin, sd)), inverse);
    {
      Tensor out = y;
      if (optrace::active()) [[unlikely]]
        optrace::record("rope", {x, cos, sin}, {out}, {{"inverse", inverse ? 1 : 0}});
      return out;
    }
  }
  Tensor xc = contiguous(x);
  Tensor y = empty(x.sizes(), x.dtype());
  const int64_t rows = T == 0 || D == 0 ? 0 : x.numel() / D;
  LOOM_DISPATCH_FLOATING(x.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    Tensor ct = contiguous(to(cos, DTypeOf<A>::value));
    Tensor st = contiguous(to(sin, DTypeOf<A>::value));
    const A* cp = ct.data<A>();
    const A* sp = st.data<A>();
    const A sgn = inverse ? A(-1) : A(1);
    rowwise<scalar_t, 1>({xc.data<scalar_t>()}, y.data<scalar_t>(), rows, D, [&](int64_t r, auto in, A* o, int64_t) {
      const A* xr = in[0];
      const A* c = cp + (r % T) * H;
      const A* s = sp + (r % T) * H;
      for (int64_t i = 0; i < H; ++i) {
        const A x1 = xr[i], x2 = xr[i + H], si = sgn * s[i];
        o[i] = x1 * c[i] - x2 * si;
        o[i + H] = x2 * c[i] + x1 * si;
      }
    });
  });
  {
    Tensor out = y;
    if (optrace::active()) [[unlikely]]
      optrace::record("rope", {x, cos, sin}, {out}, {{"inverse", inverse ? 1 : 0}});
    return out;
  }
}

}  // namespace loom::ops
