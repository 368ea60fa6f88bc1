// Branch-free math for CPU kernels' inner loops: an f32 exp the compiler can
// vectorise (std::exp is a libm call per element), accurate to about 2 ulp.
// Used by softmax, log_softmax, cross-entropy and the elementwise activations;
// f64 paths keep std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace loom::detail {

/// e^x for f32 (Cephes' polynomial on [-ln2/2, ln2/2], scaled by 2^n built in
/// the exponent bits). Inputs below -87.3 give 0 (also -inf), above 88.3 give
/// e^88.3 (finite, also +inf), NaN stays NaN. Written without branches so a
/// loop calling it vectorises (gcc -O3 without fast-math).
inline float fast_expf(float x) {
  float xc = x < -87.3f ? -87.3f : x;
  xc = xc > 88.3f ? 88.3f : xc;
  // Round to nearest with the 1.5*2^23 trick: std::floor only vectorises where
  // the target has a rounding instruction (SSE4.1).
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // fn is in [-126, 127]; a NaN x converts to some int, but y is NaN then and so is
  // the result. (Shifting a signed int is defined in C++20; a uint32_t detour here
  // stops gcc vectorising the loop.)
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  float out = y * scale;
  out = x < -87.3f ? 0.0f : out;  // a select, not a branch, so keep it out of the return
  return out;
}

/// e^x in the accumulation type of a kernel: fast_expf for f32, std::exp for f64.
inline float exp_acc(float x) { return fast_expf(x); }
inline double exp_acc(double x) { return std::exp(x); }

}  // namespace loom::detail
