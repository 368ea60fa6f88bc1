#include "tests/gpu/conformance.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "tensor/ops.h"

namespace loom::conformance {

const Mode& mode() {
  static const Mode m = [] {
    Mode r;
    const char* env = std::getenv("LOOM_CONFORMANCE_DEVICE");
    const std::string want = env ? env : "cuda";
    if (want == "cpu") {
      r.available = true;
      r.self_check = true;
      r.device = kCPU;
      const char* p = std::getenv("LOOM_CONFORMANCE_PERTURB");
      r.perturb = p && std::string(p) == "1";
      return r;
    }
    r.device = Device(DeviceType::kCUDA, 0);
    if (want != "cuda") {
      r.why = "LOOM_CONFORMANCE_DEVICE=" + want + " is neither cuda nor cpu";
    } else if (!cuda_is_available()) {
      r.why = "no CUDA device (cuda_is_available() is false): these tests need a GPU";
    } else {
      r.available = true;
    }
    return r;
  }();
  return m;
}

const DTypeTol& tolerance(DType dt) {
  // The tolerance table. f64: round-off of a different summation order only.
  // f32: a few ulps of a different order and of CUDA's libm (expf, erff, tanhf).
  // f16 / bf16: results are rounded once to 16 bits from f32 (2 ulps: f16 2^-10,
  // bf16 2^-7 relative at most), plus round-off an f32 accumulation order adds
  // near cancellation; gradients chain two or three such roundings.
  // Measured on the CPU (every case computed natively in f32 / f16 / bf16 and
  // compared with the same case computed in f64 and rounded, a scratch variant
  // of the self-check): the worst element used 6.5% of the f32 tolerance, 26% of
  // f16's and 54% of bf16's (sigmoid's gradient), so a CUDA kernel at least as
  // accurate as the CPU one passes.
  static const DTypeTol kTable[] = {
      {DType::f64, {1e-12, 1e-10}, {1e-10, 1e-9}},
      {DType::f32, {1e-5, 1e-5}, {1e-5, 1e-4}},
      {DType::f16, {2e-3, 4e-3}, {4e-3, 8e-3}},
      {DType::bf16, {1e-2, 1.6e-2}, {2e-2, 3.2e-2}},
  };
  for (const auto& t : kTable)
    if (t.dtype == dt) return t;
  static const DTypeTol kExact{DType::i64, {0, 0}, {0, 0}};  // integers, u8: exact
  return kExact;
}

Tensor to_dut(const Tensor& t) {
  if (!t.defined()) return t;
  Tensor c = ops::clone(t);
  return mode().device.is_cpu() ? c : ops::to(c, mode().device);
}

Compared compare(const Tensor& dev, const Tensor& ref, Tol tol, const Device* expect_device) {
  Compared r;
  std::ostringstream os;
  if (!dev.defined() || !ref.defined()) {
    r.ok = dev.defined() == ref.defined();
    if (!r.ok) r.message = dev.defined() ? "defined on the device, undefined on cpu" : "undefined on the device";
    return r;
  }
  if (dev.sizes() != ref.sizes()) {
    r.message = "shape " + shape_str(dev.sizes()) + " on the device, " + shape_str(ref.sizes()) + " on cpu";
    return r;
  }
  if (dev.dtype() != ref.dtype()) {
    r.message =
        std::string("dtype ") + dtype_name(dev.dtype()) + " on the device, " + dtype_name(ref.dtype()) + " on cpu";
    return r;
  }
  if (expect_device && dev.device() != *expect_device) {
    r.message = "result is on " + dev.device().str() + ", expected " + expect_device->str();
    return r;
  }
  std::vector<double> a = ops::to(dev, kCPU).to_vector<double>();
  const std::vector<double> b = ref.to_vector<double>();
  const bool exact = !is_floating(ref.dtype());
  double scale = 0;
  for (double v : b)
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  auto allowed = [&](size_t i) { return exact ? 0.0 : tol.atol * scale + tol.rtol * std::fabs(b[i]); };
  if (mode().perturb && !a.empty()) {
    const size_t i = a.size() - 1;
    a[i] += exact ? 1.0 : (std::isfinite(b[i]) ? 4 * std::max(allowed(i), 1e-30) : 0.0);
    if (!exact && !std::isfinite(b[i])) a[i] = 0;
  }
  r.ok = true;
  size_t worst_i = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double ratio;
    if (std::isnan(b[i]) || std::isnan(a[i])) {
      ratio = std::isnan(a[i]) && std::isnan(b[i]) ? 0 : std::numeric_limits<double>::infinity();
    } else if (std::isinf(b[i]) || std::isinf(a[i])) {
      ratio = a[i] == b[i] ? 0 : std::numeric_limits<double>::infinity();
    } else {
      const double d = std::fabs(a[i] - b[i]), lim = allowed(i);
      ratio = d == 0 ? 0 : (lim > 0 ? d / lim : std::numeric_limits<double>::infinity());
    }
    if (ratio > r.worst || (i == 0 && ratio > 0)) {
      r.worst = ratio;
      worst_i = i;
    }
    if (ratio > 1) r.ok = false;
  }
  if (!r.ok || r.worst > 0) {
    os.precision(9);
    os << "worst element " << worst_i << ": device " << a[worst_i] << ", cpu " << b[worst_i] << " (allowed "
       << allowed(worst_i) << ", " << r.worst << "x the tolerance)";
    r.message = os.str();
  }
  return r;
}

}  // namespace loom::conformance
