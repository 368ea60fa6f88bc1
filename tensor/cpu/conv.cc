// CPU convolution (im2col + OpenBLAS gemm per image and group), pooling and
// batch-norm kernels for NCHW tensors in f32 and f64. The batch is spread over
// OpenMP threads with BLAS single-threaded inside (one gemm per image is too
// small for OpenBLAS's own threads); a batch smaller than the thread count runs
// image by image with BLAS threaded instead. conv2d and its backward passes on
// CUDA tensors go to cuDNN (tensor/cuda/conv_cudnn.cu through tensor/conv_cuda.h);
// pooling and batch norm on CUDA tensors are refused with Unsupported.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensor/conv.h"
#include "tensor/conv_cuda.h"
#include "tensor/cpu/blas_threads.h"
#include "tensor/cuda_dispatch.h"
#include "tensor/op_trace.h"
#include "tensor/parallel.h"

namespace loom::ops {
namespace {

/// Calls fn(T{}) with T = float or double for dtype; other dtypes throw naming op.
template <typename F>
void dispatch_real(DType dtype, const char* op, F&& fn) {
  if (dtype == DType::f32) {
    fn(float{});
  } else if (dtype == DType::f64) {
    fn(double{});
  } else {
    LOOM_THROW(InvalidArgument, op, ": expected f32 or f64, got ", dtype_name(dtype));
  }
}

using detail::BlasSingleThreaded;

/// Row-major C (M, N) = alpha * op(A) @ op(B) + beta * C with leading dims lda/ldb/ldc.
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T beta,
          T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  const auto a = ta ? CblasTrans : CblasNoTrans;
  const auto b = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, a, b, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  } else {
    cblas_dgemm(CblasRowMajor, a, b, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc);
  }
}

void check_cpu(const char* op, const Tensor& t, const char* what) {
  if (!t.defined()) return;
  if (t.device().is_cuda())
    LOOM_THROW(Unsupported, op, ": ", what, " of shape ", shape_str(t.sizes()), " is on ", t.device().str(),
               "; this build has no CUDA kernel for ", op, " (move the tensors to the CPU)");
}

void check_float(const char* op, const Tensor& t, const char* what) {
  LOOM_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, op, ": ", what, " of shape ", shape_str(t.sizes()),
             " has dtype ", dtype_name(t.dtype()), "; expected f32 or f64");
}

void check_same_dtype(const char* op, const Tensor& a, const char* an, const Tensor& b, const char* bn) {
  if (!b.defined()) return;
  LOOM_CHECK(a.dtype() == b.dtype(), op, ": ", an, " ", shape_str(a.sizes()), " is ", dtype_name(a.dtype()), " but ",
             bn, " ", shape_str(b.sizes()), " is ", dtype_name(b.dtype()));
}

/// Whether the conv op runs on CUDA: all defined tensors on one device (else an error naming them).
bool on_cuda(const char* op, std::initializer_list<std::pair<const Tensor*, const char*>> ts) {
  const Tensor* first = nullptr;
  const char* first_name = "";
  for (const auto& [t, name] : ts) {
    if (!t->defined()) continue;
    if (!first) {
      first = t, first_name = name;
      continue;
    }
    LOOM_CHECK(t->device() == first->device(), op, ": ", first_name, " ", shape_str(first->sizes()), " is on ",
               first->device().str(), " but ", name, " ", shape_str(t->sizes()), " is on ", t->device().str());
  }
  return first && first->device().is_cuda();
}

/// The cuDNN entry fn for op on t's device; throws Unsupported when this build or machine has none.
template <typename Fn>
Fn need_cudnn(Fn fn, const char* op, const Tensor& t) {
  detail::cuda_kernels(op, t);  // throws naming op without a CUDA build or device
  if (!fn)
    LOOM_THROW(Unsupported, op, ": no cuDNN kernel for a tensor on ", t.device().str(), " of shape ",
               shape_str(t.sizes()), " (this build found no cudnn.h)");
  return fn;
}

/// The geometry of one conv2d call, validated.
struct ConvGeom {
  int64_t N, C, H, W, OC, KH, KW, OH, OW, G, Cg, OCg;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t K() const { return Cg * KH * KW; }  // rows of the column matrix
  int64_t P() const { return OH * OW; }       // output positions per image
  bool direct() const { return KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

ConvGeom conv_geom(const char* op, const Shape& x, const Shape& w, const Conv2dOptions& o) {
  LOOM_CHECK(x.size() == 4, op, ": input must be 4-D (N, C, H, W), got ", shape_str(x));
  LOOM_CHECK(w.size() == 4, op, ": weight must be 4-D (OC, C/groups, KH, KW), got ", shape_str(w));
  LOOM_CHECK(o.groups >= 1, op, ": groups must be positive, got ", o.groups);
  for (int i = 0; i < 2; ++i) {
    LOOM_CHECK(o.stride[i] >= 1 && o.dilation[i] >= 1 && o.padding[i] >= 0, op,
               ": stride and dilation must be >= 1 and padding >= 0, got stride ", o.stride[i], ", padding ",
               o.padding[i], ", dilation ", o.dilation[i]);
  }
  ConvGeom g{};
  g.N = x[0], g.C = x[1], g.H = x[2], g.W = x[3];
  g.OC = w[0], g.KH = w[2], g.KW = w[3], g.G = o.groups;
  LOOM_CHECK(g.C % g.G == 0 && g.OC % g.G == 0, op, ": input channels (", g.C, ") and output channels (", g.OC,
             ") must be divisible by groups=", g.G, "; input ", shape_str(x), ", weight ", shape_str(w));
  g.Cg = g.C / g.G, g.OCg = g.OC / g.G;
  LOOM_CHECK(w[1] == g.Cg, op, ": weight ", shape_str(w), " expects ", w[1] * g.G, " input channels (groups=", g.G,
             ") but the input ", shape_str(x), " has ", g.C);
  g.sh = o.stride[0], g.sw = o.stride[1], g.ph = o.padding[0], g.pw = o.padding[1];
  g.dh = o.dilation[0], g.dw = o.dilation[1];
  const int64_t eh = g.dh * (g.KH - 1) + 1, ew = g.dw * (g.KW - 1) + 1;
  LOOM_CHECK(g.KH > 0 && g.KW > 0 && g.H + 2 * g.ph >= eh && g.W + 2 * g.pw >= ew, op, ": kernel ", g.KH, "x", g.KW,
             " (dilation ", g.dh, "x", g.dw, ") is larger than the padded input ", g.H + 2 * g.ph, "x", g.W + 2 * g.pw,
             "; input ", shape_str(x), ", weight ", shape_str(w));
  g.OH = (g.H + 2 * g.ph - eh) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - ew) / g.sw + 1;
  return g;
}

/// col (Cg*KH*KW, OH*OW) from one image's group of channels x (Cg, H, W); zeros where the window is in padding.
template <typename T>
void im2col(const T* x, const ConvGeom& g, T* col) {
  const int64_t P = g.P();
  for (int64_t c = 0; c < g.Cg; ++c)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        T* dst = col + ((c * g.KH + kh) * g.KW + kw) * P;
        const int64_t woff = kw * g.dw - g.pw;
        // ow with 0 <= ow*sw + woff < W
        const int64_t lo = std::min(g.OW, woff >= 0 ? 0 : (-woff + g.sw - 1) / g.sw);
        const int64_t hi = std::max(lo, std::min(g.OW, g.W - woff <= 0 ? 0 : (g.W - woff + g.sw - 1) / g.sw));
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          T* d = dst + oh * g.OW;
          if (ih < 0 || ih >= g.H) {
            std::fill(d, d + g.OW, T(0));
            continue;
          }
          const T* src = x + (c * g.H + ih) * g.W + woff;
          std::fill(d, d + lo, T(0));
          if (g.sw == 1) {
            std::memcpy(d + lo, src + lo, sizeof(T) * static_cast<size_t>(hi - lo));
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) d[ow] = src[ow * g.sw];
          }
          std::fill(d + hi, d + g.OW, T(0));
        }
      }
}

