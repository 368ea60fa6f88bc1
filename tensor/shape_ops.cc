// Selection and joining ops: where, masked_fill, causal_mask, cat, stack,
// index_select. Results are new contiguous tensors. CUDA tensors go to the
// kernel table's where and index_select entries; cat and stack copy into views.
#include <cstring>

#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"

namespace loom::ops {

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_same_device("where", cond, a);
  check_same_device("where", a, b);
  const detail::CudaKernels* ck = detail::cuda_kernels_for("where", a);
  const Shape shape = broadcast_shapes(broadcast_shapes(cond.sizes(), a.sizes(), "where"), b.sizes(), "where");
  const DType ct = promote_types(a.dtype(), b.dtype());
  Tensor c = expand(cond.dtype() == DType::u8 ? cond : ne(cond, zeros({}, cond.dtype(), cond.device())), shape);
  Tensor x = expand(to(a, ct), shape), y = expand(to(b, ct), shape);
  Tensor out = empty(shape, ct, a.device());
  if (ck) {
    detail::need(ck->where, "where", a)(out, c, x, y);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("where", {cond, a, b}, {out});
      return out;
    }
  }
  LOOM_DISPATCH_ALL(ct, "where", [&] {
    using A = acc_t<scalar_t>;
    elementwise_kernel<scalar_t, uint8_t, scalar_t, scalar_t>(out, {c, x, y},
                                                              [](uint8_t m, A u, A v) { return m ? u : v; });
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("where", {cond, a, b}, {out});
    return out;
  }
}

Tensor masked_fill(const Tensor& t, const Tensor& mask, double value) {
  check_same_device("masked_fill", t, mask);
  const detail::CudaKernels* ck = detail::cuda_kernels_for("masked_fill", t);
  const Shape shape = broadcast_shapes(t.sizes(), mask.sizes(), "masked_fill");
  LOOM_CHECK(shape == t.sizes(), "masked_fill: mask of shape ", shape_str(mask.sizes()),
             " does not broadcast to the input shape ", shape_str(t.sizes()));
  Tensor m = expand(mask.dtype() == DType::u8 ? mask : ne(mask, zeros({}, mask.dtype(), mask.device())), shape);
  Tensor out = empty(shape, t.dtype(), t.device());
  if (ck) {
    // value converted to t's dtype as the cpu loop converts it (fill_ writes the same bits)
    Tensor v = expand(full({}, value, t.dtype(), t.device()), shape);
    detail::need(ck->where, "masked_fill", t)(out, m, v, t);
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("masked_fill", {t, mask}, {out}, {{"value", value}});
      return out;
    }
  }
  LOOM_DISPATCH_ALL(t.dtype(), "masked_fill", [&] {
    using A = acc_t<scalar_t>;
    const A v = static_cast<A>(value);
    elementwise_kernel<scalar_t, scalar_t, uint8_t>(out, {t, m}, [v](A u, uint8_t k) { return k ? v : u; });
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("masked_fill", {t, mask}, {out}, {{"value", value}});
    return out;
  }
}

