// Views: ops that return a tensor sharing its input's storage with new sizes,
// strides or offset. None of them copies (reshape copies only when it must).
#include <algorithm>
#include <optional>

#include "tensor/op_trace.h"
#include "tensor/ops.h"

namespace loom::ops {
namespace {

Tensor make_view(const Tensor& t, Shape sizes, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.storage();
  impl->sizes = std::move(sizes);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = t.dtype();
  // A view shares its base's version counter, so an in-place write through
  // either is seen by autograd checks on the other.
  impl->version = t.impl().version;
  return Tensor(std::move(impl));
}

/// Replaces one -1 in sizes by the size that makes numel match; throws naming op.
Shape infer_size(const Shape& sizes, int64_t numel, const char* op, const Shape& from) {
  Shape out = sizes;
  int64_t known = 1;
  int64_t infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      LOOM_CHECK(infer < 0, op, ": only one dimension can be -1, got ", shape_str(sizes));
      infer = static_cast<int64_t>(i);
    } else {
      LOOM_CHECK(out[i] >= 0, op, ": invalid size ", out[i], " in ", shape_str(sizes));
      known *= out[i];
    }
  }
  if (infer >= 0) {
    LOOM_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(sizes), " is invalid for a tensor of shape ",
               shape_str(from), " (", numel, " elements)");
    out[infer] = numel / known;
  }
  LOOM_CHECK(shape_numel(out) == numel, op, ": shape ", shape_str(sizes), " is invalid for a tensor of shape ",
             shape_str(from), " (", numel, " elements)");
  return out;
}

