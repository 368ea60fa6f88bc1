// Branch-free math for CPU kernels' inner loops: an f32 exp the compiler can
// vectorise (std::exp is a libm call per element), accurate to about 2 ulp.
// Used by softmax, log_softmax and cross-entropy; f64 paths keep std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace loom::detail {

/// e^x for f32 (Cephes' polynomial on [-ln2/2, ln2/2], scaled by 2^n built in
/// the exponent bits). Inputs below -87.3 give 0 (also -inf), above 88.3 give
/// e^88.3 (finite), NaN stays NaN.
inline float fast_expf(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float fn = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  const float out = y * scale;
  return x < -87.3f ? 0.0f : (x != x ? x : out);
}

/// e^x in the accumulation type of a kernel: fast_expf for f32, std::exp for f64.
inline float exp_acc(float x) { return fast_expf(x); }
inline double exp_acc(double x) { return std::exp(x); }

}  // namespace loom::detail
