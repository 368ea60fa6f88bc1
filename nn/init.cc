#include "nn/init.h"

#include "autograd/autograd.h"
#include "tensor/ops.h"

namespace loom::nn::init {

void normal_(const Tensor& t, double mean, double std, Generator& gen) {
  autograd::NoGradGuard g;
  ops::normal_(t, mean, std, gen);
}
void uniform_(const Tensor& t, double low, double high, Generator& gen) {
  autograd::NoGradGuard g;
  ops::uniform_(t, low, high, gen);
}
void zeros_(const Tensor& t) {
  autograd::NoGradGuard g;
  ops::zero_(t);
}
void ones_(const Tensor& t) {
  autograd::NoGradGuard g;
  ops::fill_(t, 1.0);
}

}  // namespace loom::nn::init