/// dx (Cg, H, W) += col2im(col): the adjoint of im2col.
template <typename T>
void col2im_add(const T* col, const ConvGeom& g, T* x) {
  const int64_t P = g.P();
  for (int64_t c = 0; c < g.Cg; ++c)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const T* src = col + ((c * g.KH + kh) * g.KW + kw) * P;
        const int64_t woff = kw * g.dw - g.pw;
        const int64_t lo = std::min(g.OW, woff >= 0 ? 0 : (-woff + g.sw - 1) / g.sw);
        const int64_t hi = std::max(lo, std::min(g.OW, g.W - woff <= 0 ? 0 : (g.W - woff + g.sw - 1) / g.sw));
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          T* d = x + (c * g.H + ih) * g.W + woff;
          const T* s = src + oh * g.OW;
          if (g.sw == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) d[ow] += s[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) d[ow * g.sw] += s[ow];
          }
        }
      }
}

/// Runs fn(n, tid, nthreads) for every image n: over OpenMP threads with BLAS single-threaded when the batch
/// has at least as many images as threads, else serially with BLAS threaded. Returns the thread count used.
template <typename F>
int for_each_image(int64_t N, int64_t work_per_image, F&& fn) {
  const int max_threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const bool spread = max_threads > 1 && N >= max_threads && work_per_image > 0;
  if (!spread) {
    for (int64_t n = 0; n < N; ++n) fn(n, 0);
    return 1;
  }
  const int nt = static_cast<int>(std::min<int64_t>(max_threads, N));
  BlasSingleThreaded single;
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    const int64_t T = omp_get_num_threads();
    const int64_t chunk = (N + T - 1) / T;
    for (int64_t n = tid * chunk; n < std::min(N, (tid + 1) * chunk); ++n) fn(n, tid);
  }
  return nt;
}

int planned_threads(int64_t N) {
  const int max_threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  return (max_threads > 1 && N >= max_threads) ? static_cast<int>(std::min<int64_t>(max_threads, N)) : 1;
}

template <typename T>
void conv_forward(const ConvGeom& g, const T* x, const T* w, const T* b, T* y) {
  const int64_t K = g.K(), P = g.P();
  const int nt = planned_threads(g.N);
  std::vector<std::vector<T>> cols(static_cast<size_t>(nt));
  for_each_image(g.N, K * P, [&](int64_t n, int tid) {
    std::vector<T>& col = cols[static_cast<size_t>(tid)];
    if (!g.direct() && col.empty()) col.resize(static_cast<size_t>(K * P));
    for (int64_t gr = 0; gr < g.G; ++gr) {
      const T* xg = x + (n * g.C + gr * g.Cg) * g.H * g.W;
      const T* cp = xg;
      if (!g.direct()) {
        im2col(xg, g, col.data());
        cp = col.data();
      }
      T* yg = y + (n * g.OC + gr * g.OCg) * P;
      gemm<T>(false, false, g.OCg, P, K, w + gr * g.OCg * K, K, cp, P, T(0), yg, P);
      if (b)
        for (int64_t oc = 0; oc < g.OCg; ++oc) {
          const T bv = b[gr * g.OCg + oc];
          T* row = yg + oc * P;
          for (int64_t p = 0; p < P; ++p) row[p] += bv;
        }
    }
  });
}

template <typename T>
void conv_backward_input(const ConvGeom& g, const T* dy, const T* w, T* dx) {
  const int64_t K = g.K(), P = g.P();
  const int nt = planned_threads(g.N);
  std::vector<std::vector<T>> cols(static_cast<size_t>(nt));
  for_each_image(g.N, K * P, [&](int64_t n, int tid) {
    std::vector<T>& col = cols[static_cast<size_t>(tid)];
    if (!g.direct() && col.empty()) col.resize(static_cast<size_t>(K * P));
    T* dxn = dx + n * g.C * g.H * g.W;
    if (!g.direct()) std::fill(dxn, dxn + g.C * g.H * g.W, T(0));
    for (int64_t gr = 0; gr < g.G; ++gr) {
      const T* dyg = dy + (n * g.OC + gr * g.OCg) * P;
      T* dxg = dxn + gr * g.Cg * g.H * g.W;
      // dcol (K, P) = W_g^T (K, OCg) @ dy_g (OCg, P)
      T* dcol = g.direct() ? dxg : col.data();
      gemm<T>(true, false, K, P, g.OCg, w + gr * g.OCg * K, K, dyg, P, T(0), dcol, P);
      if (!g.direct()) col2im_add(dcol, g, dxg);
    }
  });
}

