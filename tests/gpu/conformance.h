// Shared by the CUDA conformance tests (tests/gpu): which device is under test,
// the per-dtype tolerances, and an element-by-element comparison of a result
// on that device against the CPU result for the same inputs.
#pragma once

#include <string>

#include "tensor/tensor.h"

namespace loom::conformance {

/// The device under test: cuda:0 by default. LOOM_CONFORMANCE_DEVICE=cpu turns
/// on the harness self-check instead: the "device" is the CPU again, with its
/// inputs laid out differently and one OpenMP thread, so every comparison runs
/// against a second, independent CPU computation. The self-check exists to test
/// this harness without a GPU; it says nothing about CUDA, and CTest never sets it.
struct Mode {
  bool available = false;  // false: every test skips with `why`
  bool self_check = false;
  /// LOOM_CONFORMANCE_PERTURB=1 (self-check only): one element of every result on
  /// the device side is moved by 4 times its tolerance, so every test must fail;
  /// proves that the comparisons can fail.
  bool perturb = false;
  Device device;
  std::string why;
};
const Mode& mode();

/// |dev - ref| <= atol * scale + rtol * |ref| per element, scale = max |ref| over
/// the finite elements of that result (so near-zero elements are judged at the
/// result's magnitude). Integer and u8 results must match exactly; NaN matches
/// only NaN, an infinity only the same infinity.
struct Tol {
  double atol, rtol;
};
/// The one table of tolerances, by the dtype an op computes in: `fwd` for
/// outputs, `grad` for gradients (a backward pass chains several roundings).
struct DTypeTol {
  DType dtype;
  Tol fwd, grad;
};
const DTypeTol& tolerance(DType dt);

/// The outcome of one comparison: ok, the worst element as a multiple of its
/// tolerance (<= 1 passes), and a message naming the element and both values.
struct Compared {
  bool ok = false;
  double worst = 0;
  std::string message;
};
/// Compares `dev` (on any device) with `ref` (on the CPU): shape, dtype, then
/// values. `expect_device` is where dev must live (undefined device check when
/// nullptr). Applies the self-check perturbation when it is on.
Compared compare(const Tensor& dev, const Tensor& ref, Tol tol, const Device* expect_device);

/// Copies a CPU tensor to the device under test (always a new tensor, never an
/// alias, even in the CPU self-check).
Tensor to_dut(const Tensor& t);

}  // namespace loom::conformance