/// Strides giving `newshape` as a view of (oldshape, oldstride), or nullopt
/// when the memory layout does not allow it (PyTorch's computeStride).
std::optional<Shape> view_strides(const Shape& oldshape, const Shape& oldstride, const Shape& newshape) {
  Shape newstride(newshape.size(), 1);
  if (oldshape.empty()) return newstride;
  const int64_t numel = shape_numel(oldshape);
  if (numel == 0) {
    if (oldshape == newshape) return oldstride;
    return contiguous_strides(newshape);
  }
  int64_t view_d = static_cast<int64_t>(newshape.size()) - 1;
  int64_t chunk_base_stride = oldstride.back();
  int64_t tensor_numel = 1;
  int64_t view_numel = 1;
  for (int64_t tensor_d = static_cast<int64_t>(oldshape.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= oldshape[tensor_d];
    if (tensor_d == 0 || (oldshape[tensor_d - 1] != 1 && oldstride[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || newshape[view_d] == 1)) {
        newstride[view_d] = view_numel * chunk_base_stride;
        view_numel *= newshape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (tensor_d > 0) {
        chunk_base_stride = oldstride[tensor_d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return newstride;
}

}  // namespace

Tensor view(const Tensor& t, const Shape& sizes) {
  Shape shape = infer_size(sizes, t.numel(), "view", t.sizes());
  auto st = view_strides(t.sizes(), t.strides(), shape);
  LOOM_CHECK(st.has_value(), "view: cannot view a tensor of shape ", shape_str(t.sizes()), " with strides ",
             shape_str(t.strides()), " as ", shape_str(shape),
             " because its memory is not laid out compatibly; use reshape (which copies) or contiguous() first");
  {
    Tensor out = make_view(t, shape, *st, t.storage_offset());
    if (optrace::active()) [[unlikely]]
      optrace::record("view", {t}, {out});
    return out;
  }
}

Tensor reshape(const Tensor& t, const Shape& sizes) {
  Shape shape = infer_size(sizes, t.numel(), "reshape", t.sizes());
  auto st = view_strides(t.sizes(), t.strides(), shape);
  if (st) {
    {
      Tensor out = make_view(t, shape, *st, t.storage_offset());
      if (optrace::active()) [[unlikely]]
        optrace::record("reshape", {t}, {out});
      return out;
    }
  }
  {
    Tensor out = view(contiguous(t), shape);
    if (optrace::active()) [[unlikely]]
      optrace::record("reshape", {t}, {out});
    return out;
  }
}

Tensor permute(const Tensor& t, const std::vector<int64_t>& dims) {
  const int64_t nd = t.dim();
  LOOM_CHECK(static_cast<int64_t>(dims.size()) == nd, "permute: got ", dims.size(), " dims ", shape_str(dims),
             " for a tensor of shape ", shape_str(t.sizes()));
  Shape sizes(nd), strides(nd);
  std::vector<bool> seen(nd, false);
  for (int64_t i = 0; i < nd; ++i) {
    int64_t d = wrap_dim(dims[i], nd, "permute");
    LOOM_CHECK(!seen[d], "permute: dim ", d, " repeats in ", shape_str(dims));
    seen[d] = true;
    sizes[i] = t.sizes()[d];
    strides[i] = t.strides()[d];
  }
  {
    Tensor out = make_view(t, sizes, strides, t.storage_offset());
    if (optrace::active()) [[unlikely]]
      optrace::record("permute", {t}, {out}, {{"dims", dims}});
    return out;
  }
}

Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1) {
  const int64_t nd = t.dim();
  if (nd == 0) {
    {
      Tensor out = make_view(t, t.sizes(), t.strides(), t.storage_offset());
      if (optrace::active()) [[unlikely]]
        optrace::record("transpose", {t}, {out}, {{"dim0", dim0}, {"dim1", dim1}});
      return out;
    }
  }
  int64_t a = wrap_dim(dim0, nd, "transpose"), b = wrap_dim(dim1, nd, "transpose");
  Shape sizes = t.sizes(), strides = t.strides();
  std::swap(sizes[a], sizes[b]);
  std::swap(strides[a], strides[b]);
  {
    Tensor out = make_view(t, sizes, strides, t.storage_offset());
    if (optrace::active()) [[unlikely]]
      optrace::record("transpose", {t}, {out}, {{"dim0", dim0}, {"dim1", dim1}});
    return out;
  }
}

Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  LOOM_CHECK(t.dim() > 0, "narrow: cannot narrow a 0-dim tensor");
  int64_t d = wrap_dim(dim, t.dim(), "narrow");
  int64_t n = t.sizes()[d];
  if (start < 0) start += n;
  LOOM_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: start ", start, " length ", length,
             " is out of range for dim ", d, " of size ", n, " (shape ", shape_str(t.sizes()), ")");
  Shape sizes = t.sizes();
  sizes[d] = length;
  {
    Tensor out = make_view(t, sizes, t.strides(), t.storage_offset() + start * t.strides()[d]);
    if (optrace::active()) [[unlikely]]
      optrace::record("slice", {t}, {out},
                      {{"dim", d}, {"start", start}, {"end", start + length}, {"step", int64_t{1}}});
    return out;
  }
}

Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step) {
  LOOM_CHECK(t.dim() > 0, "slice: cannot slice a 0-dim tensor");
  LOOM_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t d = wrap_dim(dim, t.dim(), "slice");
  int64_t n = t.sizes()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape sizes = t.sizes(), strides = t.strides();
  sizes[d] = (end - start + step - 1) / step;
  strides[d] *= step;
  {
    Tensor out = make_view(t, sizes, strides, t.storage_offset() + start * t.strides()[d]);
    if (optrace::active()) [[unlikely]]
      optrace::record("slice", {t}, {out}, {{"dim", d}, {"start", start}, {"end", end}, {"step", step}});
    return out;
  }
}

Tensor select(const Tensor& t, int64_t dim, int64_t index) {
  LOOM_CHECK(t.dim() > 0, "select: cannot select from a 0-dim tensor");
  int64_t d = wrap_dim(dim, t.dim(), "select");
  int64_t n = t.sizes()[d];
  LOOM_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dim ", d, " of size ", n,
             " (shape ", shape_str(t.sizes()), ")");
  if (index < 0) index += n;
  Shape sizes = t.sizes(), strides = t.strides();
  int64_t off = t.storage_offset() + index * strides[d];
  sizes.erase(sizes.begin() + d);
  strides.erase(strides.begin() + d);
  {
    Tensor out = make_view(t, sizes, strides, off);
    if (optrace::active()) [[unlikely]]
      optrace::record("select", {t}, {out}, {{"dim", d}, {"index", index}});
    return out;
  }
}

Tensor expand(const Tensor& t, const Shape& sizes) {
  const int64_t nd = static_cast<int64_t>(sizes.size());
  const int64_t td = t.dim();
  LOOM_CHECK(nd >= td, "expand: cannot expand shape ", shape_str(t.sizes()), " to ", shape_str(sizes), " (fewer dims)");
  Shape out_sizes(nd), out_strides(nd);
  for (int64_t i = nd - 1; i >= 0; --i) {
    int64_t ti = i - (nd - td);
    int64_t want = sizes[i];
    if (ti >= 0) {
      int64_t have = t.sizes()[ti];
      if (want == -1) want = have;
      LOOM_CHECK(have == want || have == 1, "expand: shape ", shape_str(t.sizes()), " cannot be expanded to ",
                 shape_str(sizes), " (dim ", i, ": size ", have, " is neither ", want, " nor 1)");
      out_sizes[i] = want;
      out_strides[i] = (have == want) ? t.strides()[ti] : 0;
    } else {
      LOOM_CHECK(want >= 0, "expand: size -1 is not allowed for a new leading dim in ", shape_str(sizes));
      out_sizes[i] = want;
      out_strides[i] = 0;
    }
  }
  {
    Tensor out = make_view(t, out_sizes, out_strides, t.storage_offset());
    if (optrace::active()) [[unlikely]]
      optrace::record("expand", {t}, {out});
    return out;
  }
}