Tensor causal_mask(int64_t T, Device device) {
  LOOM_CHECK(T >= 0, "causal_mask: T must be non-negative, got ", T);
  if (!device.is_cpu()) {  // built on the device: position j > i, from one arange of T
    Tensor r = arange(T, DType::i64, device);
    {
      Tensor out = gt(view(r, {1, T}), view(r, {T, 1}));
      if (optrace::active()) [[unlikely]]
        optrace::record("causal_mask", std::vector<Tensor>{}, {out}, {{"T", T}});
      return out;
    }
  }
  Tensor m = empty({T, T}, DType::u8, kCPU);
  uint8_t* p = m.data<uint8_t>();
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) p[i * T + j] = j > i ? 1 : 0;
  {
    Tensor out = to(m, device);
    if (optrace::active()) [[unlikely]]
      optrace::record("causal_mask", std::vector<Tensor>{}, {out}, {{"T", T}});
    return out;
  }
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  LOOM_CHECK(!tensors.empty(), "cat: expected at least one tensor");
  const Tensor& first = tensors[0];
  LOOM_CHECK(first.dim() > 0, "cat: cannot concatenate 0-dim tensors (unsqueeze them or use stack)");
  const int64_t d = wrap_dim(dim, first.dim(), "cat");
  Shape out_shape = first.sizes();
  out_shape[d] = 0;
  DType dt = first.dtype();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& t = tensors[k];
    check_same_device("cat", first, t);
    detail::cuda_kernels_for("cat", t);  // a CUDA tensor without a device throws here, naming cat
    LOOM_CHECK(t.dim() == first.dim(), "cat: tensor ", k, " has shape ", shape_str(t.sizes()),
               " but tensor 0 has shape ", shape_str(first.sizes()), " (different number of dims)");
    for (int64_t i = 0; i < first.dim(); ++i)
      LOOM_CHECK(i == d || t.sizes()[i] == first.sizes()[i], "cat: tensor ", k, " has shape ", shape_str(t.sizes()),
                 " but tensor 0 has shape ", shape_str(first.sizes()), "; sizes must match except in dim ", d);
    out_shape[d] += t.sizes()[d];
    dt = promote_types(dt, t.dtype());
  }
  Tensor out = empty(out_shape, dt, first.device());
  int64_t start = 0;
  for (const Tensor& t : tensors) {
    const int64_t n = t.sizes()[d];
    if (n > 0) copy_(narrow(out, d, start, n), t);
    start += n;
  }
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("cat", tensors, {out}, {{"dim", d}});
    return out;
  }
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  LOOM_CHECK(!tensors.empty(), "stack: expected at least one tensor");
  const int64_t d = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  parts.reserve(tensors.size());
  for (size_t k = 0; k < tensors.size(); ++k) {
    LOOM_CHECK(tensors[k].sizes() == tensors[0].sizes(), "stack: tensor ", k, " has shape ",
               shape_str(tensors[k].sizes()), " but tensor 0 has shape ", shape_str(tensors[0].sizes()),
               "; all must have the same shape");
    parts.push_back(unsqueeze(tensors[k], d));
  }
  return cat(parts, d);
}

Tensor index_select(const Tensor& t, int64_t dim, const Tensor& index) {
  check_same_device("index_select", t, index);
  const detail::CudaKernels* ck = detail::cuda_kernels_for("index_select", t);
  LOOM_CHECK(index.dim() <= 1, "index_select: index must be 1-D, got shape ", shape_str(index.sizes()));
  LOOM_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32,
             "index_select: index must be int64 or int32, got ", dtype_name(index.dtype()));
  const int64_t d = wrap_dim(dim, t.dim(), "index_select");
  const int64_t size = t.dim() == 0 ? 1 : t.sizes()[d];
  std::vector<int64_t> idx = index.to_vector<int64_t>();
  for (int64_t& i : idx) {
    LOOM_CHECK(i >= -size && i < size, "index_select: index ", i, " is out of range for dim ", d, " of size ", size,
               " (shape ", shape_str(t.sizes()), ")");
    if (i < 0) i += size;
  }
  if (t.dim() == 0) {
    {
      Tensor out = clone(t);
      if (optrace::active()) [[unlikely]]
        optrace::record("index_select", {t, index}, {out}, {{"dim", d}});
      return out;
    }
  }
  Shape out_shape = t.sizes();
  out_shape[d] = static_cast<int64_t>(idx.size());
  Tensor out = empty(out_shape, t.dtype(), t.device());
  if (ck) {  // the indices were checked on the host above; the kernel wraps negative ones
    detail::need(ck->index_select, "index_select", t)(out, t, d, to(index, DType::i64));
    {
      if (optrace::active()) [[unlikely]]
        optrace::record("index_select", {t, index}, {out}, {{"dim", d}});
      return out;
    }
  }
  Tensor src = contiguous(t);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= t.sizes()[i];
  for (int64_t i = d + 1; i < t.dim(); ++i) inner *= t.sizes()[i];
  const int64_t n = static_cast<int64_t>(idx.size());
  const size_t row_bytes = static_cast<size_t>(inner) * t.element_size();
  const char* s = static_cast<const char*>(src.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(inner, 1));
  parallel_for(0, outer * n, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t oi = r / n, k = r % n;
      std::memcpy(o + static_cast<size_t>(r) * row_bytes, s + static_cast<size_t>(oi * size + idx[k]) * row_bytes,
                  row_bytes);
    }
  });
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("index_select", {t, index}, {out}, {{"dim", d}});
    return out;
  }
}

}  // namespace loom::ops
