// Differentiable functions: each runs the raw op from tensor/ops.h and, when an
// input needs a gradient, records a FunctionNode whose backward formula maps
// output gradients to input gradients (broadcast dims summed with ops::sum_to).
// Attention lives in attention.cc.
#include <numeric>

#include "autograd/functions.h"

#include "autograd/autocast.h"
#include "autograd/checkpoint.h"

namespace loom {
namespace {

using autograd::record;
using autograd::SavedTensor;
using Grads = std::vector<Tensor>;

bool needs(const Tensor& t) { return t.defined() && t.requires_grad(); }
bool recording(std::initializer_list<Tensor> ts) { return autograd::any_requires_grad(ts); }

/// g converted to a mask's float type: 1 where m is nonzero.
Tensor as_float(const Tensor& mask, DType dt) { return ops::to(mask, dt); }

/// sizes with the reduced dims set to 1 (dims empty: all), and the element count reduced.
Shape keepdim_shape(const Shape& in, const std::vector<int64_t>& dims, const char* op, int64_t* count) {
  Shape keep = in;
  int64_t n = 1;
  if (dims.empty()) {
    for (auto& s : keep) {
      n *= s;
      s = 1;
    }
  } else {
    std::vector<bool> seen(in.size(), false);
    for (int64_t d : dims) {
      int64_t w = wrap_dim(d, static_cast<int64_t>(in.size()), op);
      if (in.empty() || seen[w]) continue;
      seen[w] = true;
      n *= keep[w];
      keep[w] = 1;
    }
  }
  if (count) *count = n;
  return keep;
}

/// The gradient of a reduction over dims, spread back over the input's shape.
Tensor expand_reduced(const Tensor& g, const Shape& in, const std::vector<int64_t>& dims, const char* op) {
  Shape keep = keepdim_shape(in, dims, op, nullptr);
  return ops::contiguous(ops::expand(ops::reshape(g, keep), in));
}

Tensor zero_scalar(const Tensor& like) { return ops::scalar_tensor(0.0, like.dtype(), like.device()); }

}  // namespace

Tensor detach(const Tensor& t) {
  auto impl = std::make_shared<TensorImpl>();
  const TensorImpl& src = t.impl();
  impl->storage = src.storage;
  impl->sizes = src.sizes;
  impl->strides = src.strides;
  impl->offset = src.offset;
  impl->dtype = src.dtype;
  impl->version = src.version;
  return Tensor(std::move(impl));
}

// ---------------------------------------------------------------- views

namespace {
/// Records a view-like op whose backward only reshapes the gradient back.
Tensor reshape_like_view(const char* name, const Tensor& t, Tensor out) {
  if (recording({t})) {
    Shape in = t.sizes();
    record(name, {t}, {out}, [in](const Grads& g) { return Grads{ops::reshape(g[0], in)}; });
  }
  return out;
}
}  // namespace

Tensor view(const Tensor& t, const Shape& sizes) { return reshape_like_view("ViewBackward", t, ops::view(t, sizes)); }
Tensor reshape(const Tensor& t, const Shape& sizes) {
  return reshape_like_view("ReshapeBackward", t, ops::reshape(t, sizes));
}
Tensor unsqueeze(const Tensor& t, int64_t dim) {
  return reshape_like_view("UnsqueezeBackward", t, ops::unsqueeze(t, dim));
}
Tensor squeeze(const Tensor& t, int64_t dim) { return reshape_like_view("SqueezeBackward", t, ops::squeeze(t, dim)); }
Tensor flatten(const Tensor& t, int64_t start_dim, int64_t end_dim) {
  return reshape_like_view("FlattenBackward", t, ops::flatten(t, start_dim, end_dim));
}

Tensor permute(const Tensor& t, const std::vector<int64_t>& dims) {
  Tensor out = ops::permute(t, dims);
  if (recording({t})) {
    std::vector<int64_t> inv(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) inv[wrap_dim(dims[i], t.dim(), "permute")] = static_cast<int64_t>(i);
    record("PermuteBackward", {t}, {out}, [inv](const Grads& g) { return Grads{ops::permute(g[0], inv)}; });
  }
  return out;
}

Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1) {
  Tensor out = ops::transpose(t, dim0, dim1);
  if (recording({t})) {
    record("TransposeBackward", {t}, {out},
           [dim0, dim1](const Grads& g) { return Grads{ops::transpose(g[0], dim0, dim1)}; });
  }
  return out;
}

namespace {
/// Backward of an op that takes a sub-view: zeros of the input's shape with the
/// gradient copied into the same sub-view.
template <typename ViewFn>
Tensor subview_backward(const Tensor& g, const Shape& in, ViewFn view_of) {
  Tensor z = ops::zeros(in, g.dtype(), g.device());
  ops::copy_(view_of(z), g);
  return z;
}
}  // namespace