template <typename T>
void conv_backward_weight(const ConvGeom& g, const T* dy, const T* x, T* dw) {
  const int64_t K = g.K(), P = g.P();
  const int nt = planned_threads(g.N);
  const int64_t wsize = g.OC * K;
  std::vector<std::vector<T>> cols(static_cast<size_t>(nt));
  // thread 0 writes dw itself; the others accumulate privately and are summed after
  std::vector<std::vector<T>> partial(static_cast<size_t>(nt));
  std::vector<char> touched(static_cast<size_t>(nt), 0);
  std::fill(dw, dw + wsize, T(0));
  for_each_image(g.N, K * P, [&](int64_t n, int tid) {
    std::vector<T>& col = cols[static_cast<size_t>(tid)];
    if (!g.direct() && col.empty()) col.resize(static_cast<size_t>(K * P));
    T* acc = dw;
    if (tid != 0) {
      std::vector<T>& p = partial[static_cast<size_t>(tid)];
      if (p.empty()) p.assign(static_cast<size_t>(wsize), T(0));
      acc = p.data();
    }
    touched[static_cast<size_t>(tid)] = 1;
    for (int64_t gr = 0; gr < g.G; ++gr) {
      const T* xg = x + (n * g.C + gr * g.Cg) * g.H * g.W;
      const T* cp = xg;
      if (!g.direct()) {
        im2col(xg, g, col.data());
        cp = col.data();
      }
      const T* dyg = dy + (n * g.OC + gr * g.OCg) * P;
      // dW_g (OCg, K) += dy_g (OCg, P) @ col^T (P, K)
      gemm<T>(false, true, g.OCg, K, P, dyg, P, cp, P, T(1), acc + gr * g.OCg * K, K);
    }
  });
  for (int t = 1; t < nt; ++t) {
    if (!touched[static_cast<size_t>(t)]) continue;
    const T* p = partial[static_cast<size_t>(t)].data();
    for (int64_t i = 0; i < wsize; ++i) dw[i] += p[i];
  }
}

}  // namespace

// ============================================================================ conv2d

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dOptions& opts) {
  const char* op = "conv2d";
  const bool cuda = on_cuda(op, {{&x, "input"}, {&w, "weight"}, {&b, "bias"}});
  const ConvGeom g = conv_geom(op, x.sizes(), w.sizes(), opts);
  if (!cuda) check_float(op, x, "input");
  check_same_dtype(op, x, "input", w, "weight");
  check_same_dtype(op, x, "input", b, "bias");
  if (b.defined())
    LOOM_CHECK(b.dim() == 1 && b.size(0) == g.OC, op, ": bias must have shape [", g.OC,
               "] (one per output channel), got ", shape_str(b.sizes()), "; weight ", shape_str(w.sizes()));
  Tensor xc = contiguous(x), wc = contiguous(w), bc = b.defined() ? contiguous(b) : Tensor();
  if (cuda) {
    const auto kernel = need_cudnn(detail::conv_cuda_kernels().conv2d_forward, op, x);
    Tensor y = empty({g.N, g.OC, g.OH, g.OW}, x.dtype(), x.device());
    kernel(y, xc, wc, bc, opts);
    return y;
  }
  Tensor y = empty({g.N, g.OC, g.OH, g.OW}, x.dtype());
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      conv_forward<scalar_t>(g, xc.data<scalar_t>(), wc.data<scalar_t>(), bc.defined() ? bc.data<scalar_t>() : nullptr,
                             y.data<scalar_t>());
    }
  });
  if (optrace::active()) [[unlikely]]
    optrace::record("conv2d", {x, w, b}, {y},
                    {{"stride", std::vector<int64_t>{opts.stride[0], opts.stride[1]}},
                     {"padding", std::vector<int64_t>{opts.padding[0], opts.padding[1]}},
                     {"dilation", std::vector<int64_t>{opts.dilation[0], opts.dilation[1]}},
                     {"groups", opts.groups}});
  return y;
}

namespace {
void check_dy(const char* op, const Tensor& dy, const ConvGeom& g) {
  LOOM_CHECK(dy.dim() == 4 && dy.size(0) == g.N && dy.size(1) == g.OC && dy.size(2) == g.OH && dy.size(3) == g.OW, op,
             ": grad_output has shape ", shape_str(dy.sizes()), " but the convolution's output is [", g.N, ", ", g.OC,
             ", ", g.OH, ", ", g.OW, "]");
}
}  // namespace

Tensor conv2d_backward_input(const Tensor& dy, const Tensor& w, const Shape& x_sizes, const Conv2dOptions& opts) {
  const char* op = "conv2d_backward_input";
  const bool cuda = on_cuda(op, {{&dy, "grad_output"}, {&w, "weight"}});
  const ConvGeom g = conv_geom(op, x_sizes, w.sizes(), opts);
  check_dy(op, dy, g);
  if (!cuda) check_float(op, dy, "grad_output");
  check_same_dtype(op, dy, "grad_output", w, "weight");
  Tensor dyc = contiguous(dy), wc = contiguous(w);
  if (cuda) {
    const auto kernel = need_cudnn(detail::conv_cuda_kernels().conv2d_backward_input, op, dy);
    Tensor dx = empty(x_sizes, dy.dtype(), dy.device());
    kernel(dx, dyc, wc, opts);
    return dx;
  }
  Tensor dx = empty(x_sizes, dy.dtype());
  dispatch_real(dy.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    conv_backward_input<scalar_t>(g, dyc.data<scalar_t>(), wc.data<scalar_t>(), dx.data<scalar_t>());
  });
  return dx;
}

Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_sizes, const Conv2dOptions& opts) {
  const char* op = "conv2d_backward_weight";
  const bool cuda = on_cuda(op, {{&dy, "grad_output"}, {&x, "input"}});
  const ConvGeom g = conv_geom(op, x.sizes(), w_sizes, opts);
  check_dy(op, dy, g);
  if (!cuda) check_float(op, dy, "grad_output");
  check_same_dtype(op, dy, "grad_output", x, "input");
  Tensor dyc = contiguous(dy), xc = contiguous(x);
  if (cuda) {
    const auto kernel = need_cudnn(detail::conv_cuda_kernels().conv2d_backward_weight, op, dy);
    Tensor dw = empty(w_sizes, dy.dtype(), dy.device());
    kernel(dw, dyc, xc, opts);
    return dw;
  }
  Tensor dw = empty(w_sizes, dy.dtype());
  dispatch_real(dy.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    conv_backward_weight<scalar_t>(g, dyc.data<scalar_t>(), xc.data<scalar_t>(), dw.data<scalar_t>());
  });
  return dw;
}

