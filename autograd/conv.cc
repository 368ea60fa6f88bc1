// Backward formulas of conv2d, the pools and batch_norm (autograd/conv.h).
#include "autograd/conv.h"

namespace loom {
namespace {

using autograd::record;
using autograd::SavedTensor;
using Grads = std::vector<Tensor>;

bool needs(const Tensor& t) { return t.defined() && t.requires_grad(); }

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dOptions& opts) {
  Tensor y = ops::conv2d(x, w, b, opts);
  if (autograd::any_requires_grad({x, w, b})) {
    SavedTensor X(x), W(w);
    const bool need_x = needs(x), need_w = needs(w), need_b = needs(b);
    const Shape xs = x.sizes(), ws = w.sizes();
    record("Conv2dBackward", {x, w, b}, {y}, [=](const Grads& g) {
      const Tensor dy = ops::contiguous(g[0]);
      Grads out(3);
      if (need_x) out[0] = ops::conv2d_backward_input(dy, W.unpack("conv2d"), xs, opts);
      if (need_w) out[1] = ops::conv2d_backward_weight(dy, X.unpack("conv2d"), ws, opts);
      if (need_b) out[2] = ops::conv2d_backward_bias(dy);
      return out;
    });
  }
  return y;
}

Tensor max_pool2d(const Tensor& x, const Pool2dOptions& opts) {
  auto [y, idx] = ops::max_pool2d(x, opts);
  if (autograd::any_requires_grad({x})) {
    SavedTensor I(idx);
    const Shape xs = x.sizes();
    record("MaxPool2dBackward", {x}, {y},
           [=](const Grads& g) { return Grads{ops::max_pool2d_backward(g[0], I.unpack("max_pool2d"), xs)}; });
  }
  return y;
}

Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opts) {
  Tensor y = ops::avg_pool2d(x, opts);
  if (autograd::any_requires_grad({x})) {
    const Shape xs = x.sizes();
    record("AvgPool2dBackward", {x}, {y},
           [=](const Grads& g) { return Grads{ops::avg_pool2d_backward(g[0], xs, opts)}; });
  }
  return y;
}

Tensor adaptive_avg_pool2d(const Tensor& x, std::array<int64_t, 2> output_size) {
  Tensor y = ops::adaptive_avg_pool2d(x, output_size);
  if (autograd::any_requires_grad({x})) {
    const Shape xs = x.sizes();
    record("AdaptiveAvgPool2dBackward", {x}, {y},
           [=](const Grads& g) { return Grads{ops::adaptive_avg_pool2d_backward(g[0], xs)}; });
  }
  return y;
}

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                  const Tensor& bias, bool training, double momentum, double eps) {
  ops::BatchNormResult r;
  {
    autograd::NoGradGuard no_grad;  // the running statistics are updated without history
    r = ops::batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps);
  }
  if (autograd::any_requires_grad({x, weight, bias})) {
    SavedTensor X(x), Wt(weight), M(r.mean), IS(r.invstd);
    const bool has_bias = bias.defined();
    record("BatchNormBackward", {x, weight, bias}, {r.y}, [=](const Grads& g) {
      ops::NormGrads ng =
          ops::batch_norm_backward(ops::contiguous(g[0]), X.unpack("batch_norm"), Wt.unpack("batch_norm"),
                                   M.unpack("batch_norm"), IS.unpack("batch_norm"), training, has_bias);
      return Grads{ng.dx, ng.dw, ng.db};
    });
  }
  return r.y;
}

}  // namespace loom