Tensor narrow(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  Tensor out = ops::narrow(t, dim, start, length);
  if (recording({t})) {
    Shape in = t.sizes();
    record("NarrowBackward", {t}, {out}, [=](const Grads& g) {
      return Grads{subview_backward(g[0], in, [&](const Tensor& z) { return ops::narrow(z, dim, start, length); })};
    });
  }
  return out;
}

Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step) {
  Tensor out = ops::slice(t, dim, start, end, step);
  if (recording({t})) {
    Shape in = t.sizes();
    record("SliceBackward", {t}, {out}, [=](const Grads& g) {
      return Grads{subview_backward(g[0], in, [&](const Tensor& z) { return ops::slice(z, dim, start, end, step); })};
    });
  }
  return out;
}

Tensor select(const Tensor& t, int64_t dim, int64_t index) {
  Tensor out = ops::select(t, dim, index);
  if (recording({t})) {
    Shape in = t.sizes();
    record("SelectBackward", {t}, {out}, [=](const Grads& g) {
      return Grads{subview_backward(g[0], in, [&](const Tensor& z) { return ops::select(z, dim, index); })};
    });
  }
  return out;
}

Tensor expand(const Tensor& t, const Shape& sizes) {
  Tensor out = ops::expand(t, sizes);
  if (recording({t})) {
    Shape in = t.sizes();
    record("ExpandBackward", {t}, {out}, [in](const Grads& g) { return Grads{ops::sum_to(g[0], in)}; });
  }
  return out;
}

Tensor contiguous(const Tensor& t) {
  Tensor out = ops::contiguous(t);
  if (out.is_same(t)) return t;
  if (recording({t})) record("ContiguousBackward", {t}, {out}, [](const Grads& g) { return Grads{g[0]}; });
  return out;
}

Tensor to(const Tensor& t, DType dtype) {
  Tensor out = ops::to(t, dtype);
  if (out.is_same(t)) return t;
  if (is_floating(dtype) && recording({t})) {
    DType src = t.dtype();
    record("ToDtypeBackward", {t}, {out}, [src](const Grads& g) { return Grads{ops::to(g[0], src)}; });
  }
  return out;
}

Tensor to(const Tensor& t, Device device) {
  Tensor out = ops::to(t, device);
  if (out.is_same(t)) return t;
  if (recording({t})) {
    Device src = t.device();
    record("ToDeviceBackward", {t}, {out}, [src](const Grads& g) { return Grads{ops::to(g[0], src)}; });
  }
  return out;
}