Tensor conv2d_backward_bias(const Tensor& dy) {
  const char* op = "conv2d_backward_bias";
  LOOM_CHECK(dy.dim() == 4, op, ": grad_output must be 4-D (N, OC, OH, OW), got ", shape_str(dy.sizes()));
  const int64_t N = dy.size(0), OC = dy.size(1), P = dy.size(2) * dy.size(3);
  Tensor dyc = contiguous(dy);
  if (dy.device().is_cuda()) {
    const auto kernel = need_cudnn(detail::conv_cuda_kernels().conv2d_backward_bias, op, dy);
    Tensor db = empty({OC}, dy.dtype(), dy.device());
    kernel(db, dyc);
    return db;
  }
  Tensor db = empty({OC}, dy.dtype());
  check_float(op, dy, "grad_output");
  dispatch_real(dy.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* d = dyc.data<scalar_t>();
      scalar_t* out = db.data<scalar_t>();
      parallel_for(0, OC, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t c = b0; c < e0; ++c) {
          double acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            const scalar_t* row = d + (n * OC + c) * P;
            for (int64_t p = 0; p < P; ++p) acc += row[p];
          }
          out[c] = static_cast<scalar_t>(acc);
        }
      });
    }
  });
  return db;
}

// ============================================================================ pooling

namespace {

struct PoolGeom {
  int64_t planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw;
};

int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;  // the last window must start inside the input or left padding
  return out;
}

PoolGeom pool_geom(const char* op, const Shape& x, const Pool2dOptions& o, bool use_dilation) {
  LOOM_CHECK(x.size() == 4 || x.size() == 3, op, ": input must be (N, C, H, W) or (C, H, W), got ", shape_str(x));
  PoolGeom g{};
  const size_t r = x.size();
  g.H = x[r - 2], g.W = x[r - 1];
  g.planes = shape_numel(x) / std::max<int64_t>(1, g.H * g.W);
  if (g.H * g.W == 0) g.planes = x[0] * (r == 4 ? x[1] : 1);
  g.kh = o.kernel_size[0], g.kw = o.kernel_size[1];
  g.sh = o.stride[0] == 0 ? g.kh : o.stride[0];
  g.sw = o.stride[1] == 0 ? g.kw : o.stride[1];
  g.ph = o.padding[0], g.pw = o.padding[1];
  g.dh = use_dilation ? o.dilation[0] : 1, g.dw = use_dilation ? o.dilation[1] : 1;
  LOOM_CHECK(g.kh >= 1 && g.kw >= 1 && g.sh >= 1 && g.sw >= 1 && g.dh >= 1 && g.dw >= 1, op,
             ": kernel_size, stride and dilation must be positive; kernel ", g.kh, "x", g.kw, ", stride ", g.sh, "x",
             g.sw, ", input ", shape_str(x));
  LOOM_CHECK(g.ph >= 0 && g.pw >= 0 && 2 * g.ph <= g.kh && 2 * g.pw <= g.kw, op, ": padding (", g.ph, ", ", g.pw,
             ") must be at most half the kernel size (", g.kh, ", ", g.kw, "); input ", shape_str(x));
  g.OH = pool_out(g.H, g.kh, g.sh, g.ph, g.dh, o.ceil_mode);
  g.OW = pool_out(g.W, g.kw, g.sw, g.pw, g.dw, o.ceil_mode);
  LOOM_CHECK(g.OH >= 1 && g.OW >= 1, op, ": output would be ", g.OH, "x", g.OW, " for input ", shape_str(x),
             " with kernel ", g.kh, "x", g.kw, ", stride ", g.sh, "x", g.sw, ", padding ", g.ph, "x", g.pw);
  return g;
}

Shape pool_out_shape(const Shape& x, int64_t OH, int64_t OW) {
  Shape s = x;
  s[s.size() - 2] = OH;
  s[s.size() - 1] = OW;
  return s;
}

void check_pool_input(const char* op, const Tensor& x) {
  check_cpu(op, x, "input");
  check_float(op, x, "input");
}

}  // namespace

