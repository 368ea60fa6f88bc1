#include "nn/conv.h"

#include <cmath>

#include "autograd/conv.h"
#include "autograd/functions.h"
#include "nn/init.h"

namespace loom::nn {
namespace {
std::string pair_str(std::array<int64_t, 2> v) {
  std::string s = "(";  // appended, not "(" + to_string(...): GCC 12 warns falsely (-Wrestrict) on that form
  s.append(std::to_string(v[0])).append(", ").append(std::to_string(v[1])).append(")");
  return s;
}
/// PyTorch prints a pooling window as an int when given one.
std::string int_or_pair(std::array<int64_t, 2> v) { return v[0] == v[1] ? std::to_string(v[0]) : pair_str(v); }
}  // namespace

// ---------------------------------------------------------------- Conv2d

Conv2d::Conv2d(int64_t in, int64_t out, std::array<int64_t, 2> k, Conv2dOptions opts, Generator& gen)
    : Module("Conv2d"), in_channels(in), out_channels(out), kernel_size(k), options(opts) {
  LOOM_CHECK(in > 0 && out > 0 && k[0] > 0 && k[1] > 0, "Conv2d: in_channels (", in, "), out_channels (", out,
             ") and kernel_size ", pair_str(k), " must be positive");
  LOOM_CHECK(opts.groups > 0 && in % opts.groups == 0 && out % opts.groups == 0, "Conv2d: in_channels (", in,
             ") and out_channels (", out, ") must be divisible by groups (", opts.groups, ")");
  weight = register_parameter("weight", empty({out, in / opts.groups, k[0], k[1]}, opts.dtype));
  const double bound = 1.0 / std::sqrt(static_cast<double>(in / opts.groups * k[0] * k[1]));
  init::uniform_(weight, -bound, bound, gen);
  if (opts.bias) {
    bias = register_parameter("bias", empty({out}, opts.dtype));
    init::uniform_(bias, -bound, bound, gen);
  }
}

loom::Conv2dOptions Conv2d::conv_options() const {
  loom::Conv2dOptions o;
  o.stride = options.stride;
  o.padding = options.padding;
  o.dilation = options.dilation;
  o.groups = options.groups;
  return o;
}

Tensor Conv2d::forward(const Tensor& x) {
  LOOM_CHECK(x.dim() == 4 && x.size(1) == in_channels, "Conv2d.forward: input of shape ", shape_str(x.sizes()),
             " is not (N, ", in_channels, ", H, W) (weight ", shape_str(weight.sizes()), ")");
  return conv2d(x, weight, bias, conv_options());
}

std::string Conv2d::extra_repr() const {
  std::string s = std::to_string(in_channels) + ", " + std::to_string(out_channels) +
                  ", kernel_size=" + pair_str(kernel_size) + ", stride=" + pair_str(options.stride);
  if (options.padding != std::array<int64_t, 2>{0, 0}) s += ", padding=" + pair_str(options.padding);
  if (options.dilation != std::array<int64_t, 2>{1, 1}) s += ", dilation=" + pair_str(options.dilation);
  if (options.groups != 1) s += ", groups=" + std::to_string(options.groups);
  if (!options.bias) s += ", bias=False";
  return s;
}

// ---------------------------------------------------------------- pools

MaxPool2d::MaxPool2d(loom::Pool2dOptions opts) : Module("MaxPool2d"), options(opts) {}
MaxPool2d::MaxPool2d(int64_t k, int64_t stride, int64_t padding) : Module("MaxPool2d") {
  options.kernel_size = {k, k};
  options.stride = {stride, stride};
  options.padding = {padding, padding};
}
Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, options); }
std::string MaxPool2d::extra_repr() const {
  const auto stride = options.stride[0] == 0 ? options.kernel_size : options.stride;
  return "kernel_size=" + int_or_pair(options.kernel_size) + ", stride=" + int_or_pair(stride) +
         ", padding=" + int_or_pair(options.padding) + ", dilation=" + int_or_pair(options.dilation) +
         ", ceil_mode=" + (options.ceil_mode ? "True" : "False");
}

