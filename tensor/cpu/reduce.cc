// Reductions: sum, mean, var, max/argmax, sum_to, norm. Sums accumulate in
// double for floating inputs (so a 1e6-element f32 sum is exact to f32) and in
// i64 for integers; on the cpu the reduction runs as a chain of (outer, reduced,
// inner) passes over a contiguous input, each pass a vectorisable loop. CUDA
// tensors go to the kernel table as one (O, R, I) reduction: the input as it
// lies when the reduced dims are adjacent, else with them moved last.
#include <cmath>
#include <limits>
#include <type_traits>

#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"

namespace loom::ops {
namespace {

/// Accumulator type of a sum: i64 for integers, double for floating types.
template <typename T>
using sum_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, double>;

template <typename Acc, typename T>
inline Acc to_acc(T v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    return static_cast<Acc>(static_cast<float>(v));
  } else {
    return static_cast<Acc>(v);
  }
}

template <typename A>
inline bool is_nan(A v) {
  if constexpr (std::is_floating_point_v<A>) {
    return std::isnan(v);
  } else {
    return false;
  }
}

/// Which dims are reduced, and the result shapes with and without kept dims.
struct ReducePlan {
  std::vector<bool> reduced;
  Shape out_sizes;    // keepdim = false
  Shape keep_sizes;   // keepdim = true
  int64_t count = 1;  // input elements per output element
};

ReducePlan plan_reduce(const Tensor& t, const std::vector<int64_t>& dims, const char* op) {
  const int64_t nd = t.dim();
  ReducePlan p;
  p.reduced.assign(static_cast<size_t>(nd), dims.empty());
  for (int64_t d : dims) {
    int64_t w = wrap_dim(d, nd, op);
    if (nd == 0) continue;  // dim 0 / -1 of a 0-dim tensor reduces nothing
    LOOM_CHECK(!p.reduced[w], op, ": dim ", d, " appears more than once in the reduced dims of a tensor of shape ",
               shape_str(t.sizes()));
    p.reduced[w] = true;
  }
  for (int64_t i = 0; i < nd; ++i) {
    if (p.reduced[i]) {
      p.count *= t.size(i);
      p.keep_sizes.push_back(1);
    } else {
      p.out_sizes.push_back(t.size(i));
      p.keep_sizes.push_back(t.size(i));
    }
  }
  return p;
}

/// out[o, i] = sum_r in[o, r, i] for a dense (O, R, I) block.
template <typename In, typename Acc>
void reduce_ori(const In* in, Acc* out, int64_t O, int64_t R, int64_t I) {
  if (I == 1) {
    auto row_sum = [&](const In* p, int64_t n) {
      Acc a[8] = {};
      int64_t r = 0;
      for (; r + 8 <= n; r += 8)
        for (int k = 0; k < 8; ++k) a[k] += to_acc<Acc>(p[r + k]);
      for (; r < n; ++r) a[0] += to_acc<Acc>(p[r]);
      return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    };
    if (O >= 2 * num_threads() || R < 2 * kElementwiseGrain) {
      parallel_for(0, O, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(R, 1)), [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; ++o) out[o] = row_sum(in + o * R, R);
      });
    } else {  // few long rows: split each row across threads
      const int64_t chunks = std::min<int64_t>(num_threads(), R / kElementwiseGrain);
      const int64_t len = (R + chunks - 1) / chunks;
      std::vector<Acc> partial(static_cast<size_t>(chunks));
      for (int64_t o = 0; o < O; ++o) {
        parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
          for (int64_t c = b; c < e; ++c) {
            const int64_t s = c * len;
            partial[c] = row_sum(in + o * R + s, std::max<int64_t>(0, std::min(len, R - s)));
          }
        });
        Acc total = 0;
        for (Acc v : partial) total += v;
        out[o] = total;
      }
    }
    return;
  }
  // Column sums: each task owns a block of up to kBlock outputs of one o.
  constexpr int64_t kBlock = 512;
  const int64_t nblk = (I + kBlock - 1) / kBlock;
  if (O * nblk < num_threads() && R >= 2 * num_threads() && O * R * I >= 2 * kElementwiseGrain) {
    // Too few column blocks to share out (a bias gradient (B*T, C) -> (C)): split the
    // reduced rows instead, one partial (O, I) per chunk, then add the partials.
    const int64_t chunks = std::min<int64_t>(num_threads(), R);
    const int64_t len = (R + chunks - 1) / chunks;
    std::vector<Acc> part(static_cast<size_t>(chunks * O * I), Acc(0));
    parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const int64_t r0 = std::min(R, c * len), r1 = std::min(R, (c + 1) * len);
        Acc* acc = part.data() + c * O * I;
        for (int64_t o = 0; o < O; ++o)
          for (int64_t r = r0; r < r1; ++r) {
            const In* row = in + (o * R + r) * I;
            Acc* dst = acc + o * I;
            for (int64_t i = 0; i < I; ++i) dst[i] += to_acc<Acc>(row[i]);
          }
      }
    });
    for (int64_t j = 0; j < O * I; ++j) {
      Acc s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += part[c * O * I + j];
      out[j] = s;
    }
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, R * std::min(I, kBlock)));
  parallel_for(0, O * nblk, grain, [&](int64_t b, int64_t e) {
    Acc acc[kBlock];
    for (int64_t task = b; task < e; ++task) {
      const int64_t o = task / nblk, i0 = (task % nblk) * kBlock;
      const int64_t n = std::min(kBlock, I - i0);
      for (int64_t i = 0; i < n; ++i) acc[i] = 0;
      const In* base = in + o * R * I + i0;
      for (int64_t r = 0; r < R; ++r) {
        const In* row = base + r * I;
        for (int64_t i = 0; i < n; ++i) acc[i] += to_acc<Acc>(row[i]);
      }
      Acc* dst = out + o * I + i0;
      for (int64_t i = 0; i < n; ++i) dst[i] = acc[i];
    }
  });
}