std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, const Pool2dOptions& opts) {
  const char* op = "max_pool2d";
  check_pool_input(op, x);
  const PoolGeom g = pool_geom(op, x.sizes(), opts, true);
  Tensor xc = contiguous(x);
  const Shape os = pool_out_shape(x.sizes(), g.OH, g.OW);
  Tensor y = empty(os, x.dtype()), idx = empty(os, DType::i64);
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      scalar_t* out = y.data<scalar_t>();
      int64_t* ind = idx.data<int64_t>();
      parallel_for(0, g.planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.OH * g.OW * g.kh * g.kw)),
                   [&](int64_t b0, int64_t e0) {
                     // Every window inside the input (no padding, no dilation, no ceil overhang): no bounds checks.
                     const bool inside = g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 &&
                                         (g.OH - 1) * g.sh + g.kh <= g.H && (g.OW - 1) * g.sw + g.kw <= g.W;
                     for (int64_t pl = b0; pl < e0; ++pl) {
                       const scalar_t* xp = in + pl * g.H * g.W;
                       if (inside) {
                         for (int64_t oh = 0; oh < g.OH; ++oh)
                           for (int64_t ow = 0; ow < g.OW; ++ow) {
                             const int64_t first = oh * g.sh * g.W + ow * g.sw;
                             scalar_t best = xp[first];
                             int64_t bi = first;
                             for (int64_t i = 0; i < g.kh; ++i)
                               for (int64_t j = 0; j < g.kw; ++j) {
                                 const int64_t at = first + i * g.W + j;
                                 const scalar_t v = xp[at];
                                 if (v > best || (std::isnan(v) && !std::isnan(best))) best = v, bi = at;
                               }
                             const int64_t o = (pl * g.OH + oh) * g.OW + ow;
                             out[o] = best;
                             ind[o] = bi;
                           }
                         continue;
                       }
                       for (int64_t oh = 0; oh < g.OH; ++oh)
                         for (int64_t ow = 0; ow < g.OW; ++ow) {
                           const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
                           scalar_t best = -std::numeric_limits<scalar_t>::infinity();
                           int64_t bi = -1;
                           for (int64_t i = 0; i < g.kh; ++i) {
                             const int64_t ih = h0 + i * g.dh;
                             if (ih < 0 || ih >= g.H) continue;
                             for (int64_t j = 0; j < g.kw; ++j) {
                               const int64_t iw = w0 + j * g.dw;
                               if (iw < 0 || iw >= g.W) continue;
                               const scalar_t v = xp[ih * g.W + iw];
                               if (bi < 0 || v > best || std::isnan(v)) {
                                 best = v;
                                 bi = ih * g.W + iw;
                                 if (std::isnan(v)) goto done;
                               }
                             }
                           }
                         done:
                           const int64_t o = (pl * g.OH + oh) * g.OW + ow;
                           out[o] = best;
                           ind[o] = bi;
                         }
                     }
                   });
    }
  });
  if (optrace::active()) [[unlikely]]
    optrace::record("max_pool2d", {x}, {y, idx},
                    {{"kernel", std::vector<int64_t>{g.kh, g.kw}},
                     {"stride", std::vector<int64_t>{g.sh, g.sw}},
                     {"padding", std::vector<int64_t>{g.ph, g.pw}},
                     {"dilation", std::vector<int64_t>{opts.dilation[0], opts.dilation[1]}},
                     {"ceil_mode", opts.ceil_mode ? 1 : 0},
                     {"count_include_pad", opts.count_include_pad ? 1 : 0}});
  return {y, idx};
}

Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_sizes) {
  const char* op = "max_pool2d_backward";
  check_cpu(op, dy, "grad_output");
  check_float(op, dy, "grad_output");
  LOOM_CHECK(indices.dtype() == DType::i64 && indices.sizes() == dy.sizes(), op, ": indices ",
             shape_str(indices.sizes()), " (", dtype_name(indices.dtype()), ") must be i64 of grad_output's shape ",
             shape_str(dy.sizes()));
  LOOM_CHECK(static_cast<int64_t>(x_sizes.size()) == dy.dim() && x_sizes.size() >= 3, op, ": input shape ",
             shape_str(x_sizes), " does not match grad_output ", shape_str(dy.sizes()));
  const int64_t H = x_sizes[x_sizes.size() - 2], W = x_sizes[x_sizes.size() - 1];
  const int64_t OP = dy.size(-2) * dy.size(-1);
  const int64_t planes = dy.numel() / std::max<int64_t>(1, OP);
  Tensor dyc = contiguous(dy), ic = contiguous(indices);
  Tensor dx = zeros(x_sizes, dy.dtype());
  dispatch_real(dy.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* d = dyc.data<scalar_t>();
      const int64_t* id = ic.data<int64_t>();
      scalar_t* out = dx.data<scalar_t>();
      parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, OP)), [&](int64_t b0, int64_t e0) {
        for (int64_t pl = b0; pl < e0; ++pl)
          for (int64_t o = 0; o < OP; ++o) {
            const int64_t i = id[pl * OP + o];
            if (i >= 0 && i < H * W) out[pl * H * W + i] += d[pl * OP + o];
          }
      });
    }
  });
  return dx;
}

namespace {
/// The window of output (oh, ow) clipped to the input and its divisor, as PyTorch's avg_pool2d.
struct AvgWindow {
  int64_t h0, h1, w0, w1, divisor;
};
AvgWindow avg_window(const PoolGeom& g, int64_t oh, int64_t ow, bool count_include_pad) {
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int64_t h1 = std::min(h0 + g.kh, g.H + g.ph), w1 = std::min(w0 + g.kw, g.W + g.pw);
  const int64_t pool = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, g.H), w1 = std::min(w1, g.W);
  const int64_t div = count_include_pad ? pool : (h1 - h0) * (w1 - w0);
  return {h0, h1, w0, w1, std::max<int64_t>(div, 1)};
}
}  // namespace

Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opts) {
  const char* op = "avg_pool2d";
  check_pool_input(op, x);
  const PoolGeom g = pool_geom(op, x.sizes(), opts, false);
  Tensor xc = contiguous(x);
  Tensor y = empty(pool_out_shape(x.sizes(), g.OH, g.OW), x.dtype());
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      scalar_t* out = y.data<scalar_t>();
      parallel_for(0, g.planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.OH * g.OW * g.kh * g.kw)),
                   [&](int64_t b0, int64_t e0) {
                     for (int64_t pl = b0; pl < e0; ++pl) {
                       const scalar_t* xp = in + pl * g.H * g.W;
                       for (int64_t oh = 0; oh < g.OH; ++oh)
                         for (int64_t ow = 0; ow < g.OW; ++ow) {
                           const AvgWindow a = avg_window(g, oh, ow, opts.count_include_pad);
                           scalar_t s = 0;
                           for (int64_t ih = a.h0; ih < a.h1; ++ih)
                             for (int64_t iw = a.w0; iw < a.w1; ++iw) s += xp[ih * g.W + iw];
                           out[(pl * g.OH + oh) * g.OW + ow] = s / static_cast<scalar_t>(a.divisor);
                         }
                     }
                   });
    }
  });
  if (optrace::active()) [[unlikely]]
    optrace::record("avg_pool2d", {x}, {y},
                    {{"kernel", std::vector<int64_t>{g.kh, g.kw}},
                     {"stride", std::vector<int64_t>{g.sh, g.sw}},
                     {"padding", std::vector<int64_t>{g.ph, g.pw}},
                     {"dilation", std::vector<int64_t>{opts.dilation[0], opts.dilation[1]}},
                     {"ceil_mode", opts.ceil_mode ? 1 : 0},
                     {"count_include_pad", opts.count_include_pad ? 1 : 0}});
  return y;
}

Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_sizes, const Pool2dOptions& opts) {
  const char* op = "avg_pool2d_backward";
  check_cpu(op, dy, "grad_output");
  check_float(op, dy, "grad_output");
  const PoolGeom g = pool_geom(op, x_sizes, opts, false);
  LOOM_CHECK(dy.sizes() == pool_out_shape(x_sizes, g.OH, g.OW), op, ": grad_output ", shape_str(dy.sizes()),
             " does not match the pooled shape of input ", shape_str(x_sizes));
  Tensor dyc = contiguous(dy);
  Tensor dx = zeros(x_sizes, dy.dtype());
  dispatch_real(dy.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* d = dyc.data<scalar_t>();
      scalar_t* out = dx.data<scalar_t>();
      parallel_for(0, g.planes, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t pl = b0; pl < e0; ++pl) {
          scalar_t* xp = out + pl * g.H * g.W;
          for (int64_t oh = 0; oh < g.OH; ++oh)
            for (int64_t ow = 0; ow < g.OW; ++ow) {
              const AvgWindow a = avg_window(g, oh, ow, opts.count_include_pad);
              const scalar_t v = d[(pl * g.OH + oh) * g.OW + ow] / static_cast<scalar_t>(a.divisor);
              for (int64_t ih = a.h0; ih < a.h1; ++ih)
                for (int64_t iw = a.w0; iw < a.w1; ++iw) xp[ih * g.W + iw] += v;
            }
        }
      });
    }
  });
  return dx;
}