Tensor unsqueeze(const Tensor& t, int64_t dim) {
  int64_t d = wrap_dim(dim, t.dim() + 1, "unsqueeze");
  Shape sizes = t.sizes(), strides = t.strides();
  int64_t st = d < t.dim() ? sizes[d] * strides[d] : 1;
  sizes.insert(sizes.begin() + d, 1);
  strides.insert(strides.begin() + d, st);
  {
    Tensor out = make_view(t, sizes, strides, t.storage_offset());
    if (optrace::active()) [[unlikely]]
      optrace::record("unsqueeze", {t}, {out}, {{"dim", d}});
    return out;
  }
}

Tensor squeeze(const Tensor& t, int64_t dim) {
  if (t.dim() == 0) {
    {
      Tensor out = make_view(t, t.sizes(), t.strides(), t.storage_offset());
      if (optrace::active()) [[unlikely]]
        optrace::record("reshape", {t}, {out});
      return out;
    }
  }
  int64_t d = wrap_dim(dim, t.dim(), "squeeze");
  if (t.sizes()[d] != 1) {
    {
      Tensor out = make_view(t, t.sizes(), t.strides(), t.storage_offset());
      if (optrace::active()) [[unlikely]]
        optrace::record("reshape", {t}, {out});
      return out;
    }
  }
  Shape sizes = t.sizes(), strides = t.strides();
  sizes.erase(sizes.begin() + d);
  strides.erase(strides.begin() + d);
  {
    Tensor out = make_view(t, sizes, strides, t.storage_offset());
    if (optrace::active()) [[unlikely]]
      optrace::record("reshape", {t}, {out});
    return out;
  }
}

Tensor flatten(const Tensor& t, int64_t start_dim, int64_t end_dim) {
  if (t.dim() == 0) {
    {
      Tensor out = reshape(t, {1});
      if (optrace::active()) [[unlikely]]
        optrace::record("flatten", {t}, {out}, {{"start_dim", start_dim}, {"end_dim", end_dim}});
      return out;
    }
  }
  int64_t s = wrap_dim(start_dim, t.dim(), "flatten"), e = wrap_dim(end_dim, t.dim(), "flatten");
  LOOM_CHECK(s <= e, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim, " for shape ",
             shape_str(t.sizes()));
  Shape sizes;
  for (int64_t i = 0; i < s; ++i) sizes.push_back(t.sizes()[i]);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= t.sizes()[i];
  sizes.push_back(m);
  for (int64_t i = e + 1; i < t.dim(); ++i) sizes.push_back(t.sizes()[i]);
  {
    Tensor out = reshape(t, sizes);
    if (optrace::active()) [[unlikely]]
      optrace::record("flatten", {t}, {out}, {{"start_dim", start_dim}, {"end_dim", end_dim}});
    return out;
  }
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LOOM_CHECK(x == y || x == 1 || y == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
               " cannot be broadcast together (dim ", i, ": ", x, " vs ", y, ")");
    out[i] = (x == 1) ? y : x;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim) {
  LOOM_CHECK(t.dim() > 0, "split: cannot split a 0-dim tensor");
  int64_t d = wrap_dim(dim, t.dim(), "split");
  int64_t n = t.sizes()[d];
  LOOM_CHECK(split_size > 0 || (split_size == 0 && n == 0), "split: split_size must be positive, got ", split_size);
  std::vector<Tensor> out;
  if (n == 0) {
    out.push_back(narrow(t, d, 0, 0));
    return out;
  }
  for (int64_t s = 0; s < n; s += split_size) out.push_back(narrow(t, d, s, std::min(split_size, n - s)));
  return out;
}

std::vector<Tensor> split_with_sizes(const Tensor& t, const std::vector<int64_t>& sizes, int64_t dim) {
  LOOM_CHECK(t.dim() > 0, "split_with_sizes: cannot split a 0-dim tensor");
  int64_t d = wrap_dim(dim, t.dim(), "split_with_sizes");
  int64_t total = 0;
  for (int64_t s : sizes) {
    LOOM_CHECK(s >= 0, "split_with_sizes: negative size in ", shape_str(sizes));
    total += s;
  }
  LOOM_CHECK(total == t.sizes()[d], "split_with_sizes: sizes ", shape_str(sizes), " sum to ", total, " but dim ", d,
             " of shape ", shape_str(t.sizes()), " has size ", t.sizes()[d]);
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(t, d, start, s));
    start += s;
  }
  return out;
}

}  // namespace loom::ops