/// Sums contiguous tensor c over the planned dims into an accumulator buffer
/// laid out as the (row-major) result.
template <typename T>
std::vector<sum_acc_t<T>> sum_to_acc(const Tensor& c, const std::vector<bool>& reduced) {
  using Acc = sum_acc_t<T>;
  // Coalesce into groups of (size, reduced), skipping size-1 dims.
  std::vector<std::pair<int64_t, bool>> groups;
  for (int64_t d = 0; d < c.dim(); ++d) {
    const int64_t s = c.size(d);
    if (s == 1) continue;
    if (!groups.empty() && groups.back().second == reduced[d]) {
      groups.back().first *= s;
    } else {
      groups.emplace_back(s, reduced[d]);
    }
  }
  const T* src = c.data<T>();
  std::vector<Acc> cur, next;
  bool first = true;
  if (c.numel() == 0) {
    int64_t n_out = 1;
    for (int64_t d = 0; d < c.dim(); ++d)
      if (!reduced[d]) n_out *= c.size(d);
    return std::vector<Acc>(static_cast<size_t>(n_out), Acc(0));
  }
  while (true) {
    int64_t j = -1;
    for (int64_t g = static_cast<int64_t>(groups.size()) - 1; g >= 0; --g)
      if (groups[g].second) {
        j = g;
        break;
      }
    if (j < 0) break;
    int64_t O = 1, I = 1;
    for (int64_t g = 0; g < j; ++g) O *= groups[g].first;
    for (size_t g = j + 1; g < groups.size(); ++g) I *= groups[g].first;
    const int64_t R = groups[j].first;
    next.assign(static_cast<size_t>(O * I), Acc(0));
    if (first) {
      reduce_ori<T, Acc>(src, next.data(), O, R, I);
    } else {
      reduce_ori<Acc, Acc>(cur.data(), next.data(), O, R, I);
    }
    first = false;
    cur.swap(next);
    groups.erase(groups.begin() + j);
    if (j > 0 && j < static_cast<int64_t>(groups.size())) {  // merge the two kept neighbours
      groups[j - 1].first *= groups[j].first;
      groups.erase(groups.begin() + j);
    }
  }
  if (first) {  // nothing reduced: plain conversion
    cur.resize(static_cast<size_t>(c.numel()));
    const int64_t n = c.numel();
    parallel_for(0, n, kElementwiseGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) cur[i] = to_acc<Acc>(src[i]);
    });
  }
  return cur;
}

template <typename Out, typename Acc>
void store_acc(const std::vector<Acc>& acc, const Tensor& out, double scale) {
  Out* dst = out.data<Out>();
  const int64_t n = out.numel();
  parallel_for(0, n, kElementwiseGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if constexpr (std::is_integral_v<Out>) {
        dst[i] = static_cast<Out>(acc[i]);
      } else {
        dst[i] = static_cast<Out>(static_cast<acc_t<Out>>(static_cast<double>(acc[i]) * scale));
      }
    }
  });
}