Tensor adaptive_avg_pool2d(const Tensor& x, std::array<int64_t, 2> output_size) {
  const char* op = "adaptive_avg_pool2d";
  check_pool_input(op, x);
  LOOM_CHECK(x.dim() == 4 || x.dim() == 3, op, ": input must be (N, C, H, W) or (C, H, W), got ", shape_str(x.sizes()));
  const int64_t OH = output_size[0], OW = output_size[1];
  const int64_t H = x.size(-2), W = x.size(-1);
  LOOM_CHECK(OH >= 1 && OW >= 1 && H >= 1 && W >= 1, op, ": output size ", OH, "x", OW, " and input ",
             shape_str(x.sizes()), " must be non-empty");
  const int64_t planes = x.numel() / (H * W);
  Tensor xc = contiguous(x);
  Tensor y = empty(pool_out_shape(x.sizes(), OH, OW), x.dtype());
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      scalar_t* out = y.data<scalar_t>();
      parallel_for(0, planes, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t pl = b0; pl < e0; ++pl)
          for (int64_t oh = 0; oh < OH; ++oh) {
            const int64_t h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
            for (int64_t ow = 0; ow < OW; ++ow) {
              const int64_t w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
              scalar_t s = 0;
              for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) s += in[(pl * H + ih) * W + iw];
              out[(pl * OH + oh) * OW + ow] = s / static_cast<scalar_t>((h1 - h0) * (w1 - w0));
            }
          }
      });
    }
  });
  if (optrace::active()) [[unlikely]]
    optrace::record("adaptive_avg_pool2d", {x}, {y},
                    {{"output_size", std::vector<int64_t>{output_size[0], output_size[1]}}});
  return y;
}

Tensor adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_sizes) {
  const char* op = "adaptive_avg_pool2d_backward";
  check_cpu(op, dy, "grad_output");
  check_float(op, dy, "grad_output");
  LOOM_CHECK(static_cast<int64_t>(x_sizes.size()) == dy.dim() && x_sizes.size() >= 3, op, ": input shape ",
             shape_str(x_sizes), " does not match grad_output ", shape_str(dy.sizes()));
  const int64_t OH = dy.size(-2), OW = dy.size(-1);
  const int64_t H = x_sizes[x_sizes.size() - 2], W = x_sizes[x_sizes.size() - 1];
  const int64_t planes = dy.numel() / std::max<int64_t>(1, OH * OW);
  Tensor dyc = contiguous(dy);
  Tensor dx = zeros(x_sizes, dy.dtype());
  dispatch_real(dy.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* d = dyc.data<scalar_t>();
      scalar_t* out = dx.data<scalar_t>();
      parallel_for(0, planes, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t pl = b0; pl < e0; ++pl)
          for (int64_t oh = 0; oh < OH; ++oh) {
            const int64_t h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
            for (int64_t ow = 0; ow < OW; ++ow) {
              const int64_t w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
              const scalar_t v = d[(pl * OH + oh) * OW + ow] / static_cast<scalar_t>((h1 - h0) * (w1 - w0));
              for (int64_t ih = h0; ih < h1; ++ih)
                for (int64_t iw = w0; iw < w1; ++iw) out[(pl * H + ih) * W + iw] += v;
            }
          }
      });
    }
  });
  return dx;
}

// ============================================================================ batch norm

namespace {

/// (N, C, S) view of an (N, C, *) tensor's geometry.
struct BnGeom {
  int64_t N, C, S;
};
BnGeom bn_geom(const char* op, const Tensor& x) {
  LOOM_CHECK(x.dim() >= 2, op, ": input must be (N, C, *), got ", shape_str(x.sizes()));
  BnGeom g{x.size(0), x.size(1), 1};
  for (int64_t d = 2; d < x.dim(); ++d) g.S *= x.size(d);
  return g;
}

void check_channel_vec(const char* op, const Tensor& t, const char* what, int64_t C, const Tensor& x) {
  if (!t.defined()) return;
  check_cpu(op, t, what);
  LOOM_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", what, " has shape ", shape_str(t.sizes()), " but input ",
             shape_str(x.sizes()), " has ", C, " channels");
}

/// Values of a (C) tensor as doubles (empty if undefined).
std::vector<double> as_doubles(const Tensor& t) {
  if (!t.defined()) return {};
  return contiguous(t).to_vector<double>();
}

}  // namespace