AvgPool2d::AvgPool2d(loom::Pool2dOptions opts) : Module("AvgPool2d"), options(opts) {}
AvgPool2d::AvgPool2d(int64_t k, int64_t stride, int64_t padding) : Module("AvgPool2d") {
  options.kernel_size = {k, k};
  options.stride = {stride, stride};
  options.padding = {padding, padding};
}
Tensor AvgPool2d::forward(const Tensor& x) { return avg_pool2d(x, options); }
std::string AvgPool2d::extra_repr() const {
  const auto stride = options.stride[0] == 0 ? options.kernel_size : options.stride;
  return "kernel_size=" + int_or_pair(options.kernel_size) + ", stride=" + int_or_pair(stride) +
         ", padding=" + int_or_pair(options.padding);
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(std::array<int64_t, 2> os) : Module("AdaptiveAvgPool2d"), output_size(os) {}
Tensor AdaptiveAvgPool2d::forward(const Tensor& x) { return adaptive_avg_pool2d(x, output_size); }
std::string AdaptiveAvgPool2d::extra_repr() const { return "output_size=" + int_or_pair(output_size); }

// ---------------------------------------------------------------- BatchNorm2d

BatchNorm2d::BatchNorm2d(int64_t c, double eps_, double momentum_, bool affine_, bool track, DType dtype)
    : Module("BatchNorm2d"),
      num_features(c),
      eps(eps_),
      momentum(momentum_),
      affine(affine_),
      track_running_stats(track) {
  LOOM_CHECK(c > 0, "BatchNorm2d: num_features must be positive, got ", c);
  if (affine) {
    weight = register_parameter("weight", ops::ones({c}, dtype));
    bias = register_parameter("bias", ops::zeros({c}, dtype));
  }
  if (track) {
    running_mean = register_buffer("running_mean", ops::zeros({c}, dtype));
    running_var = register_buffer("running_var", ops::ones({c}, dtype));
    num_batches_tracked = register_buffer("num_batches_tracked", ops::zeros({}, DType::i64));
  }
}

void BatchNorm2d::check_input(const Tensor& x) const {
  LOOM_CHECK(x.dim() >= 2 && x.size(1) == num_features, type_name(), ".forward: input of shape ", shape_str(x.sizes()),
             " is not (N, ", num_features, ", H, W)");
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  check_input(x);
  const bool use_batch_stats = is_training() || !track_running_stats;
  if (is_training() && track_running_stats) {
    NoGradGuard g;
    ops::add_(num_batches_tracked, 1.0);
  }
  if (use_batch_stats && sync) return sync->forward(*this, x);
  // Training updates the running statistics (when tracked); eval reads them.
  const Tensor rm = track_running_stats ? running_mean : Tensor();
  const Tensor rv = track_running_stats ? running_var : Tensor();
  return batch_norm(x, rm, rv, weight, bias, use_batch_stats, momentum, eps);
}

std::string BatchNorm2d::extra_repr() const {
  std::string s = std::to_string(num_features) + ", eps=" + format_float(eps) + ", momentum=" + format_float(momentum) +
                  ", affine=" + (affine ? "True" : "False") +
                  ", track_running_stats=" + (track_running_stats ? "True" : "False");
  if (sync) s += ", " + sync->describe();
  return s;
}

// ---------------------------------------------------------------- Flatten, ReLU, Sequential

Flatten::Flatten(int64_t s, int64_t e) : Module("Flatten"), start_dim(s), end_dim(e) {}
Tensor Flatten::forward(const Tensor& x) { return flatten(x, start_dim, end_dim); }
std::string Flatten::extra_repr() const {
  return "start_dim=" + std::to_string(start_dim) + ", end_dim=" + std::to_string(end_dim);
}

Tensor ReLU::forward(const Tensor& x) { return relu(x); }

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& f : calls_) h = f(h);
  return h;
}

}  // namespace loom::nn