/// A view of t with the given dims moved to the end (in order), others first.
Tensor move_dims_last(const Tensor& t, const std::vector<bool>& last) {
  Shape sz, st;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t d = 0; d < t.dim(); ++d)
      if (last[d] == (pass == 1)) {
        sz.push_back(t.size(d));
        st.push_back(t.stride(d));
      }
  return Tensor(t.storage(), sz, st, t.storage_offset(), t.dtype());
}

/// A contiguous (O, R, I) form of t for reducing the dims marked in `reduced`:
/// t itself (made contiguous) when the reduced dims (size-1 dims aside) are
/// adjacent, else a copy with them moved last (I = 1).
struct OriInput {
  Tensor in;
  int64_t O = 1, R = 1, I = 1;
};
OriInput ori_input(const Tensor& t, const std::vector<bool>& reduced) {
  int64_t first = -1, last = -1, groups = 0;
  bool prev = false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 1) continue;
    if (reduced[d]) {
      if (!prev) ++groups;
      if (first < 0) first = d;
      last = d;
    }
    prev = reduced[d];
  }
  OriInput r;
  if (groups <= 1) {
    r.in = contiguous(t);
    for (int64_t d = 0; d < t.dim(); ++d) {
      if (first >= 0 && d >= first && d <= last) {
        r.R *= t.size(d);
      } else if (first < 0 || d < first) {
        r.O *= t.size(d);
      } else {
        r.I *= t.size(d);
      }
    }
    return r;
  }
  r.in = contiguous(move_dims_last(t, reduced));
  for (int64_t d = 0; d < t.dim(); ++d) (reduced[d] ? r.R : r.O) *= t.size(d);
  return r;
}

Tensor sum_impl(const Tensor& t, const std::vector<int64_t>& dims, bool keepdim, bool mean, const char* op) {
  profiler::Scope scope(op);
  const detail::CudaKernels* ck = detail::cuda_kernels_for(op, t);
  ReducePlan p = plan_reduce(t, dims, op);
  const DType out_dtype = is_floating(t.dtype()) ? t.dtype() : DType::i64;
  Tensor out = empty(keepdim ? p.keep_sizes : p.out_sizes, out_dtype, t.device());
  if (ck) {
    const OriInput x = ori_input(t, p.reduced);
    const double scale = mean ? 1.0 / static_cast<double>(p.count) : 1.0;
    detail::need(ck->reduce, op, t)(detail::ReduceOp::kSum, out, x.in, x.O, x.R, x.I, scale);
    return out;
  }
  Tensor c = contiguous(t);
  LOOM_DISPATCH_ALL(t.dtype(), op, [&] {
    auto acc = sum_to_acc<scalar_t>(c, p.reduced);
    const double scale = mean ? 1.0 / static_cast<double>(p.count) : 1.0;
    if constexpr (std::is_integral_v<scalar_t>) {
      store_acc<int64_t>(acc, out, scale);
    } else {
      store_acc<scalar_t>(acc, out, scale);
    }
  });
  return out;
}

}  // namespace

Tensor sum(const Tensor& t, const std::vector<int64_t>& dims, bool keepdim) {
  {
    Tensor out = sum_impl(t, dims, keepdim, false, "sum");
    if (optrace::active()) [[unlikely]]
      optrace::record("sum", {t}, {out}, {{"dims", dims}, {"keepdim", keepdim ? 1 : 0}});
    return out;
  }
}

Tensor mean(const Tensor& t, const std::vector<int64_t>& dims, bool keepdim) {
  LOOM_CHECK(is_floating(t.dtype()), "mean: input of shape ", shape_str(t.sizes()), " has dtype ",
             dtype_name(t.dtype()), "; mean needs a floating dtype (convert with to() first)");
  {
    Tensor out = sum_impl(t, dims, keepdim, true, "mean");
    if (optrace::active()) [[unlikely]]
      optrace::record("mean", {t}, {out}, {{"dims", dims}, {"keepdim", keepdim ? 1 : 0}});
    return out;
  }
}