Tensor batch_norm_stats(const Tensor& x) {
  const char* op = "batch_norm_stats";
  check_cpu(op, x, "input");
  check_float(op, x, "input");
  const BnGeom g = bn_geom(op, x);
  Tensor xc = contiguous(x);
  Tensor out = empty({2 * g.C + 1}, DType::f64);
  double* o = out.data<double>();
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      parallel_for(0, g.C, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t c = b0; c < e0; ++c) {
          double s = 0, ss = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* p = in + (n * g.C + c) * g.S;
            for (int64_t i = 0; i < g.S; ++i) {
              const double v = p[i];
              s += v;
              ss += v * v;
            }
          }
          o[c] = s;
          o[g.C + c] = ss;
        }
      });
    }
  });
  o[2 * g.C] = static_cast<double>(g.N * g.S);
  return out;
}

BatchNormMoments batch_norm_moments(const Tensor& packed, double eps, DType dtype) {
  const char* op = "batch_norm_moments";
  check_cpu(op, packed, "stats");
  LOOM_CHECK(packed.dtype() == DType::f64 && packed.dim() == 1 && packed.size(0) % 2 == 1, op,
             ": stats must be the packed f64 (2*C + 1) tensor of batch_norm_stats, got ", shape_str(packed.sizes()),
             " ", dtype_name(packed.dtype()));
  const int64_t C = packed.size(0) / 2;
  const std::vector<double> v = contiguous(packed).to_vector<double>();
  const double n = v[static_cast<size_t>(2 * C)];
  LOOM_CHECK(n > 0, op, ": no elements per channel to take statistics over");
  std::vector<double> mean(static_cast<size_t>(C)), invstd(static_cast<size_t>(C)), varu(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    const double m = v[static_cast<size_t>(c)] / n;
    const double var = std::max(0.0, v[static_cast<size_t>(C + c)] / n - m * m);
    mean[static_cast<size_t>(c)] = m;
    invstd[static_cast<size_t>(c)] = 1.0 / std::sqrt(var + eps);
    varu[static_cast<size_t>(c)] = n > 1 ? var * n / (n - 1) : std::numeric_limits<double>::quiet_NaN();
  }
  BatchNormMoments r;
  r.mean = to(from_vector(mean, {C}), dtype);
  r.invstd = to(from_vector(invstd, {C}), dtype);
  r.var_unbiased = from_vector(varu, {C});
  r.count = static_cast<int64_t>(n);
  return r;
}

void batch_norm_update_running_(const Tensor& running, const Tensor& value, double momentum) {
  const char* op = "batch_norm_update_running_";
  check_cpu(op, running, "running statistic");
  check_float(op, running, "running statistic");
  LOOM_CHECK(running.is_contiguous() && running.sizes() == value.sizes(), op, ": running statistic ",
             shape_str(running.sizes()), " must be contiguous and of the value's shape ", shape_str(value.sizes()));
  const std::vector<double> v = as_doubles(value);
  dispatch_real(running.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      scalar_t* r = running.data<scalar_t>();
      for (size_t i = 0; i < v.size(); ++i)
        r[i] = static_cast<scalar_t>((1.0 - momentum) * static_cast<double>(r[i]) + momentum * v[i]);
    }
  });
}

Tensor batch_norm_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& w, const Tensor& b) {
  const char* op = "batch_norm";
  check_cpu(op, x, "input");
  check_float(op, x, "input");
  const BnGeom g = bn_geom(op, x);
  check_channel_vec(op, mean, "mean", g.C, x);
  check_channel_vec(op, invstd, "invstd", g.C, x);
  check_channel_vec(op, w, "weight", g.C, x);
  check_channel_vec(op, b, "bias", g.C, x);
  const std::vector<double> m = as_doubles(mean), is = as_doubles(invstd), wv = as_doubles(w), bv = as_doubles(b);
  Tensor xc = contiguous(x);
  Tensor y = empty(x.sizes(), x.dtype());
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      scalar_t* out = y.data<scalar_t>();
      parallel_for(0, g.N * g.C, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, g.S)),
                   [&](int64_t b0, int64_t e0) {
                     for (int64_t r = b0; r < e0; ++r) {
                       const size_t c = static_cast<size_t>(r % g.C);
                       const double scale = is[c] * (wv.empty() ? 1.0 : wv[c]);
                       const double shift = (bv.empty() ? 0.0 : bv[c]) - m[c] * scale;
                       const scalar_t sc = static_cast<scalar_t>(scale), sh = static_cast<scalar_t>(shift);
                       const scalar_t* p = in + r * g.S;
                       scalar_t* q = out + r * g.S;
                       for (int64_t i = 0; i < g.S; ++i) q[i] = p[i] * sc + sh;
                     }
                   });
    }
  });
  return y;
}

Tensor batch_norm_backward_reduce(const Tensor& dy, const Tensor& x, const Tensor& mean) {
  const char* op = "batch_norm_backward";
  check_cpu(op, dy, "grad_output");
  check_cpu(op, x, "input");
  LOOM_CHECK(dy.sizes() == x.sizes(), op, ": grad_output ", shape_str(dy.sizes()), " and input ", shape_str(x.sizes()),
             " differ in shape");
  check_float(op, x, "input");
  check_same_dtype(op, x, "input", dy, "grad_output");
  const BnGeom g = bn_geom(op, x);
  check_channel_vec(op, mean, "mean", g.C, x);
  const std::vector<double> m = as_doubles(mean);
  Tensor xc = contiguous(x), dyc = contiguous(dy);
  Tensor out = empty({2 * g.C}, DType::f64);
  double* o = out.data<double>();
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      const scalar_t* d = dyc.data<scalar_t>();
      parallel_for(0, g.C, 1, [&](int64_t b0, int64_t e0) {
        for (int64_t c = b0; c < e0; ++c) {
          double s = 0, sx = 0;
          const double mc = m[static_cast<size_t>(c)];
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* p = in + (n * g.C + c) * g.S;
            const scalar_t* q = d + (n * g.C + c) * g.S;
            for (int64_t i = 0; i < g.S; ++i) {
              s += q[i];
              sx += q[i] * (p[i] - mc);
            }
          }
          o[c] = s;
          o[g.C + c] = sx;
        }
      });
    }
  });
  return out;
}

