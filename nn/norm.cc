#include "nn/norm.h"

#include "autograd/functions.h"
#include "nn/init.h"

namespace loom::nn {

namespace {
void check_input(const char* op, const Tensor& x, int64_t C) {
  LOOM_CHECK(x.dim() >= 1 && x.size(-1) == C, op, ": input of shape ", shape_str(x.sizes()),
             " does not end in normalized_shape=", C);
}
}  // namespace

LayerNorm::LayerNorm(int64_t C, double eps_, bool has_bias, DType dtype)
    : Module("LayerNorm"), normalized_shape(C), eps(eps_) {
  LOOM_CHECK(C > 0, "LayerNorm: normalized_shape must be positive, got ", C);
  weight = register_parameter("weight", empty({C}, dtype));
  init::ones_(weight);
  if (has_bias) {
    bias = register_parameter("bias", empty({C}, dtype));
    init::zeros_(bias);
  }
}

Tensor LayerNorm::forward(const Tensor& x) {
  check_input("LayerNorm.forward", x, normalized_shape);
  return layer_norm(x, weight, bias, eps);
}

std::string LayerNorm::extra_repr() const {
  return detail::str_cat("(", normalized_shape, ",), eps=", format_float(eps), ", elementwise_affine=True");
}

RMSNorm::RMSNorm(int64_t C, double eps_, DType dtype) : Module("RMSNorm"), normalized_shape(C), eps(eps_) {
  LOOM_CHECK(C > 0, "RMSNorm: normalized_shape must be positive, got ", C);
  weight = register_parameter("weight", empty({C}, dtype));
  init::ones_(weight);
}

Tensor RMSNorm::forward(const Tensor& x) {
  check_input("RMSNorm.forward", x, normalized_shape);
  return rms_norm(x, weight, eps);
}

std::string RMSNorm::extra_repr() const {
  return detail::str_cat("(", normalized_shape, ",), eps=", format_float(eps));
}

}  // namespace loom::nn