Tensor var(const Tensor& t, const std::vector<int64_t>& dims, int64_t correction, bool keepdim) {
  const char* op = "var";
  const detail::CudaKernels* ck = detail::cuda_kernels_for(op, t);
  LOOM_CHECK(is_floating(t.dtype()), "var: input of shape ", shape_str(t.sizes()), " has dtype ", dtype_name(t.dtype()),
             "; var needs a floating dtype");
  ReducePlan p = plan_reduce(t, dims, op);
  if (ck) {
    Tensor out = empty(keepdim ? p.keep_sizes : p.out_sizes, t.dtype(), t.device());
    const OriInput x = ori_input(t, p.reduced);
    detail::need(ck->var, op, t)(out, x.in, x.O, x.R, x.I, correction);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("var", {t}, {out}, {{"dims", dims}, {"correction", correction}, {"keepdim", keepdim ? 1 : 0}});
      return out;
    }
  }
  Tensor rows = contiguous(move_dims_last(t, p.reduced));  // (outputs, count)
  Tensor out = empty(keepdim ? p.keep_sizes : p.out_sizes, t.dtype());
  const int64_t R = p.count, O = out.numel();
  const double denom = static_cast<double>(std::max<int64_t>(0, R - correction));
  LOOM_DISPATCH_FLOATING(t.dtype(), op, [&] {
    const scalar_t* x = rows.data<scalar_t>();
    scalar_t* y = out.data<scalar_t>();
    parallel_for(0, O, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(R, 1)), [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        const scalar_t* r = x + o * R;
        double s = 0;
        for (int64_t i = 0; i < R; ++i) s += to_acc<double>(r[i]);
        const double m = s / static_cast<double>(R);
        double ss = 0;
        for (int64_t i = 0; i < R; ++i) {
          const double d = to_acc<double>(r[i]) - m;
          ss += d * d;
        }
        y[o] = static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(ss / denom));
      }
    });
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("var", {t}, {out}, {{"dims", dims}, {"correction", correction}, {"keepdim", keepdim ? 1 : 0}});
    return out;
  }
}

Tensor max(const Tensor& t) {
  profiler::Scope scope("max");
  const detail::CudaKernels* ck = detail::cuda_kernels_for("max", t);
  LOOM_CHECK(t.numel() > 0, "max: input of shape ", shape_str(t.sizes()),
             " is empty; the max of no elements is undefined (use max(t, dim) on a non-empty dim)");
  Tensor c = contiguous(t);
  Tensor out = empty({}, t.dtype(), t.device());
  if (ck) {
    detail::need(ck->reduce, "max", t)(detail::ReduceOp::kMax, out, c, 1, c.numel(), 1, 1.0);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("max", {t}, {out});
      return out;
    }
  }
  LOOM_DISPATCH_ALL(t.dtype(), "max", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = c.data<scalar_t>();
    const int64_t n = c.numel();
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(num_threads(), n / kElementwiseGrain));
    const int64_t len = (n + chunks - 1) / chunks;
    std::vector<A> part(static_cast<size_t>(chunks), static_cast<A>(x[0]));
    parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        A m = static_cast<A>(x[std::min(ch * len, n - 1)]);
        for (int64_t i = ch * len; i < std::min(n, (ch + 1) * len); ++i) {
          const A v = static_cast<A>(x[i]);
          if (v > m || is_nan(v)) m = v;  // NaN propagates
          if (is_nan(m)) break;
        }
        part[ch] = m;
      }
    });
    A m = part[0];
    for (A v : part)
      if (v > m || is_nan(v)) m = v;
    for (A v : part)
      if (is_nan(v)) m = v;
    *out.data<scalar_t>() = static_cast<scalar_t>(m);
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("max", {t}, {out});
    return out;
  }
}

std::pair<Tensor, Tensor> detail_max_dim(const Tensor& t, int64_t dim, bool keepdim);

std::pair<Tensor, Tensor> max(const Tensor& t, int64_t dim, bool keepdim) {
  profiler::Scope scope("max_dim");
  auto res = detail_max_dim(t, dim, keepdim);
  if (optrace::active()) [[unlikely]]
    optrace::record("max_dim", {t}, {res.first, res.second},
                    {{"dim", wrap_dim(dim, t.dim(), "max")}, {"keepdim", keepdim ? 1 : 0}});
  return res;
}