Tensor batch_norm_backward_elemt(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                 const Tensor& w, const Tensor& reduced, int64_t count) {
  const char* op = "batch_norm_backward";
  check_cpu(op, dy, "grad_output");
  check_cpu(op, x, "input");
  LOOM_CHECK(dy.sizes() == x.sizes(), op, ": grad_output ", shape_str(dy.sizes()), " and input ", shape_str(x.sizes()),
             " differ in shape");
  check_same_dtype(op, x, "input", dy, "grad_output");
  const BnGeom g = bn_geom(op, x);
  check_channel_vec(op, mean, "mean", g.C, x);
  check_channel_vec(op, invstd, "invstd", g.C, x);
  check_channel_vec(op, w, "weight", g.C, x);
  const std::vector<double> m = as_doubles(mean), is = as_doubles(invstd), wv = as_doubles(w);
  std::vector<double> red;
  if (reduced.defined()) {
    LOOM_CHECK(reduced.numel() == 2 * g.C && count > 0, op, ": reduced statistics ", shape_str(reduced.sizes()),
               " must be (2*C) = ", 2 * g.C, " with a positive count, got count ", count);
    red = as_doubles(reduced);
  }
  Tensor xc = contiguous(x), dyc = contiguous(dy);
  Tensor dx = empty(x.sizes(), x.dtype());
  dispatch_real(x.dtype(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    {
      const scalar_t* in = xc.data<scalar_t>();
      const scalar_t* d = dyc.data<scalar_t>();
      scalar_t* out = dx.data<scalar_t>();
      parallel_for(0, g.N * g.C, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, g.S)),
                   [&](int64_t b0, int64_t e0) {
                     for (int64_t r = b0; r < e0; ++r) {
                       const size_t c = static_cast<size_t>(r % g.C);
                       const double gain = is[c] * (wv.empty() ? 1.0 : wv[c]);
                       const scalar_t* p = in + r * g.S;
                       const scalar_t* q = d + r * g.S;
                       scalar_t* o = out + r * g.S;
                       if (red.empty()) {
                         const scalar_t k = static_cast<scalar_t>(gain);
                         for (int64_t i = 0; i < g.S; ++i) o[i] = q[i] * k;
                       } else {
                         const double mdy = red[c] / static_cast<double>(count);
                         const double proj =
                             red[static_cast<size_t>(g.C) + c] / static_cast<double>(count) * is[c] * is[c];
                         // dx = (dy - mdy - (x - mean) * proj) * gain
                         const scalar_t k = static_cast<scalar_t>(gain), a = static_cast<scalar_t>(proj * gain);
                         const scalar_t c0 = static_cast<scalar_t>((-mdy + m[c] * proj) * gain);
                         for (int64_t i = 0; i < g.S; ++i) o[i] = q[i] * k - p[i] * a + c0;
                       }
                     }
                   });
    }
  });
  return dx;
}

BatchNormResult batch_norm(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& running_mean,
                           const Tensor& running_var, bool training, double momentum, double eps) {
  const char* op = "batch_norm";
  check_cpu(op, x, "input");
  check_float(op, x, "input");
  const BnGeom g = bn_geom(op, x);
  check_channel_vec(op, w, "weight", g.C, x);
  check_channel_vec(op, b, "bias", g.C, x);
  check_channel_vec(op, running_mean, "running_mean", g.C, x);
  check_channel_vec(op, running_var, "running_var", g.C, x);
  LOOM_CHECK(running_mean.defined() == running_var.defined(), op,
             ": running_mean and running_var must both be given or both be undefined");
  BatchNormResult r;
  if (training) {
    LOOM_CHECK(g.N * g.S > 1, op, ": expected more than 1 value per channel when training, got input of shape ",
               shape_str(x.sizes()));
    BatchNormMoments mo = batch_norm_moments(batch_norm_stats(x), eps, x.dtype());
    if (running_mean.defined()) {
      batch_norm_update_running_(running_mean, mo.mean, momentum);
      batch_norm_update_running_(running_var, mo.var_unbiased, momentum);
    }
    r.mean = mo.mean;
    r.invstd = mo.invstd;
  } else {
    LOOM_CHECK(running_mean.defined(), op, ": eval mode needs running_mean and running_var (input ",
               shape_str(x.sizes()), ")");
    r.mean = to(contiguous(running_mean), x.dtype());
    r.invstd = to(rsqrt(add(to(running_var, DType::f64), eps)), x.dtype());
  }
  r.y = batch_norm_apply(x, r.mean, r.invstd, w, b);
  if (optrace::active()) [[unlikely]]
    optrace::record("batch_norm", {x, w, b, running_mean, running_var}, {r.y},
                    {{"training", training ? 1 : 0}, {"eps", eps}});
  return r;
}

NormGrads batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                              const Tensor& invstd, bool training, bool has_bias) {
  Tensor red = batch_norm_backward_reduce(dy, x, mean);
  const BnGeom g = bn_geom("batch_norm_backward", x);
  NormGrads out;
  out.dx = batch_norm_backward_elemt(dy, x, mean, invstd, w, training ? red : Tensor(), g.N * g.S);
  const std::vector<double> rv = red.to_vector<double>(), is = as_doubles(invstd);
  if (w.defined()) {
    std::vector<double> dw(static_cast<size_t>(g.C));
    for (size_t c = 0; c < dw.size(); ++c) dw[c] = rv[static_cast<size_t>(g.C) + c] * is[c];
    out.dw = to(from_vector(dw, {g.C}), w.dtype());
  }
  if (has_bias) {
    std::vector<double> db(rv.begin(), rv.begin() + g.C);
    out.db = to(from_vector(db, {g.C}), x.dtype());
  }
  return out;
}

}  // namespace loom::ops

namespace loom::detail {

const ConvCudaKernels& conv_cuda_kernels() {
  static const ConvCudaKernels table = [] {
    ConvCudaKernels k;
#if LOOM_WITH_CUDA
    register_conv_cudnn(k);  // also what links tensor/cuda/conv_cudnn.cu's object from the static library
#endif
    return k;
  }();
  return table;
}

}  // namespace loom::detail