// ---------------------------------------------------------------- binary elementwise

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = ops::add(a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    record("AddBackward", {a, b}, {out}, [=](const Grads& g) {
      return Grads{na ? ops::sum_to(g[0], sa) : Tensor(), nb ? ops::sum_to(g[0], sb) : Tensor()};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = ops::sub(a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    record("SubBackward", {a, b}, {out}, [=](const Grads& g) {
      return Grads{na ? ops::sum_to(g[0], sa) : Tensor(), nb ? ops::sum_to(ops::neg(g[0]), sb) : Tensor()};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = ops::mul(a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    SavedTensor A(nb ? a : Tensor()), B(na ? b : Tensor());
    record("MulBackward", {a, b}, {out}, [=](const Grads& g) {
      return Grads{na ? ops::sum_to(ops::mul(g[0], B.unpack("mul")), sa) : Tensor(),
                   nb ? ops::sum_to(ops::mul(g[0], A.unpack("mul")), sb) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = ops::div(a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    SavedTensor A(nb ? a : Tensor()), B(b);
    record("DivBackward", {a, b}, {out}, [=](const Grads& g) {
      Tensor bb = B.unpack("div");
      Tensor ga = ops::div(g[0], bb);
      Tensor gb;
      if (nb) gb = ops::sum_to(ops::neg(ops::div(ops::mul(ga, A.unpack("div")), bb)), sb);
      return Grads{na ? ops::sum_to(ga, sa) : Tensor(), gb};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = ops::pow(a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    SavedTensor A(a), B(b), O(nb ? out : Tensor());
    record("PowBackward", {a, b}, {out}, [=](const Grads& g) {
      Tensor aa = A.unpack("pow"), bb = B.unpack("pow");
      Tensor ga, gb;
      if (na) ga = ops::sum_to(ops::mul(g[0], ops::mul(bb, ops::pow(aa, ops::add(bb, -1.0)))), sa);
      if (nb) {
        // d/db a^b = a^b log a; taken as 0 where a == 0 (PyTorch's convention).
        Tensor term = ops::mul(O.unpack("pow"), ops::log(aa));
        term = ops::masked_fill(term, ops::eq(aa, zero_scalar(aa)), 0.0);
        gb = ops::sum_to(ops::mul(g[0], term), sb);
      }
      return Grads{ga, gb};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, double exponent) {
  Tensor out = ops::pow(a, exponent);
  if (recording({a})) {
    SavedTensor A(a);
    record("PowScalarBackward", {a}, {out}, [=](const Grads& g) {
      if (exponent == 0.0) return Grads{ops::zeros_like(g[0])};
      Tensor aa = A.unpack("pow");
      return Grads{ops::mul(ops::mul(g[0], ops::pow(aa, exponent - 1.0)), exponent)};
    });
  }
  return out;
}

namespace {
/// maximum/minimum: the gradient goes to the selected operand, split evenly on ties.
Tensor extremum(const char* name, const Tensor& a, const Tensor& b, bool is_max) {
  Tensor out = is_max ? ops::maximum(a, b) : ops::minimum(a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    SavedTensor A(a), B(b);
    record(name, {a, b}, {out}, [=](const Grads& g) {
      Tensor aa = A.unpack(name), bb = B.unpack(name);
      DType dt = g[0].dtype();
      Tensor wins = as_float(is_max ? ops::gt(aa, bb) : ops::lt(aa, bb), dt);
      Tensor wa = ops::add(wins, ops::mul(as_float(ops::eq(aa, bb), dt), 0.5));  // weight of a
      Tensor ga = na ? ops::sum_to(ops::mul(g[0], wa), sa) : Tensor();
      Tensor gb = nb ? ops::sum_to(ops::mul(g[0], ops::rsub(wa, 1.0)), sb) : Tensor();
      return Grads{ga, gb};
    });
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum("MaximumBackward", a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum("MinimumBackward", a, b, false); }

Tensor add(const Tensor& a, double b) {
  Tensor out = ops::add(a, b);
  if (recording({a})) record("AddScalarBackward", {a}, {out}, [](const Grads& g) { return Grads{g[0]}; });
  return out;
}

Tensor mul(const Tensor& a, double b) {
  Tensor out = ops::mul(a, b);
  if (recording({a})) record("MulScalarBackward", {a}, {out}, [b](const Grads& g) { return Grads{ops::mul(g[0], b)}; });
  return out;
}

// ---------------------------------------------------------------- unary

namespace {
/// Records a unary op whose gradient is g * dfdx(x, out).
template <typename F>
Tensor unary(const char* name, const Tensor& t, Tensor out, bool save_in, bool save_out, F dfdx) {
  if (recording({t})) {
    SavedTensor X(save_in ? t : Tensor()), Y(save_out ? out : Tensor());
    record(name, {t}, {out}, [=](const Grads& g) { return Grads{dfdx(g[0], X.unpack(name), Y.unpack(name))}; });
  }
  return out;
}
}  // namespace

Tensor neg(const Tensor& t) {
  return unary("NegBackward", t, ops::neg(t), false, false,
               [](const Tensor& g, const Tensor&, const Tensor&) { return ops::neg(g); });
}
Tensor abs(const Tensor& t) {
  return unary("AbsBackward", t, ops::abs(t), true, false, [](const Tensor& g, const Tensor& x, const Tensor&) {
    Tensor sign = ops::sub(as_float(ops::gt(x, 0.0), g.dtype()), as_float(ops::lt(x, 0.0), g.dtype()));
    return ops::mul(g, sign);
  });
}
Tensor exp(const Tensor& t) {
  return unary("ExpBackward", t, ops::exp(t), false, true,
               [](const Tensor& g, const Tensor&, const Tensor& y) { return ops::mul(g, y); });
}
Tensor log(const Tensor& t) {
  return unary("LogBackward", t, ops::log(t), true, false,
               [](const Tensor& g, const Tensor& x, const Tensor&) { return ops::div(g, x); });
}
Tensor sqrt(const Tensor& t) {
  return unary("SqrtBackward", t, ops::sqrt(t), false, true,
               [](const Tensor& g, const Tensor&, const Tensor& y) { return ops::div(ops::mul(g, 0.5), y); });
}
Tensor rsqrt(const Tensor& t) {
  // d/dx x^(-1/2) = -1/2 y^3
  return unary("RsqrtBackward", t, ops::rsqrt(t), false, true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return ops::mul(ops::mul(g, ops::mul(y, ops::mul(y, y))), -0.5);
  });
}
Tensor tanh(const Tensor& t) {
  return unary("TanhBackward", t, ops::tanh(t), false, true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return ops::mul(g, ops::rsub(ops::mul(y, y), 1.0));
  });
}
Tensor sigmoid(const Tensor& t) {
  return unary("SigmoidBackward", t, ops::sigmoid(t), false, true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return ops::mul(g, ops::mul(y, ops::rsub(y, 1.0)));
  });
}
Tensor relu(const Tensor& t) {
  return unary("ReluBackward", t, ops::relu(t), false, true, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return ops::mul(g, as_float(ops::gt(y, 0.0), g.dtype()));
  });
}
Tensor sin(const Tensor& t) {
  return unary("SinBackward", t, ops::sin(t), true, false,
               [](const Tensor& g, const Tensor& x, const Tensor&) { return ops::mul(g, ops::cos(x)); });
}
Tensor cos(const Tensor& t) {
  return unary("CosBackward", t, ops::cos(t), true, false,
               [](const Tensor& g, const Tensor& x, const Tensor&) { return ops::neg(ops::mul(g, ops::sin(x))); });
}
Tensor clamp(const Tensor& t, double lo, double hi) {
  return unary("ClampBackward", t, ops::clamp(t, lo, hi), true, false,
               [lo, hi](const Tensor& g, const Tensor& x, const Tensor&) {
                 DType dt = g.dtype();
                 Tensor in_range = ops::mul(as_float(ops::ge(x, ops::scalar_tensor(lo, x.dtype(), x.device())), dt),
                                            as_float(ops::le(x, ops::scalar_tensor(hi, x.dtype(), x.device())), dt));
                 return ops::mul(g, in_range);
               });
}
Tensor gelu(const Tensor& t, GeluApprox approx) {
  return unary("GeluBackward", t, ops::gelu(t, approx), true, false,
               [approx](const Tensor& g, const Tensor& x, const Tensor&) { return ops::gelu_backward(g, x, approx); });
}
Tensor silu(const Tensor& t) {
  return unary("SiluBackward", t, ops::silu(t), true, false,
               [](const Tensor& g, const Tensor& x, const Tensor&) { return ops::silu_backward(g, x); });
}

// ---------------------------------------------------------------- operators

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator+(double a, const Tensor& b) { return add(b, a); }
Tensor operator-(const Tensor& a, double b) { return add(a, -b); }
Tensor operator-(double a, const Tensor& b) {
  Tensor out = ops::rsub(b, a);
  if (recording({b})) record("RsubBackward", {b}, {out}, [](const Grads& g) { return Grads{ops::neg(g[0])}; });
  return out;
}
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
Tensor operator/(const Tensor& a, double b) { return mul(a, 1.0 / b); }
Tensor operator/(double a, const Tensor& b) {
  // y = a / b: dy/db = -y / b
  return unary("RdivBackward", b, ops::rdiv(b, a), true, true,
               [](const Tensor& g, const Tensor& x, const Tensor& y) { return ops::neg(ops::div(ops::mul(g, y), x)); });
}

// ---------------------------------------------------------------- selection

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Tensor out = ops::where(cond, a, b);
  if (recording({a, b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    bool na = needs(a), nb = needs(b);
    Tensor c = cond;  // masks carry no gradient; kept as is
    record("WhereBackward", {a, b}, {out}, [=](const Grads& g) {
      Tensor z = zero_scalar(g[0]);
      return Grads{na ? ops::sum_to(ops::where(c, g[0], z), sa) : Tensor(),
                   nb ? ops::sum_to(ops::where(c, z, g[0]), sb) : Tensor()};
    });
  }
  return out;
}

Tensor masked_fill(const Tensor& t, const Tensor& mask, double value) {
  Tensor out = ops::masked_fill(t, mask, value);
  if (recording({t})) {
    Shape st = t.sizes();
    Tensor m = mask;
    record("MaskedFillBackward", {t}, {out},
           [=](const Grads& g) { return Grads{ops::sum_to(ops::masked_fill(g[0], m, 0.0), st)}; });
  }
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  Tensor out = ops::cat(tensors, dim);
  if (autograd::any_requires_grad(tensors)) {
    int64_t d = wrap_dim(dim, out.dim(), "cat");
    std::vector<int64_t> sizes;
    std::vector<bool> need;
    for (const auto& t : tensors) {
      sizes.push_back(t.dim() > d ? t.size(d) : 0);
      need.push_back(needs(t));
    }
    record("CatBackward", tensors, {out}, [=](const Grads& g) {
      Grads parts = ops::split_with_sizes(g[0], sizes, d);
      for (size_t i = 0; i < parts.size(); ++i)
        if (!need[i]) parts[i] = Tensor();
      return parts;
    });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  Tensor out = ops::stack(tensors, dim);
  if (autograd::any_requires_grad(tensors)) {
    int64_t d = wrap_dim(dim, out.dim(), "stack");
    size_t n = tensors.size();
    record("StackBackward", tensors, {out}, [=](const Grads& g) {
      Grads parts;
      for (size_t i = 0; i < n; ++i) parts.push_back(ops::select(g[0], d, static_cast<int64_t>(i)));
      return parts;
    });
  }
  return out;
}

namespace {
std::vector<Tensor> record_split(const char* name, const Tensor& t, std::vector<Tensor> outs, int64_t dim) {
  if (recording({t})) {
    int64_t d = wrap_dim(dim, t.dim(), name);
    record(name, {t}, outs, [d](const Grads& g) { return Grads{ops::cat(g, d)}; });
  }
  return outs;
}
}  // namespace

std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim) {
  return record_split("SplitBackward", t, ops::split(t, split_size, dim), dim);
}

std::vector<Tensor> split_with_sizes(const Tensor& t, const std::vector<int64_t>& sizes, int64_t dim) {
  return record_split("SplitWithSizesBackward", t, ops::split_with_sizes(t, sizes, dim), dim);
}

Tensor index_select(const Tensor& t, int64_t dim, const Tensor& index) {
  Tensor out = ops::index_select(t, dim, index);
  if (recording({t})) {
    Shape in = t.sizes();
    int64_t d = wrap_dim(dim, t.dim(), "index_select");
    Tensor idx = index;
    record("IndexSelectBackward", {t}, {out}, [=](const Grads& g) {
      // Move dim to the front, accumulate rows like an embedding gradient, move it back.
      const int64_t nd = static_cast<int64_t>(in.size());
      std::vector<int64_t> perm{d};
      for (int64_t i = 0; i < nd; ++i)
        if (i != d) perm.push_back(i);
      Tensor gp = ops::contiguous(ops::permute(g[0], perm));
      Tensor rows = ops::reshape(gp, {gp.size(0), -1});
      Tensor acc = ops::embedding_backward(rows, idx, in[d]);  // (in[d], rest)
      Shape permuted{in[d]};
      for (int64_t i = 0; i < nd; ++i)
        if (i != d) permuted.push_back(in[i]);
      std::vector<int64_t> inv(nd);
      for (int64_t i = 0; i < nd; ++i) inv[perm[i]] = i;
      return Grads{ops::contiguous(ops::permute(ops::reshape(acc, permuted), inv))};
    });
  }
  return out;
}

// ---------------------------------------------------------------- reductions

Tensor sum(const Tensor& t, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor out = ops::sum(t, dims, keepdim);
  if (recording({t})) {
    Shape in = t.sizes();
    record("SumBackward", {t}, {out}, [=](const Grads& g) { return Grads{expand_reduced(g[0], in, dims, "sum")}; });
  }
  return out;
}

Tensor mean(const Tensor& t, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor out = ops::mean(t, dims, keepdim);
  if (recording({t})) {
    Shape in = t.sizes();
    int64_t count = 1;
    keepdim_shape(in, dims, "mean", &count);
    record("MeanBackward", {t}, {out}, [=](const Grads& g) {
      return Grads{
          ops::mul(expand_reduced(g[0], in, dims, "mean"), 1.0 / static_cast<double>(std::max<int64_t>(count, 1)))};
    });
  }
  return out;
}

Tensor var(const Tensor& t, const std::vector<int64_t>& dims, int64_t correction, bool keepdim) {
  Tensor out = ops::var(t, dims, correction, keepdim);
  if (recording({t})) {
    Shape in = t.sizes();
    int64_t count = 1;
    keepdim_shape(in, dims, "var", &count);
    SavedTensor X(t);
    record("VarBackward", {t}, {out}, [=](const Grads& g) {
      Tensor x = X.unpack("var");
      Tensor centered = ops::sub(x, ops::mean(x, dims, true));
      double scale = 2.0 / static_cast<double>(count - correction);
      return Grads{ops::mul(ops::mul(expand_reduced(g[0], in, dims, "var"), centered), scale)};
    });
  }
  return out;
}

Tensor max(const Tensor& t) {
  Tensor out = ops::max(t);
  if (recording({t})) {
    SavedTensor X(t), Y(out);
    record("MaxBackward", {t}, {out}, [=](const Grads& g) {
      // Split evenly among ties, as PyTorch does for the full reduction.
      Tensor x = X.unpack("max");
      Tensor mask = as_float(ops::eq(x, Y.unpack("max")), g[0].dtype());
      Tensor count = ops::sum(mask);
      return Grads{ops::mul(mask, ops::div(g[0], count))};
    });
  }
  return out;
}

std::pair<Tensor, Tensor> max(const Tensor& t, int64_t dim, bool keepdim) {
  auto [values, indices] = ops::max(t, dim, keepdim);
  if (recording({t})) {
    Shape in = t.sizes();
    int64_t d = wrap_dim(dim, t.dim(), "max");
    Tensor idx = keepdim ? indices : ops::unsqueeze(indices, d);
    record("MaxDimBackward", {t}, {values}, [=](const Grads& g) {
      Tensor gk = keepdim ? g[0] : ops::unsqueeze(g[0], d);
      Shape ar_shape(in.size(), 1);
      ar_shape[d] = in[d];
      Tensor ar = ops::reshape(ops::arange(in[d], idx.dtype(), idx.device()), ar_shape);
      Tensor onehot = as_float(ops::eq(ar, idx), gk.dtype());  // (in) with broadcasting
      return Grads{ops::contiguous(ops::expand(ops::mul(onehot, gk), in))};
    });
  }
  return {values, indices};
}

// ---------------------------------------------------------------- linear algebra

namespace {
/// Gradients of matmul for any ranks: 1-D operands are promoted to matrices,
/// broadcast batch dims are summed back.
Grads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, const Shape& as, const Shape& bs, bool na,
                      bool nb) {
  if (as.size() == 1 && bs.size() == 1) {
    return Grads{na ? ops::mul(g, b) : Tensor(), nb ? ops::mul(g, a) : Tensor()};
  }
  Shape a2s = as, b2s = bs;
  if (as.size() == 1) a2s.insert(a2s.begin(), 1);
  if (bs.size() == 1) b2s.push_back(1);
  const int64_t m = a2s[a2s.size() - 2], k = a2s.back(), n = b2s.back();
  Shape abatch(a2s.begin(), a2s.end() - 2), bbatch(b2s.begin(), b2s.end() - 2);
  Shape batch = ops::broadcast_shapes(abatch, bbatch, "matmul");
  Shape g2s = batch;
  g2s.push_back(m);
  g2s.push_back(n);
  Tensor g2 = ops::reshape(g, g2s);
  Tensor ga, gb;
  if (na) {
    Tensor b2 = ops::reshape(b, b2s);
    ga = ops::matmul(g2, ops::transpose(b2, -1, -2));  // (batch, m, k)
    ga = ops::reshape(ops::sum_to(ga, a2s), as);
  }
  if (nb) {
    Tensor a2 = ops::reshape(a, a2s);
    if (bbatch.empty() && !abatch.empty()) {
      // (..., m, k) @ (k, n): fold the batch into rows so dW is one gemm, not a batch then a sum.
      Tensor a_rows = ops::reshape(a2, {-1, k});
      Tensor g_rows = ops::reshape(g2, {-1, n});
      gb = ops::matmul(ops::transpose(a_rows, 0, 1), g_rows);  // (k, n)
    } else {
      gb = ops::sum_to(ops::matmul(ops::transpose(a2, -1, -2), g2), b2s);
    }
    gb = ops::reshape(gb, bs);
  }
  return Grads{ga, gb};
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (autocast_enabled()) {
    Tensor la = autograd::detail::autocast_lowp(a), lb = autograd::detail::autocast_lowp(b);
    autograd::detail::AutocastSuspend off;
    return matmul(la, lb);
  }
  Tensor out = ops::matmul(a, b);
  if (recording({a, b})) {
    bool na = needs(a), nb = needs(b);
    SavedTensor A(nb ? a : Tensor()), B(na ? b : Tensor());
    Shape as = a.sizes(), bs = b.sizes();
    record("MatmulBackward", {a, b}, {out}, [=](const Grads& g) {
      return matmul_backward(g[0], A.unpack("matmul"), B.unpack("matmul"), as, bs, na, nb);
    });
  }
  return out;
}

namespace {
bool is_low_precision(DType dt) { return dt == DType::bf16 || dt == DType::f16; }

/// LinearBackward's formulas for grad g (..., out): {dx, dw, db}, each only when wanted.
Grads linear_grads(const Tensor& g, const SavedTensor& X, const SavedTensor& W, const Shape& xs, int64_t in,
                   int64_t outf, bool nx, bool nw, bool nbias, const char* op) {
  Tensor g2 = ops::contiguous(ops::reshape(g, {-1, outf}));  // (N, out)
  Tensor dx, dw, db;
  if (nx) {
    Tensor wt = W.unpack(op);
    dx = empty({g2.size(0), in}, wt.dtype(), wt.device());
    ops::gemm_(dx, g2, wt);  // (N, out) @ (out, in)
    dx = ops::view(dx, xs);
  }
  if (nw) {
    Tensor x2 = ops::reshape(X.unpack(op), {-1, in});
    dw = empty({outf, in}, x2.dtype(), x2.device());
    ops::gemm_(dw, ops::transpose(g2, 0, 1), x2);  // (out, N) @ (N, in), transpose as a view
  }
  if (nbias) db = ops::sum(g2, {0});
  return Grads{dx, dw, db};
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  if (autocast_enabled()) {
    Tensor lx = autograd::detail::autocast_lowp(x), lw = autograd::detail::autocast_lowp(w),
           lb = autograd::detail::autocast_lowp(b);
    autograd::detail::AutocastSuspend off;
    return linear(lx, lw, lb);
  }
  // Selective activation checkpointing keeps the matmul's output from the first run and reuses it in the recompute.
  Tensor out;
  auto* sac = autograd::detail::selective_cache();
  if (sac && sac->replaying()) {
    out = sac->replay("linear")[0];
  } else {
    out = ops::linear(x, w, b);
    if (sac) sac->save("linear", {out});
  }
  if (recording({x, w, b})) {
    bool nx = needs(x), nw = needs(w), nbias = needs(b);
    SavedTensor X(nw ? x : Tensor()), W(nx ? w : Tensor());
    Shape xs = x.sizes();
    const int64_t in = w.size(1), outf = w.size(0);
    record("LinearBackward", {x, w, b}, {out},
           [=](const Grads& g) { return linear_grads(g[0], X, W, xs, in, outf, nx, nw, nbias, "linear"); });
  }
  return out;
}

Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b) {
  if (autocast_enabled()) {
    Tensor lx = autograd::detail::autocast_lowp(x), lw = autograd::detail::autocast_lowp(w),
           lb = autograd::detail::autocast_lowp(b);
    autograd::detail::AutocastSuspend off;
    return linear_gelu(lx, lw, lb);
  }
  ops::LinearGeluResult r;
  auto* sac = autograd::detail::selective_cache();
  if (sac && sac->replaying()) {
    // The matmul's output (pre) is kept and the GELU recomputed: in f32/f64 gelu(pre) gives the fused op's bits. In
    // bf16/f16 the fused GELU runs on the unrounded product (the matmul's epilogue), so both outputs are kept there.
    auto kept = sac->replay("linear_gelu");
    if (kept.size() == 1) {
      r.pre = kept[0];
      r.out = ops::gelu(r.pre, GeluApprox::kTanh);
    } else {
      r.out = kept[0];
      r.pre = kept[1];
    }
  } else {
    r = ops::linear_gelu(x, w, b);
    const bool full_precision = r.pre.dtype() == DType::f32 || r.pre.dtype() == DType::f64;
    if (sac) sac->save("linear_gelu", full_precision ? std::vector<Tensor>{r.pre} : std::vector<Tensor>{r.out, r.pre});
  }
  if (recording({x, w, b})) {
    bool nx = needs(x), nw = needs(w), nbias = needs(b);
    SavedTensor X(nw ? x : Tensor()), W(nx ? w : Tensor()), P(r.pre);
    Shape xs = x.sizes();
    const int64_t in = w.size(1), outf = w.size(0);
    record("LinearGeluBackward", {x, w, b}, {r.out}, [=](const Grads& g) {
      // The unfused graph's GeluBackward, then its LinearBackward.
      Tensor gpre = ops::gelu_backward(g[0], P.unpack("linear_gelu"), GeluApprox::kTanh);
      return linear_grads(gpre, X, W, xs, in, outf, nx, nw, nbias, "linear_gelu");
    });
  }
  return r.out;
}

// ---------------------------------------------------------------- nn kernels

Tensor softmax(const Tensor& t, int64_t dim) {
  if (autocast_enabled()) {
    Tensor ft = autograd::detail::autocast_f32(t);
    autograd::detail::AutocastSuspend off;
    return softmax(ft, dim);
  }
  Tensor out = ops::softmax(t, dim);
  if (recording({t})) {
    SavedTensor Y(out);
    record("SoftmaxBackward", {t}, {out},
           [=](const Grads& g) { return Grads{ops::softmax_backward(g[0], Y.unpack("softmax"), dim)}; });
  }
  return out;
}

Tensor log_softmax(const Tensor& t, int64_t dim) {
  if (autocast_enabled()) {
    Tensor ft = autograd::detail::autocast_f32(t);
    autograd::detail::AutocastSuspend off;
    return log_softmax(ft, dim);
  }
  Tensor out = ops::log_softmax(t, dim);
  if (recording({t})) {
    SavedTensor Y(out);
    record("LogSoftmaxBackward", {t}, {out},
           [=](const Grads& g) { return Grads{ops::log_softmax_backward(g[0], Y.unpack("log_softmax"), dim)}; });
  }
  return out;
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  if (autocast_enabled()) {
    Tensor fx = autograd::detail::autocast_f32(x), fw = autograd::detail::autocast_f32(w),
           fb = autograd::detail::autocast_f32(b);
    autograd::detail::AutocastSuspend off;
    return layer_norm(fx, fw, fb, eps);
  }
  ops::NormResult r = ops::layer_norm(x, w, b, eps);
  if (recording({x, w, b})) {
    SavedTensor X(x), W(w), M(r.mean), R(r.rstd);
    bool has_bias = b.defined();
    record("LayerNormBackward", {x, w, b}, {r.y}, [=](const Grads& g) {
      ops::NormGrads ng =
          ops::layer_norm_backward(ops::contiguous(g[0]), X.unpack("layer_norm"), W.unpack("layer_norm"),
                                   M.unpack("layer_norm"), R.unpack("layer_norm"), has_bias);
      return Grads{ng.dx, ng.dw, ng.db};
    });
  }
  return r.y;
}

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  if (autocast_enabled()) {
    Tensor fx = autograd::detail::autocast_f32(x), fw = autograd::detail::autocast_f32(w);
    autograd::detail::AutocastSuspend off;
    return rms_norm(fx, fw, eps);
  }
  ops::NormResult r = ops::rms_norm(x, w, eps);
  if (recording({x, w})) {
    SavedTensor X(x), W(w), R(r.rstd);
    record("RmsNormBackward", {x, w}, {r.y}, [=](const Grads& g) {
      ops::NormGrads ng = ops::rms_norm_backward(ops::contiguous(g[0]), X.unpack("rms_norm"), W.unpack("rms_norm"),
                                                 R.unpack("rms_norm"));
      return Grads{ng.dx, ng.dw};
    });
  }
  return r.y;
}

std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b,
                                         double eps) {
  if (autocast_enabled()) {
    if (is_low_precision(promote_types(x.dtype(), residual.dtype()))) {
      // layer_norm would normalise an f32 copy of the sum: not one fused op.
      Tensor sum = add(x, residual);
      return {sum, layer_norm(sum, w, b, eps)};
    }
    Tensor fw = autograd::detail::autocast_f32(w), fb = autograd::detail::autocast_f32(b);
    autograd::detail::AutocastSuspend off;
    return add_layer_norm(x, residual, fw, fb, eps);
  }
  ops::AddNormResult r = ops::add_layer_norm(x, residual, w, b, eps);
  if (recording({x, residual, w, b})) {
    SavedTensor S(r.sum), W(w), M(r.mean), R(r.rstd);
    const bool has_bias = b.defined(), nx = needs(x), nr = needs(residual);
    Shape xs = x.sizes(), rs = residual.sizes();
    record("AddLayerNormBackward", {x, residual, w, b}, {r.sum, r.y}, [=](const Grads& g) {
      ops::NormGrads ng =
          ops::layer_norm_backward(ops::contiguous(g[1]), S.unpack("add_layer_norm"), W.unpack("add_layer_norm"),
                                   M.unpack("add_layer_norm"), R.unpack("add_layer_norm"), has_bias);
      // The sum's two consumers' gradients, added as the engine adds them in the unfused graph.
      Tensor ds = ops::add(g[0], ng.dx);
      return Grads{nx ? ops::sum_to(ds, xs) : Tensor(), nr ? ops::sum_to(ds, rs) : Tensor(), ng.dw, ng.db};
    });
  }
  return {r.sum, r.y};
}

std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& w, double eps) {
  if (autocast_enabled()) {
    if (is_low_precision(promote_types(x.dtype(), residual.dtype()))) {
      Tensor sum = add(x, residual);
      return {sum, rms_norm(sum, w, eps)};
    }
    Tensor fw = autograd::detail::autocast_f32(w);
    autograd::detail::AutocastSuspend off;
    return add_rms_norm(x, residual, fw, eps);
  }
  ops::AddNormResult r = ops::add_rms_norm(x, residual, w, eps);
  if (recording({x, residual, w})) {
    SavedTensor S(r.sum), W(w), R(r.rstd);
    const bool nx = needs(x), nr = needs(residual);
    Shape xs = x.sizes(), rs = residual.sizes();
    record("AddRmsNormBackward", {x, residual, w}, {r.sum, r.y}, [=](const Grads& g) {
      ops::NormGrads ng = ops::rms_norm_backward(ops::contiguous(g[1]), S.unpack("add_rms_norm"),
                                                 W.unpack("add_rms_norm"), R.unpack("add_rms_norm"));
      Tensor ds = ops::add(g[0], ng.dx);
      return Grads{nx ? ops::sum_to(ds, xs) : Tensor(), nr ? ops::sum_to(ds, rs) : Tensor(), ng.dw};
    });
  }
  return {r.sum, r.y};
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  Tensor out = ops::embedding(weight, indices);
  if (recording({weight})) {
    Tensor idx = indices;
    const int64_t V = weight.size(0);
    record("EmbeddingBackward", {weight}, {out},
           [=](const Grads& g) { return Grads{ops::embedding_backward(ops::contiguous(g[0]), idx, V)}; });
  }
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index) {
  if (autocast_enabled()) {
    Tensor fl = autograd::detail::autocast_f32(logits);
    autograd::detail::AutocastSuspend off;
    return cross_entropy(fl, target, ignore_index);
  }
  ops::CrossEntropyResult r = ops::cross_entropy(logits, target, ignore_index);
  if (recording({logits})) {
    SavedTensor L(logits), LSE(r.lse);
    Tensor tgt = target;
    int64_t count = r.count;
    record("CrossEntropyBackward", {logits}, {r.loss}, [=](const Grads& g) {
      return Grads{ops::cross_entropy_backward(g[0], L.unpack("cross_entropy"), tgt, LSE.unpack("cross_entropy"), count,
                                               ignore_index)};
    });
  }
  return r.loss;
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  if (!training || p == 0.0) return x;
  LOOM_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got ", p);
  auto [y, mask] = ops::dropout(x, p, gen);
  if (recording({x})) {
    double scale = p >= 1.0 ? 0.0 : 1.0 / (1.0 - p);
    record("DropoutBackward", {x}, {y},
           [=](const Grads& g) { return Grads{ops::mul(ops::mul(g[0], as_float(mask, g[0].dtype())), scale)}; });
  }
  return y;
}

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  Tensor out = ops::rope(x, cos, sin);
  if (recording({x})) {
    // cos/sin are fixed tables: no gradient flows to them.
    Tensor c = detach(cos), s = detach(sin);
    record("RopeBackward", {x}, {out}, [=](const Grads& g) { return Grads{ops::rope(g[0], c, s, true)}; });
  }
  return out;
}

}  // namespace loom