std::pair<Tensor, Tensor> detail_max_dim(const Tensor& t, int64_t dim, bool keepdim) {
  const char* op = "max";
  const detail::CudaKernels* ck = detail::cuda_kernels_for(op, t);
  ReducePlan p = plan_reduce(t, {dim}, op);
  const int64_t R = p.count;
  LOOM_CHECK(R > 0, "max: dim ", dim, " of the input of shape ", shape_str(t.sizes()),
             " is empty; the max of no elements is undefined");
  if (ck) {
    Tensor values = empty(keepdim ? p.keep_sizes : p.out_sizes, t.dtype(), t.device());
    Tensor indices = empty(keepdim ? p.keep_sizes : p.out_sizes, DType::i64, t.device());
    const OriInput x = ori_input(t, p.reduced);
    detail::need(ck->max_dim, op, t)(values, indices, x.in, x.O, x.R, x.I);
    return {values, indices};
  }
  Tensor rows = contiguous(move_dims_last(t, p.reduced));
  Tensor values = empty(keepdim ? p.keep_sizes : p.out_sizes, t.dtype());
  Tensor indices = empty(keepdim ? p.keep_sizes : p.out_sizes, DType::i64);
  const int64_t O = values.numel();
  LOOM_DISPATCH_ALL(t.dtype(), op, [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* x = rows.data<scalar_t>();
    scalar_t* v = values.data<scalar_t>();
    int64_t* ix = indices.data<int64_t>();
    parallel_for(0, O, std::max<int64_t>(1, kElementwiseGrain / R), [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        const scalar_t* r = x + o * R;
        A m = static_cast<A>(r[0]);
        int64_t mi = 0;
        if (!is_nan(m)) {
          for (int64_t i = 1; i < R; ++i) {
            const A a = static_cast<A>(r[i]);
            if (a > m || is_nan(a)) {  // first maximum; the first NaN wins, as in PyTorch
              m = a;
              mi = i;
              if (is_nan(a)) break;
            }
          }
        }
        v[o] = r[mi];
        ix[o] = mi;
      }
    });
  });
  return {values, indices};
}

Tensor argmax(const Tensor& t, int64_t dim, bool keepdim) { return max(t, dim, keepdim).second; }

Tensor sum_to(const Tensor& t, const Shape& sizes) {
  profiler::Scope scope("sum_to");
  detail::cuda_kernels_for("sum_to", t);  // a CUDA tensor without a device throws here, naming sum_to
  const int64_t nd = t.dim(), ns = static_cast<int64_t>(sizes.size());
  LOOM_CHECK(ns <= nd, "sum_to: cannot sum a tensor of shape ", shape_str(t.sizes()), " to the larger rank shape ",
             shape_str(sizes));
  if (t.sizes() == sizes) return t;
  std::vector<int64_t> dims;
  const int64_t lead = nd - ns;
  for (int64_t d = 0; d < lead; ++d) dims.push_back(d);
  for (int64_t i = 0; i < ns; ++i) {
    const int64_t ts = t.size(lead + i);
    LOOM_CHECK(sizes[i] == ts || sizes[i] == 1, "sum_to: shape ", shape_str(t.sizes()), " does not broadcast from ",
               shape_str(sizes), " (dim ", i, " is ", sizes[i], ", expected ", ts, " or 1)");
    if (sizes[i] == 1 && ts != 1) dims.push_back(lead + i);
  }
  Tensor s = dims.empty() ? clone(t) : sum(t, dims, /*keepdim=*/true);
  // s is contiguous with numel == numel(sizes); reinterpret it with the target shape.
  return Tensor(s.storage(), sizes, contiguous_strides(sizes), s.storage_offset(), s.dtype());
}

Tensor norm(const Tensor& t) {
  const detail::CudaKernels* ck = detail::cuda_kernels_for("norm", t);
  Tensor c = contiguous(t);
  if (ck) {
    Tensor out = empty({}, DType::f32, t.device());
    detail::need(ck->norm, "norm", t)(out, c);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("norm", {t}, {out});
      return out;
    }
  }
  const int64_t n = c.numel();
  double total = 0;
  LOOM_DISPATCH_ALL(t.dtype(), "norm", [&] {
    const scalar_t* x = c.data<scalar_t>();
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(num_threads(), n / kElementwiseGrain));
    const int64_t len = (n + chunks - 1) / chunks;
    std::vector<double> part(static_cast<size_t>(chunks), 0.0);
    parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        double a[4] = {0, 0, 0, 0};
        const int64_t lo = ch * len, hi = std::min(n, lo + len);
        int64_t i = lo;
        for (; i + 4 <= hi; i += 4)
          for (int k = 0; k < 4; ++k) {
            const double v = to_acc<double>(x[i + k]);
            a[k] += v * v;
          }
        for (; i < hi; ++i) {
          const double v = to_acc<double>(x[i]);
          a[0] += v * v;
        }
        part[ch] = (a[0] + a[1]) + (a[2] + a[3]);
      }
    });
    for (double v : part) total += v;
  });
  Tensor out = empty({}, DType::f32);
  *out.data<float>() = static_cast<float>(std::sqrt(total));
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("norm", {t}, {out});
    return out;
  }
}

}  // namespace loom::ops
