// Backend conformance, as ggml's test-backend-ops: every op of tensor/ops.h and
// every differentiable op of autograd/functions.h runs on random inputs on the
// CPU and on cuda:0, and the results (and, for the differentiable ops, the
// gradients autograd computes on each device) must agree within the per-dtype
// tolerances of conformance.cc (f32, bf16, f16; f64 where the backend has it).
// Each (op, dtype) is one test, named after the op, so a missing kernel is a
// failure naming the op (the table entry throws Unsupported; it is caught here),
// never a crash; every comparison prints one "[conformance]" line, and a run
// ends with a summary table of every op by dtype.
//
// Only the public API is used (ops::, loom::, nn::), never tensor/cuda internals.
// Inputs are drawn on the CPU and copied to the device; ops that take a
// Generator get one with the same seed on both sides (dropout must draw the same
// mask). Cases marked `strided` run a second time with every input of two or
// more dims laid out column-major on the device side (values unchanged).
//
// Required dtypes fail when unsupported; optional ones (f64 everywhere, f16 for
// the fused nn kernels, integer dtypes of elementwise ops) skip, visibly, when
// the backend throws Unsupported for them. Without a CUDA device every test
// skips. LOOM_CONFORMANCE_DEVICE=cpu is the harness self-check (conformance.h).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/optim.h"
#include "tensor/ops.h"
#include "tests/gpu/conformance.h"

using namespace loom;
using namespace loom::conformance;

namespace {

using Tensors = std::vector<Tensor>;
/// Draws a case's inputs on the CPU for compute dtype dt.
using Make = std::function<Tensors(DType dt, Generator& gen)>;
/// Runs the op on inputs that live on `dev`; returns the results to compare.
using Run = std::function<Tensors(const Tensors& in, Device dev)>;

const std::vector<DType> kAll = {DType::f32, DType::bf16, DType::f16, DType::f64};
const std::vector<DType> kNn = {DType::f32, DType::bf16};  // fused nn kernels: f16, f64 optional
const std::vector<DType> kInts = {DType::i64, DType::i32};

struct OpCase {
  OpCase(std::string name_, Make make_, Run run_, std::vector<DType> required_ = {DType::f32, DType::bf16, DType::f16},
         std::vector<DType> optional_ = {DType::f64}, bool strided_ = true, std::vector<int> grad_inputs_ = {})
      : name(std::move(name_)),
        make(std::move(make_)),
        run(std::move(run_)),
        required(std::move(required_)),
        optional(std::move(optional_)),
        strided(strided_),
        grad_inputs(std::move(grad_inputs_)) {}
  std::string name;
  Make make;
  Run run;
  std::vector<DType> required, optional;
  bool strided;  // also run with column-major inputs on the device side
  /// Gradient cases: which inputs are differentiable leaves (empty: every floating input).
  std::vector<int> grad_inputs;
};

// ---------------------------------------------------------------- input helpers

Tensor uni(const Shape& s, DType dt, Generator& g, double lo = -1, double hi = 1) {
  Tensor t = ops::rand(s, g, DType::f64);
  return ops::to(ops::add(ops::mul(t, hi - lo), lo), dt);
}
Tensor nrm(const Shape& s, DType dt, Generator& g) { return ops::to(ops::randn(s, g, DType::f64), dt); }
Tensor ints(int64_t lo, int64_t hi, const Shape& s, Generator& g, DType dt = DType::i64) {
  return ops::randint(lo, hi, s, g, dt);
}
/// Floating values that are small integers, so comparisons and max see ties.
Tensor tied(const Shape& s, DType dt, Generator& g) { return ops::to(ops::randint(-3, 4, s, g, DType::i64), dt); }
/// u8 0/1 mask.
Tensor mask01(const Shape& s, Generator& g) { return ops::to(ops::randint(0, 2, s, g, DType::i64), DType::u8); }
Tensor idx_vec(const std::vector<int64_t>& v) { return from_vector<int64_t>(v, {static_cast<int64_t>(v.size())}); }
Tensor on(const Tensor& t, Device dev) { return t.device() == dev ? t : ops::to(t, dev); }

/// The same values with the last two dims stored column-major (a non-contiguous view).
Tensor column_major(const Tensor& t) {
  if (t.dim() < 2 || t.size(-1) < 2 || t.size(-2) < 2) return t;
  return ops::transpose(ops::contiguous(ops::transpose(t, -1, -2)), -1, -2);
}

// ---------------------------------------------------------------- results and the summary

struct Summary {
  std::mutex mu;
  std::map<std::string, std::map<std::string, std::string>> cells;  // op -> column -> "ok" / "FAIL" / …
  std::vector<std::string> order;
  void note(const std::string& op, const std::string& column, const std::string& v) {
    std::lock_guard<std::mutex> lock(mu);
    if (!cells.count(op)) order.push_back(op);
    auto& c = cells[op][column];
    if (c.empty() || c == "ok" || v == "FAIL") c = v;
  }
};
Summary& summary() {
  static Summary s;
  return s;
}

class SummaryPrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    auto& s = summary();
    if (s.order.empty()) return;
    const std::vector<std::string> cols = {"f32", "bf16", "f16", "f64", "i64", "i32", "u8"};
    std::printf("\n[conformance summary] device %s%s\n", mode().device.str().c_str(),
                mode().self_check ? " (CPU self-check of the harness, not CUDA)" : "");
    std::printf("%-44s", "op");
    for (const auto& c : cols) std::printf(" %-6s", c.c_str());
    std::printf("\n");
    for (const auto& op : s.order) {
      std::printf("%-44s", op.c_str());
      for (const auto& c : cols) {
        auto it = s.cells[op].find(c);
        std::printf(" %-6s", it == s.cells[op].end() ? "." : it->second.c_str());
      }
      std::printf("\n");
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kSummary = ::testing::AddGlobalTestEnvironment(new SummaryPrinter);

#define REQUIRE_DEVICE() \
  if (!mode().available) GTEST_SKIP() << mode().why

/// Runs fn with one OpenMP thread in the self-check (the other side keeps the default).
template <typename F>
auto on_device_side(F&& fn) {
  struct Threads {
    int prev = omp_get_max_threads();
    Threads() {
      if (mode().self_check) omp_set_num_threads(1);
    }
    ~Threads() { omp_set_num_threads(prev); }
  } threads;
  return fn();
}

enum class Verdict { kPass, kFail, kUnsupported };

/// Compares results pairwise, printing one line per result; false on any mismatch.
bool compare_all(const std::string& label, const Tensors& dev, const Tensors& ref, Tol tol,
                 const std::vector<std::string>& names, std::string& failures) {
  bool ok = true;
  if (dev.size() != ref.size()) {
    failures += label + ": " + std::to_string(dev.size()) + " results on the device, " + std::to_string(ref.size()) +
                " on cpu\n";
    return false;
  }
  for (size_t i = 0; i < dev.size(); ++i) {
    const std::string what = i < names.size() ? names[i] : "result " + std::to_string(i);
    const Device expect = mode().device;
    // A floating result of an integer case (a conversion, rand) is judged by its own dtype.
    const Tol t = (tol.atol == 0 && tol.rtol == 0 && ref[i].defined() && is_floating(ref[i].dtype()))
                      ? tolerance(ref[i].dtype()).fwd
                      : tol;
    Compared c;
    try {
      c = compare(dev[i], ref[i], t, (dev[i].defined() && ref[i].defined()) ? &expect : nullptr);
    } catch (const std::exception& e) {
      c.ok = false;
      c.message = std::string("reading the result threw: ") + e.what();
    }
    std::printf("[conformance] %-52s %-10s %s  worst %.3g of tol%s%s\n", label.c_str(), what.c_str(),
                c.ok ? "ok  " : "FAIL", c.worst, c.message.empty() ? "" : "  ", c.ok ? "" : c.message.c_str());
    if (!c.ok) {
      ok = false;
      failures += label + " " + what + ": " + c.message + "\n";
    }
  }
  return ok;
}

/// The summary's column for a dtype.
std::string dt_col(DType dt) {
  switch (dt) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
    case DType::u8:
      return "u8";
  }
  return "?";
}

bool is_optional(const OpCase& c, DType dt) {
  return std::find(c.optional.begin(), c.optional.end(), dt) != c.optional.end();
}

/// The forward check of one case in one dtype and layout.
Verdict check_forward(const OpCase& c, DType dt, bool strided, std::string& failures) {
  const std::string label = c.name + " " + dtype_name(dt) + (strided ? " strided" : "");
  Generator gen(0xC0FFEE + std::hash<std::string>{}(c.name) % 1000);
  const Tensors base = c.make(dt, gen);
  Tensors in_cpu, in_dev;
  for (const auto& t : base) in_cpu.push_back(t.defined() ? ops::clone(t) : t);
  for (const auto& t : base) in_dev.push_back(strided && t.defined() ? column_major(to_dut(t)) : to_dut(t));
  Tensors ref = c.run(in_cpu, kCPU);
  Tensors got;
  try {
    got = on_device_side([&] { return c.run(in_dev, mode().device); });
  } catch (const Unsupported& e) {
    std::printf("[conformance] %-52s %s: %s\n", label.c_str(), is_optional(c, dt) ? "unsupported" : "FAIL", e.what());
    if (is_optional(c, dt)) return Verdict::kUnsupported;
    failures += label + ": no kernel: " + e.what() + "\n";
    return Verdict::kFail;
  } catch (const std::exception& e) {
    std::printf("[conformance] %-52s FAIL: threw %s\n", label.c_str(), e.what());
    failures += label + ": threw on the device: " + e.what() + "\n";
    return Verdict::kFail;
  }
  return compare_all(label, got, ref, tolerance(dt).fwd, {}, failures) ? Verdict::kPass : Verdict::kFail;
}

/// The gradient check: outputs of the op and the gradients of its leaves, with
/// the same random upstream gradient on both devices.
Verdict check_gradient(const OpCase& c, DType dt, std::string& failures) {
  const std::string label = c.name + " " + dtype_name(dt) + " grad";
  Generator gen(0xBEEF + std::hash<std::string>{}(c.name) % 1000);
  const Tensors base = c.make(dt, gen);
  std::vector<bool> leaf(base.size(), false);
  if (c.grad_inputs.empty()) {
    for (size_t i = 0; i < base.size(); ++i) leaf[i] = base[i].defined() && is_floating(base[i].dtype());
  } else {
    for (int i : c.grad_inputs) leaf[static_cast<size_t>(i)] = true;
  }
  auto leaves = [&](bool device_side) {
    Tensors in;
    for (size_t i = 0; i < base.size(); ++i) {
      Tensor t = device_side ? to_dut(base[i]) : (base[i].defined() ? ops::clone(base[i]) : base[i]);
      if (leaf[i]) t.set_requires_grad(true);
      in.push_back(t);
    }
    return in;
  };
  Generator rgen(77);
  Tensors in_cpu = leaves(false), in_dev = leaves(true);
  Tensor out_cpu = c.run(in_cpu, kCPU).at(0);
  const Tensor upstream = nrm(out_cpu.sizes(), out_cpu.dtype(), rgen);
  out_cpu.backward(upstream);
  Tensors ref = {detach(out_cpu)}, got;
  std::vector<std::string> names = {"output"};
  for (size_t i = 0; i < base.size(); ++i)
    if (leaf[i]) {
      ref.push_back(in_cpu[i].grad());
      names.push_back("grad[" + std::to_string(i) + "]");
    }
  try {
    on_device_side([&] {
      Tensor out = c.run(in_dev, mode().device).at(0);
      out.backward(to_dut(upstream));
      got.push_back(detach(out));
      for (size_t i = 0; i < base.size(); ++i)
        if (leaf[i]) got.push_back(in_dev[i].grad());
      return 0;
    });
  } catch (const Unsupported& e) {
    std::printf("[conformance] %-52s %s: %s\n", label.c_str(), is_optional(c, dt) ? "unsupported" : "FAIL", e.what());
    if (is_optional(c, dt)) return Verdict::kUnsupported;
    failures += label + ": no kernel: " + e.what() + "\n";
    return Verdict::kFail;
  } catch (const std::exception& e) {
    std::printf("[conformance] %-52s FAIL: threw %s\n", label.c_str(), e.what());
    failures += label + ": threw on the device: " + e.what() + "\n";
    return Verdict::kFail;
  }
  // The output is judged with the forward tolerance, gradients with the gradient one.
  bool ok = compare_all(label, {got[0]}, {ref[0]}, tolerance(dt).fwd, {"output"}, failures);
  ok &= compare_all(label, Tensors(got.begin() + 1, got.end()), Tensors(ref.begin() + 1, ref.end()), tolerance(dt).grad,
                    std::vector<std::string>(names.begin() + 1, names.end()), failures);
  return ok ? Verdict::kPass : Verdict::kFail;
}

// ---------------------------------------------------------------- the forward table (tensor/ops.h)

std::vector<OpCase> forward_cases() {
  std::vector<OpCase> v;
  auto add = [&](OpCase c) { v.push_back(std::move(c)); };
  auto none = [](DType, Generator&) { return Tensors{}; };
  auto one = [](Shape s, double lo = -1, double hi = 1) {
    return [s, lo, hi](DType dt, Generator& g) { return Tensors{uni(s, dt, g, lo, hi)}; };
  };
  auto two = [](Shape a, Shape b, double lo = -1, double hi = 1) {
    return [a, b, lo, hi](DType dt, Generator& g) { return Tensors{uni(a, dt, g, lo, hi), uni(b, dt, g, lo, hi)}; };
  };
  const std::vector<DType> floats_and_ints = {DType::f64, DType::i64, DType::i32};

  // ------------------------------------------------ creation (dtype and device as arguments)
  // The dtype of a creation case is the dtype created; `in` is empty.
  auto creation = [&](const std::string& name, std::function<Tensor(DType, Device)> f) {
    add({name, none, [f](const Tensors&, Device d) { return Tensors{f(DType::f32, d)}; }, {DType::f32}, {}, false});
    add({name + "_typed",
         [](DType dt, Generator&) { return Tensors{ops::zeros({1}, dt)}; },
         [f](const Tensors& in, Device d) { return Tensors{f(in[0].dtype(), d)}; },
         {DType::f32, DType::bf16, DType::f16},
         floats_and_ints,
         false});
  };
  creation("zeros", [](DType dt, Device d) { return ops::zeros({3, 5}, dt, d); });
  creation("ones", [](DType dt, Device d) { return ops::ones({4, 1, 3}, dt, d); });
  creation("full", [](DType dt, Device d) { return ops::full({2, 7}, 3.25, dt, d); });
  creation("arange", [](DType dt, Device d) { return ops::arange(-2.0, 9.5, 0.5, dt, d); });
  creation("scalar_tensor", [](DType dt, Device d) { return ops::scalar_tensor(2.5, dt, d); });
  creation("rand", [](DType dt, Device d) {
    Generator g(5);
    return ops::rand({33, 7}, g, is_floating(dt) ? dt : DType::f32, d);
  });
  creation("randn", [](DType dt, Device d) {
    Generator g(6);
    return ops::randn({65}, g, is_floating(dt) ? dt : DType::f32, d);
  });
  add({"arange_end_i64",
       none,
       [](const Tensors&, Device d) { return Tensors{ops::arange(37, DType::i64, d)}; },
       {DType::i64},
       {},
       false});
  add({"randint",
       none,
       [](const Tensors&, Device d) {
         Generator g(7);
         return Tensors{ops::randint(-5, 50, {4, 9}, g, DType::i64, d)};
       },
       {DType::i64},
       {},
       false});
  add({"causal_mask",
       none,
       [](const Tensors&, Device d) { return Tensors{ops::causal_mask(9, d)}; },
       {DType::u8},
       {},
       false});
  add({"like_ops",
       one({3, 4}),
       [](const Tensors& in, Device) {
         Tensor e = ops::empty_like(in[0]);
         ops::fill_(e, -1.5);
         return Tensors{ops::zeros_like(in[0]), ops::ones_like(in[0]), ops::full_like(in[0], 0.75), e};
       },
       kAll,
       {DType::i64},
       false});
  add({"uniform_",
       one({5, 33}),
       [](const Tensors& in, Device) {
         Generator g(11);
         ops::uniform_(in[0], -2.0, 3.0, g);
         return Tensors{in[0]};
       },
       {DType::f32, DType::bf16, DType::f16},
       {DType::f64},
       false});
  add({"normal_",
       one({7, 9}),
       [](const Tensors& in, Device) {
         Generator g(12);
         ops::normal_(in[0], 0.5, 2.0, g);
         return Tensors{in[0]};
       },
       {DType::f32, DType::bf16, DType::f16},
       {DType::f64},
       false});

  // ------------------------------------------------ copies, conversions, views
  add({"copy_transposed_src", two({6, 5}, {5, 6}), [](const Tensors& in, Device) {
         ops::copy_(in[0], ops::transpose(in[1], 0, 1));
         return Tensors{in[0]};
       }});
  add({"copy_broadcast", two({4, 3, 5}, {3, 1}), [](const Tensors& in, Device) {
         ops::copy_(in[0], in[1]);
         return Tensors{in[0]};
       }});
  add({"copy_into_strided_view", two({6, 8}, {3, 4}), [](const Tensors& in, Device) {
         ops::copy_(ops::slice(ops::slice(in[0], 0, 1, 6, 2), 1, 0, 8, 2), in[1]);
         return Tensors{in[0]};
       }});
  for (DType to_dt : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i64, DType::i32, DType::u8}) {
    add({std::string("to_") + dtype_name(to_dt), one({5, 7}, 0, 200), [to_dt](const Tensors& in, Device) {
           return Tensors{ops::to(in[0], to_dt), ops::to(ops::transpose(in[0], 0, 1), to_dt)};
         }});
    add({std::string("copy_convert_to_") + dtype_name(to_dt), one({5, 7}, 0, 200),
         [to_dt](const Tensors& in, Device d) {
           Tensor dst = ops::zeros({5, 7}, to_dt, d);
           ops::copy_(dst, in[0]);
           return Tensors{dst};
         }});
  }
  add({"to_from_ints",
       [](DType dt, Generator& g) {
         return Tensors{ints(-100, 100, {4, 6}, g, dt)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::to(in[0], DType::f32), ops::to(in[0], DType::bf16), ops::to(in[0], DType::f64)};
       },
       kInts,
       {}});
  add({"to_device_roundtrip",
       one({4, 6}),
       [](const Tensors& in, Device d) { return Tensors{on(ops::add(on(in[0], kCPU), 1.0), d)}; },
       kAll,
       {}});
  add({"fill_zero_strided",
       one({6, 8}),
       [](const Tensors& in, Device) {
         ops::fill_(ops::slice(in[0], 1, 1, 8, 3), 2.5);
         ops::zero_(ops::select(in[0], 0, 4));
         return Tensors{in[0]};
       },
       kAll,
       {DType::i64}});
  add({"clone_contiguous",
       one({3, 4, 5}),
       [](const Tensors& in, Device) {
         return Tensors{ops::clone(ops::transpose(in[0], 0, 2)), ops::contiguous(ops::permute(in[0], {2, 0, 1}))};
       },
       kAll,
       {DType::i64}});
  add({"views",
       one({2, 3, 4, 6}),
       [](const Tensors& in, Device) {
         const Tensor& x = in[0];
         Tensor c = ops::contiguous(x);
         return Tensors{ops::view(c, {6, 24}),         ops::reshape(x, {-1, 4}),
                        ops::permute(x, {3, 1, 0, 2}), ops::transpose(x, 1, 3),
                        ops::narrow(x, 3, 1, 4),       ops::slice(x, 3, -5, 6, 2),
                        ops::select(x, 2, 3),          ops::expand(ops::slice(x, 1, 0, 1), {2, 5, 4, 6}),
                        ops::unsqueeze(x, 2),          ops::squeeze(ops::narrow(x, 1, 0, 1), 1),
                        ops::flatten(x, 1, 2)};
       },
       kAll,
       {DType::i64}});
  add({"split",
       one({7, 10}),
       [](const Tensors& in, Device) {
         Tensors out = ops::split(in[0], 3, 1);
         for (auto& t : ops::split_with_sizes(in[0], {2, 4, 1}, 0)) out.push_back(t);
         return out;
       },
       kAll,
       {}});
  add({"ops_on_views", two({4, 6, 5}, {5, 6}), [](const Tensors& in, Device) {
         Tensor a = ops::transpose(in[0], 1, 2);                       // (4, 5, 6), strided
         Tensor b = ops::expand(ops::unsqueeze(in[1], 0), {4, 5, 6});  // batch stride 0
         return Tensors{ops::add(a, b), ops::mul(ops::slice(a, 2, 0, 6, 2), ops::slice(b, 2, 1, 6, 2)),
                        ops::exp(ops::select(a, 0, 2))};
       }});

  // ------------------------------------------------ elementwise binary, broadcasting
  using BinFn = Tensor (*)(const Tensor&, const Tensor&);
  const std::vector<std::pair<std::string, BinFn>> binaries = {
      {"add", ops::add}, {"sub", ops::sub}, {"mul", ops::mul}, {"maximum", ops::maximum}, {"minimum", ops::minimum},
  };
  for (const auto& [name, f] : binaries) {
    add({name,
         two({4, 1, 6}, {3, 6}, -2, 2),
         [f = f](const Tensors& in, Device) {
           return Tensors{f(in[0], in[1]), f(in[1], in[0])};
         },
         kAll,
         {}});
    add({name + "_ints",
         [](DType dt, Generator& g) {
           return Tensors{ints(-50, 50, {5, 7}, g, dt), ints(-50, 50, {7}, g, dt)};
         },
         [f = f](const Tensors& in, Device) { return Tensors{f(in[0], in[1])}; },
         {},
         kInts});
  }
  add({"div",
       [](DType dt, Generator& g) {
         return Tensors{uni({4, 1, 6}, dt, g, -2, 2), uni({3, 6}, dt, g, 0.5, 2)};
       },
       [](const Tensors& in, Device) { return Tensors{ops::div(in[0], in[1])}; },
       kAll,
       {}});
  add({"pow",
       [](DType dt, Generator& g) {
         return Tensors{uni({3, 5}, dt, g, 0.1, 2), uni({5}, dt, g, -2, 2)};
       },
       [](const Tensors& in, Device) { return Tensors{ops::pow(in[0], in[1])}; },
       kAll,
       {}});
  add({"maximum_ties",
       [](DType dt, Generator& g) {
         return Tensors{tied({6, 7}, dt, g), tied({6, 7}, dt, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::maximum(in[0], in[1]), ops::minimum(in[0], in[1])};
       }});
  // scalars
  add({"scalar_ops", one({5, 9}, 0.2, 2), [](const Tensors& in, Device) {
         const Tensor& x = in[0];
         return Tensors{ops::add(x, 2.5),  ops::mul(x, -1.5), ops::pow(x, 2.0), ops::pow(x, 0.5),
                        ops::pow(x, -1.0), ops::rsub(x, 1.0), ops::rdiv(x, 2.0)};
       }});
  add({"scalar_ops_ints",
       [](DType dt, Generator& g) {
         return Tensors{ints(-9, 9, {4, 5}, g, dt)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::add(in[0], 3.0), ops::mul(in[0], 2.0), ops::rsub(in[0], 1.0)};
       },
       {},
       kInts});
  // comparisons (u8), with ties
  add({"comparisons",
       [](DType dt, Generator& g) {
         return Tensors{tied({5, 6}, dt, g), tied({6}, dt, g)};
       },
       [](const Tensors& in, Device) {
         const Tensor &a = in[0], &b = in[1];
         return Tensors{ops::eq(a, b), ops::ne(a, b), ops::lt(a, b),   ops::le(a, b),
                        ops::gt(a, b), ops::ge(a, b), ops::gt(a, 0.5), ops::lt(a, -0.5)};
       },
       kAll, kInts});
  // in place
  add({"add_", two({4, 6}, {6}), [](const Tensors& in, Device) {
         ops::add_(in[0], in[1], 0.5);
         ops::add_(in[0], 1.25);
         return Tensors{in[0]};
       }});
  add({"mul_", two({4, 6}, {4, 1}), [](const Tensors& in, Device) {
         ops::mul_(in[0], in[1]);
         ops::mul_(in[0], -3.0);
         return Tensors{in[0]};
       }});
  add({"addcmul_addcdiv_lerp_",
       [](DType dt, Generator& g) {
         return Tensors{uni({5, 8}, dt, g), uni({5, 8}, dt, g), uni({8}, dt, g, 0.5, 2), uni({5, 8}, dt, g)};
       },
       [](const Tensors& in, Device) {
         Tensor a = in[0], b = in[3];
         ops::addcmul_(a, in[1], in[2], 0.3);
         ops::addcdiv_(a, in[1], in[2], -0.7);
         ops::lerp_(b, a, 0.25);
         return Tensors{a, b};
       }});
  add({"in_place_on_view", two({6, 6}, {3, 6}), [](const Tensors& in, Device) {
         ops::add_(ops::slice(in[0], 0, 0, 6, 2), in[1], 2.0);
         ops::mul_(ops::transpose(in[0], 0, 1), 0.5);
         return Tensors{in[0]};
       }});

  // ------------------------------------------------ unary
  using UnFn = Tensor (*)(const Tensor&);
  const std::vector<std::tuple<std::string, UnFn, double, double>> unaries = {
      {"neg", ops::neg, -3, 3},   {"abs", ops::abs, -3, 3},         {"exp", ops::exp, -4, 4},
      {"log", ops::log, 0.05, 5}, {"sqrt", ops::sqrt, 0, 5},        {"rsqrt", ops::rsqrt, 0.05, 5},
      {"tanh", ops::tanh, -4, 4}, {"sigmoid", ops::sigmoid, -8, 8}, {"relu", ops::relu, -3, 3},
      {"sin", ops::sin, -4, 4},   {"cos", ops::cos, -4, 4},         {"silu", ops::silu, -6, 6},
  };
  for (const auto& [name, f, lo, hi] : unaries)
    add({name, one({7, 11}, lo, hi), [f = f](const Tensors& in, Device) { return Tensors{f(in[0])}; }});
  add({"neg_abs_ints",
       [](DType dt, Generator& g) {
         return Tensors{ints(-9, 9, {4, 5}, g, dt)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::neg(in[0]), ops::abs(in[0]), ops::relu(in[0])};
       },
       {},
       kInts});
  add({"clamp", one({7, 11}, -2, 2), [](const Tensors& in, Device) { return Tensors{ops::clamp(in[0], -0.5, 0.75)}; }});
  add({"gelu", one({7, 11}, -5, 5), [](const Tensors& in, Device) {
         return Tensors{ops::gelu(in[0], GeluApprox::kNone), ops::gelu(in[0], GeluApprox::kTanh)};
       }});
  add({"gelu_silu_backward", two({6, 9}, {6, 9}, -4, 4), [](const Tensors& in, Device) {
         return Tensors{ops::gelu_backward(in[0], in[1], GeluApprox::kNone),
                        ops::gelu_backward(in[0], in[1], GeluApprox::kTanh), ops::silu_backward(in[0], in[1])};
       }});

  // ------------------------------------------------ selection
  add({"where",
       [](DType dt, Generator& g) {
         return Tensors{mask01({5, 1}, g), uni({5, 6}, dt, g), uni({6}, dt, g)};
       },
       [](const Tensors& in, Device) { return Tensors{ops::where(in[0], in[1], in[2])}; },
       kAll,
       {DType::i64}});
  add({"masked_fill",
       [](DType dt, Generator& g) {
         return Tensors{uni({4, 7}, dt, g), mask01({7}, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::masked_fill(in[0], in[1], -3.5),
                        ops::masked_fill(in[0], in[1], -std::numeric_limits<double>::infinity())};
       }});
  add({"cat",
       [](DType dt, Generator& g) {
         return Tensors{uni({2, 5}, dt, g), uni({3, 5}, dt, g), uni({5, 4}, dt, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::cat({in[0], in[1]}, 0), ops::cat({in[0], ops::transpose(in[2], 0, 1)}, 0),
                        ops::cat({ops::transpose(in[0], 0, 1), in[2]}, 1)};
       },
       kAll,
       {DType::i64}});
  add({"stack",
       two({3, 4}, {3, 4}),
       [](const Tensors& in, Device) {
         return Tensors{ops::stack({in[0], in[1]}, 0), ops::stack({in[0], in[1], in[0]}, 2)};
       },
       kAll,
       {DType::i64}});
  add({"index_select",
       [](DType dt, Generator& g) {
         return Tensors{uni({6, 5, 4}, dt, g), ints(0, 5, {7}, g)};
       },
       [](const Tensors& in, Device d) {
         Tensor i0 = on(idx_vec({5, 0, 0, 3, -1}), d);  // negative indices wrap
         return Tensors{ops::index_select(in[0], 0, i0), ops::index_select(in[0], 1, in[1]),
                        ops::index_select(ops::transpose(in[0], 0, 2), 2, in[1])};
       },
       kAll,
       {DType::i64}});

  // ------------------------------------------------ reductions
  add({"sum", one({5, 6, 7}), [](const Tensors& in, Device) {
         const Tensor& x = in[0];
         return Tensors{ops::sum(x), ops::sum(x, {1}), ops::sum(x, {0, 2}, true), ops::sum(x, {-1}),
                        ops::sum(ops::transpose(x, 0, 2), {0})};
       }});
  add({"sum_large",
       one({3, 70000}),
       [](const Tensors& in, Device) {
         return Tensors{ops::sum(in[0]), ops::sum(in[0], {1})};
       },
       {DType::f32},
       {DType::f64}});
  add({"sum_ints",
       [](DType dt, Generator& g) {
         return Tensors{ints(-100, 100, {6, 9}, g, dt)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::sum(in[0]), ops::sum(in[0], {0})};
       },
       kInts,
       {}});
  add({"sum_u8",
       [](DType, Generator& g) {
         return Tensors{mask01({6, 9}, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::sum(in[0]), ops::sum(in[0], {1})};
       },
       {DType::u8},
       {}});
  add({"mean", one({5, 6, 7}), [](const Tensors& in, Device) {
         return Tensors{ops::mean(in[0]), ops::mean(in[0], {1}), ops::mean(in[0], {0, 2}, true)};
       }});
  add({"var", one({5, 6, 7}, -2, 3), [](const Tensors& in, Device) {
         return Tensors{ops::var(in[0]), ops::var(in[0], {-1}), ops::var(in[0], {0, 1}, 0, true),
                        ops::var(ops::transpose(in[0], 1, 2), {1})};
       }});
  add({"max", one({5, 6, 7}), [](const Tensors& in, Device) {
         auto [v1, i1] = ops::max(in[0], 1);
         auto [v2, i2] = ops::max(in[0], -1, true);
         return Tensors{ops::max(in[0]), v1, i1, v2, i2};
       }});
  add({"max_argmax_ties",
       [](DType dt, Generator& g) {
         return Tensors{tied({6, 9}, dt, g)};
       },
       [](const Tensors& in, Device) {
         auto [v, i] = ops::max(in[0], 1);
         return Tensors{v, i, ops::argmax(in[0], 0), ops::argmax(in[0], 1, true), ops::max(in[0])};
       },
       kAll, kInts});
  add({"max_nan", one({4, 5}), [](const Tensors& in, Device) {
         Tensor x = ops::clone(in[0]);
         ops::fill_(ops::narrow(ops::select(x, 0, 2), 0, 3, 1), std::nan(""));
         return Tensors{ops::max(x), ops::max(x, 1).first};
       }});
  add({"sum_to", one({4, 3, 5}), [](const Tensors& in, Device) {
         return Tensors{ops::sum_to(in[0], {3, 5}), ops::sum_to(in[0], {4, 1, 5}), ops::sum_to(in[0], {1, 1, 1}),
                        ops::sum_to(in[0], {4, 3, 5})};
       }});
  add({"norm",
       one({9, 1000}),
       [](const Tensors& in, Device) {
         return Tensors{ops::norm(in[0]), ops::norm(ops::slice(in[0], 1, 0, 1000, 3))};
       },
       kAll,
       {}});

  // ------------------------------------------------ linear algebra
  add({"matmul_1d_2d",
       [](DType dt, Generator& g) {
         return Tensors{uni({33}, dt, g), uni({33}, dt, g), uni({17, 33}, dt, g), uni({33, 9}, dt, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::matmul(in[0], in[1]), ops::matmul(in[2], in[0]), ops::matmul(in[0], in[3]),
                        ops::matmul(in[2], in[3])};
       }});
  add({"matmul_transposed", two({33, 17}, {9, 33}), [](const Tensors& in, Device) {
         Tensor at = ops::transpose(in[0], 0, 1), bt = ops::transpose(in[1], 0, 1);  // (17, 33), (33, 9)
         return Tensors{ops::matmul(at, bt), ops::matmul(ops::contiguous(at), bt),
                        ops::matmul(at, ops::contiguous(bt))};
       }});
  add({"matmul_batched", two({3, 17, 33}, {3, 33, 9}), [](const Tensors& in, Device) {
         return Tensors{ops::matmul(in[0], in[1]), ops::matmul(in[0], ops::select(in[1], 0, 1)),
                        ops::matmul(ops::transpose(in[1], 1, 2), ops::transpose(in[0], 1, 2))};
       }});
  add({"matmul_broadcast_batch", two({2, 1, 5, 8}, {3, 8, 4}), [](const Tensors& in, Device) {
         return Tensors{ops::matmul(in[0], in[1]), ops::matmul(ops::expand(in[0], {2, 3, 5, 8}), in[1])};
       }});
  add({"matmul_large", two({130, 257}, {257, 96}),
       [](const Tensors& in, Device) { return Tensors{ops::matmul(in[0], in[1])}; }});
  add({"linear",
       [](DType dt, Generator& g) {
         return Tensors{uni({2, 5, 16}, dt, g), uni({12, 16}, dt, g), uni({12}, dt, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::linear(in[0], in[1], in[2]), ops::linear(in[0], in[1], Tensor()),
                        ops::linear(ops::select(in[0], 1, 2), in[1], in[2])};
       }});
  add({"gemm_",
       [](DType dt, Generator& g) {
         return Tensors{uni({7, 9}, dt, g), uni({11, 7}, dt, g), uni({11, 9}, dt, g)};
       },
       [](const Tensors& in, Device) {
         Tensor out = ops::clone(in[0]);  // beta != 0 reads it
         ops::gemm_(out, ops::transpose(in[1], 0, 1), in[2], 2.0, 0.5);
         Tensor out2 = ops::zeros_like(in[0]);
         ops::gemm_(out2, ops::transpose(in[1], 0, 1), in[2]);
         return Tensors{out, out2};
       },
       {DType::f32, DType::bf16, DType::f16},
       {DType::f64},
       false});

  // ------------------------------------------------ neural-network kernels
  add({"softmax",
       one({6, 5, 37}, -4, 4),
       [](const Tensors& in, Device) {
         return Tensors{ops::softmax(in[0], -1), ops::softmax(in[0], 1), ops::log_softmax(in[0], -1),
                        ops::log_softmax(in[0], 0)};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"softmax_with_neg_inf",
       one({9, 9}),
       [](const Tensors& in, Device d) {
         Tensor x = ops::masked_fill(in[0], ops::causal_mask(9, d), -std::numeric_limits<double>::infinity());
         return Tensors{ops::softmax(x, -1), ops::log_softmax(x, -1)};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"softmax_backward",
       two({6, 37}, {6, 37}, -3, 3),
       [](const Tensors& in, Device) {
         Tensor y = ops::softmax(in[1], -1), ly = ops::log_softmax(in[1], -1);
         return Tensors{ops::softmax_backward(in[0], y, -1), ops::log_softmax_backward(in[0], ly, -1),
                        ops::softmax_backward(in[0], ops::softmax(in[1], 0), 0)};
       },
       kNn,
       {DType::f16, DType::f64}});
  auto norm_inputs = [](DType dt, Generator& g) {
    return Tensors{ops::add(nrm({3, 5, 48}, dt, g), 0.5), uni({48}, dt, g, 0.5, 1.5), uni({48}, dt, g),
                   nrm({3, 5, 48}, dt, g)};
  };
  add({"layer_norm",
       norm_inputs,
       [](const Tensors& in, Device) {
         auto r = ops::layer_norm(in[0], in[1], in[2], 1e-5);
         auto r2 = ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5);
         return Tensors{r.y, r.mean, r.rstd, r2.y};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"layer_norm_backward",
       norm_inputs,
       [](const Tensors& in, Device) {
         auto r = ops::layer_norm(in[0], in[1], in[2], 1e-5);
         auto g = ops::layer_norm_backward(in[3], in[0], in[1], r.mean, r.rstd, true);
         return Tensors{g.dx, g.dw, g.db};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"rms_norm",
       norm_inputs,
       [](const Tensors& in, Device) {
         auto r = ops::rms_norm(in[0], in[1], 1e-6);
         return Tensors{r.y, r.rstd, ops::rms_norm(in[0], Tensor(), 1e-6).y};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"rms_norm_backward",
       norm_inputs,
       [](const Tensors& in, Device) {
         auto r = ops::rms_norm(in[0], in[1], 1e-6);
         auto g = ops::rms_norm_backward(in[3], in[0], in[1], r.rstd);
         return Tensors{g.dx, g.dw};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"embedding",
       [](DType dt, Generator& g) {
         return Tensors{uni({50, 24}, dt, g), ints(0, 50, {3, 7}, g), ints(0, 50, {9}, g, DType::i32)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::embedding(in[0], in[1]), ops::embedding(in[0], in[2])};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"embedding_backward",
       [](DType dt, Generator& g) {
         // 21 indices into 6 rows: many repeats, so accumulation order matters
         return Tensors{uni({3, 7, 24}, dt, g), ints(0, 6, {3, 7}, g), ints(0, 50, {3, 7}, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::embedding_backward(in[0], in[1], 6), ops::embedding_backward(in[0], in[2], 50)};
       },
       kNn,
       {DType::f16, DType::f64}});
  auto ce_inputs = [](DType dt, Generator& g) {
    auto tv = ints(0, 61, {12}, g).to_vector<int64_t>();
    tv[2] = -100;
    tv[7] = -100;
    return Tensors{uni({12, 61}, dt, g, -4, 4), from_vector<int64_t>(tv, {12}), ops::scalar_tensor(1.5, dt)};
  };
  add({"cross_entropy",
       ce_inputs,
       [](const Tensors& in, Device d) {
         auto r = ops::cross_entropy(in[0], in[1]);
         return Tensors{r.loss, r.lse, ops::scalar_tensor(static_cast<double>(r.count), DType::i64, d)};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"cross_entropy_all_ignored",
       ce_inputs,
       [](const Tensors& in, Device d) {
         auto r = ops::cross_entropy(in[0], ops::full({12}, -1, DType::i64, d), -1);
         return Tensors{r.loss, r.lse, ops::scalar_tensor(static_cast<double>(r.count), DType::i64, d)};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"cross_entropy_backward",
       ce_inputs,
       [](const Tensors& in, Device) {
         auto r = ops::cross_entropy(in[0], in[1]);
         return Tensors{ops::cross_entropy_backward(in[2], in[0], in[1], r.lse, r.count)};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"dropout",
       one({9, 37}),
       [](const Tensors& in, Device d) {
         Generator g(2024);
         auto [y, mask] = ops::dropout(in[0], 0.3, g);
         auto [y2, mask2] = ops::dropout(in[0], 0.5, g);  // continues the stream
         return Tensors{y, mask, y2, mask2, ops::scalar_tensor(static_cast<double>(g.offset()), DType::i64, d)};
       },
       kNn,
       {DType::f16, DType::f64}});
  add({"rope",
       [](DType dt, Generator& g) {
         return Tensors{uni({2, 3, 5, 8}, dt, g), uni({5, 4}, dt, g), uni({5, 4}, dt, g)};
       },
       [](const Tensors& in, Device) {
         return Tensors{ops::rope(in[0], in[1], in[2]), ops::rope(in[0], in[1], in[2], true)};
       },
       kNn,
       {DType::f16, DType::f64}});
  return v;
}

// ---------------------------------------------------------------- the gradient table (autograd/functions.h)

std::vector<OpCase> gradient_cases() {
  std::vector<OpCase> v;
  auto add = [&](const std::string& name, Make make, std::function<Tensor(const Tensors&, Device)> f,
                 std::vector<DType> required = {DType::f32, DType::bf16, DType::f16},
                 std::vector<DType> optional = {DType::f64}, std::vector<int> grad_inputs = {}) {
    v.push_back({name, std::move(make), [f](const Tensors& in, Device d) { return Tensors{f(in, d)}; },
                 std::move(required), std::move(optional), false, std::move(grad_inputs)});
  };
  auto one = [](Shape s, double lo = -1, double hi = 1) {
    return [s, lo, hi](DType dt, Generator& g) { return Tensors{uni(s, dt, g, lo, hi)}; };
  };
  auto two = [](Shape a, Shape b, double lo = -1, double hi = 1) {
    return [a, b, lo, hi](DType dt, Generator& g) { return Tensors{uni(a, dt, g, lo, hi), uni(b, dt, g, lo, hi)}; };
  };

  // views and conversions: gradients flow back into the base
  add("views", one({2, 3, 4, 6}), [](const Tensors& in, Device) {
    const Tensor& x = in[0];
    Tensor a = loom::view(loom::contiguous(loom::transpose(x, 1, 2)), {2, 4, 18});
    Tensor b = loom::reshape(loom::permute(x, {3, 0, 1, 2}), {6, 24});
    Tensor c = loom::flatten(loom::narrow(loom::slice(x, 3, 0, 6, 2), 1, 1, 2));
    Tensor d = loom::squeeze(loom::unsqueeze(loom::select(x, 0, 1), 0), 0);
    Tensor e = loom::expand(loom::slice(x, 1, 0, 1), {2, 3, 4, 6});
    return loom::sum(loom::sum(a, {2})) + loom::mul(loom::sum(b), 0.5) + loom::sum(c) * 2.0 +
           loom::sum(loom::mul(d, d)) + loom::sum(loom::mul(e, x));
  });
  add("to_dtype", one({5, 6}), [](const Tensors& in, Device) {
    return loom::mul(loom::to(loom::mul(loom::to(in[0], DType::f32), 3.0), in[0].dtype()), in[0]);
  });
  add("to_device_and_back", one({5, 6}),
      [](const Tensors& in, Device d) { return loom::to(loom::exp(loom::to(in[0], kCPU)), d) * in[0]; });
  // elementwise with broadcasting
  add("add_sub_mul", two({4, 1, 6}, {3, 6}), [](const Tensors& in, Device) {
    return loom::add(in[0], in[1]) * loom::sub(in[1], in[0]) + loom::mul(in[0], in[1]);
  });
  add(
      "div",
      [](DType dt, Generator& g) {
        return Tensors{uni({4, 1, 6}, dt, g), uni({3, 6}, dt, g, 0.5, 2)};
      },
      [](const Tensors& in, Device) { return loom::div(in[0], in[1]); });
  add(
      "pow",
      [](DType dt, Generator& g) {
        return Tensors{uni({3, 5}, dt, g, 0.2, 2), uni({5}, dt, g, -2, 2)};
      },
      [](const Tensors& in, Device) { return loom::pow(in[0], in[1]) + loom::pow(in[0], 3.0); });
  add("maximum_minimum", two({5, 6}, {6}),
      [](const Tensors& in, Device) { return loom::maximum(in[0], in[1]) * 2.0 + loom::minimum(in[0], in[1]); });
  add("scalar_operators", one({5, 7}, 0.3, 2), [](const Tensors& in, Device) {
    const Tensor& x = in[0];
    return (x + 1.0) * (2.0 - x) + 3.0 / x - x / 4.0 + loom::add(x, -0.5) * loom::mul(x, 1.5) + (-x);
  });
  using UnFn = Tensor (*)(const Tensor&);
  const std::vector<std::tuple<std::string, UnFn, double, double>> unaries = {
      {"neg", loom::neg, -3, 3},   {"abs", loom::abs, -3, 3},         {"exp", loom::exp, -3, 3},
      {"log", loom::log, 0.1, 5},  {"sqrt", loom::sqrt, 0.1, 5},      {"rsqrt", loom::rsqrt, 0.1, 5},
      {"tanh", loom::tanh, -3, 3}, {"sigmoid", loom::sigmoid, -6, 6}, {"relu", loom::relu, -3, 3},
      {"sin", loom::sin, -4, 4},   {"cos", loom::cos, -4, 4},         {"silu", loom::silu, -6, 6},
  };
  for (const auto& [name, f, lo, hi] : unaries)
    add(name, one({7, 11}, lo, hi), [f = f](const Tensors& in, Device) { return f(in[0]); });
  add("clamp", one({7, 11}, -2, 2), [](const Tensors& in, Device) { return loom::clamp(in[0], -0.5, 0.75); });
  add("gelu", one({7, 11}, -5, 5), [](const Tensors& in, Device) { return loom::gelu(in[0]); });
  add("gelu_tanh", one({7, 11}, -5, 5), [](const Tensors& in, Device) { return loom::gelu(in[0], GeluApprox::kTanh); });
  // selection
  add(
      "where",
      [](DType dt, Generator& g) {
        return Tensors{mask01({5, 1}, g), uni({5, 6}, dt, g), uni({6}, dt, g)};
      },
      [](const Tensors& in, Device) { return loom::where(in[0], in[1], in[2]); });
  add(
      "masked_fill",
      [](DType dt, Generator& g) {
        return Tensors{uni({4, 7}, dt, g), mask01({7}, g)};
      },
      [](const Tensors& in, Device) { return loom::masked_fill(in[0], in[1], 2.0); });
  add("cat_stack", two({2, 5}, {3, 5}), [](const Tensors& in, Device) {
    Tensor c = loom::cat({in[0], in[1], in[0]}, 0);                    // (7, 5)
    Tensor s = loom::stack({loom::narrow(in[1], 0, 0, 2), in[0]}, 1);  // (2, 2, 5)
    return loom::sum(c, {0}) + loom::sum(loom::mul(s, s), {0, 1});
  });
  add("split", one({7, 10}), [](const Tensors& in, Device) {
    auto a = loom::split(in[0], 3, 1);                  // widths 3, 3, 3, 1
    auto b = loom::split_with_sizes(in[0], {2, 5}, 0);  // heights 2, 5
    return loom::sum(a[0] * a[1]) + loom::sum(a[3]) * 3.0 + loom::sum(loom::exp(b[0])) + loom::sum(b[1] * 0.5);
  });
  add(
      "index_select",
      [](DType dt, Generator& g) {
        return Tensors{uni({6, 5}, dt, g), ints(0, 6, {9}, g)};
      },
      [](const Tensors& in, Device) { return loom::index_select(in[0], 0, in[1]) * 2.0; });
  // reductions
  add("sum_mean", one({5, 6, 7}), [](const Tensors& in, Device) {
    return loom::sum(in[0], {1}) + loom::mean(in[0], {1}) * 3.0 + loom::mean(in[0]);
  });
  add("var", one({5, 6, 7}, -2, 3), [](const Tensors& in, Device) {
    return loom::var(in[0], {2}) + loom::sum(loom::var(in[0], {0, 1}, 0, true));
  });
  add("max", one({5, 6, 7}), [](const Tensors& in, Device) {
    return loom::max(in[0], 1).first + loom::max(in[0]) + loom::sum(loom::max(in[0], -1, true).first, {1});
  });
  // linear algebra
  add("matmul_2d", two({17, 33}, {33, 9}), [](const Tensors& in, Device) { return loom::matmul(in[0], in[1]); });
  add("matmul_1d", two({33}, {33, 9}), [](const Tensors& in, Device) {
    return loom::matmul(in[0], in[1]) + loom::sum(loom::matmul(loom::transpose(in[1], 0, 1), in[0]));
  });
  add("matmul_batched_broadcast", two({2, 1, 5, 8}, {3, 8, 4}),
      [](const Tensors& in, Device) { return loom::matmul(in[0], in[1]); });
  add("matmul_transposed", two({33, 17}, {9, 33}), [](const Tensors& in, Device) {
    return loom::matmul(loom::transpose(in[0], 0, 1), loom::transpose(in[1], 0, 1));
  });
  add(
      "linear",
      [](DType dt, Generator& g) {
        return Tensors{uni({2, 5, 16}, dt, g), uni({12, 16}, dt, g), uni({12}, dt, g)};
      },
      [](const Tensors& in, Device) { return loom::linear(in[0], in[1], in[2]) + loom::linear(in[0], in[1]); });
  // nn
  add("softmax", one({6, 37}, -3, 3),
      [](const Tensors& in, Device) { return loom::softmax(in[0], -1) + loom::softmax(in[0], 0); }, kNn,
      {DType::f16, DType::f64});
  add("log_softmax", one({6, 37}, -3, 3),
      [](const Tensors& in, Device) { return loom::log_softmax(in[0], -1) + loom::log_softmax(in[0], 0); }, kNn,
      {DType::f16, DType::f64});
  auto norm_inputs = [](DType dt, Generator& g) {
    return Tensors{ops::add(nrm({3, 5, 48}, dt, g), 0.5), uni({48}, dt, g, 0.5, 1.5), uni({48}, dt, g)};
  };
  add("layer_norm", norm_inputs, [](const Tensors& in, Device) { return loom::layer_norm(in[0], in[1], in[2], 1e-5); },
      kNn, {DType::f16, DType::f64});
  add("rms_norm", norm_inputs, [](const Tensors& in, Device) { return loom::rms_norm(in[0], in[1], 1e-6) * in[2]; },
      kNn, {DType::f16, DType::f64});
  add("norms_without_weights", norm_inputs,
      [](const Tensors& in, Device) {
        return loom::layer_norm(in[0], Tensor(), Tensor(), 1e-5) + loom::rms_norm(in[0], Tensor(), 1e-6) * in[2];
      },
      kNn, {DType::f16, DType::f64}, {0, 2});
  add(
      "embedding",
      [](DType dt, Generator& g) {
        return Tensors{uni({9, 24}, dt, g), ints(0, 9, {3, 7}, g)};
      },
      [](const Tensors& in, Device) { return loom::embedding(in[0], in[1]); }, kNn, {DType::f16, DType::f64});
  add(
      "cross_entropy",
      [](DType dt, Generator& g) {
        auto tv = ints(0, 61, {12}, g).to_vector<int64_t>();
        tv[3] = tv[8] = -100;
        return Tensors{uni({12, 61}, dt, g, -4, 4), from_vector<int64_t>(tv, {12})};
      },
      [](const Tensors& in, Device) { return loom::cross_entropy(in[0], in[1]); }, kNn, {DType::f16, DType::f64});
  add(
      "cross_entropy_ignore_index_7",
      [](DType dt, Generator& g) {
        auto tv = ints(0, 30, {10}, g).to_vector<int64_t>();
        tv[0] = tv[5] = tv[6] = 7;
        return Tensors{uni({10, 30}, dt, g, -4, 4), from_vector<int64_t>(tv, {10})};
      },
      [](const Tensors& in, Device) { return loom::cross_entropy(in[0], in[1], 7); }, kNn, {DType::f16, DType::f64});
  add("dropout", one({9, 37}),
      [](const Tensors& in, Device) {
        Generator g(99);
        return loom::dropout(in[0], 0.25, true, g);
      },
      kNn, {DType::f16, DType::f64});
  add(
      "rope",
      [](DType dt, Generator& g) {
        return Tensors{uni({2, 3, 5, 8}, dt, g), uni({5, 4}, dt, g), uni({5, 4}, dt, g)};
      },
      [](const Tensors& in, Device) { return loom::rope(in[0], in[1], in[2]); }, kNn, {DType::f16, DType::f64}, {0});
  // attention: causal, grouped-query (H = 3 * Hkv), and full; T not a tile multiple
  auto qkv = [](int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D) {
    return [=](DType dt, Generator& g) {
      return Tensors{nrm({2, H, T, D}, dt, g), nrm({2, Hkv, S, D}, dt, g), nrm({2, Hkv, S, D}, dt, g)};
    };
  };
  add("sdpa_causal", qkv(4, 4, 37, 37, 16),
      [](const Tensors& in, Device) { return loom::scaled_dot_product_attention(in[0], in[1], in[2], true); }, kNn,
      {DType::f16, DType::f64});
  add("sdpa_causal_gqa", qkv(6, 2, 29, 29, 32),
      [](const Tensors& in, Device) { return loom::scaled_dot_product_attention(in[0], in[1], in[2], true); }, kNn,
      {DType::f16, DType::f64});
  add("sdpa_full_cross", qkv(4, 2, 9, 21, 16),
      [](const Tensors& in, Device) { return loom::scaled_dot_product_attention(in[0], in[1], in[2], false); }, kNn,
      {DType::f16, DType::f64});
  add("sdpa_causal_d64_long", qkv(2, 1, 130, 130, 64),
      [](const Tensors& in, Device) { return loom::scaled_dot_product_attention(in[0], in[1], in[2], true); }, kNn,
      {DType::f16, DType::f64});
  return v;
}

// ---------------------------------------------------------------- registration: one test per (op, dtype)

struct Param {
  const OpCase* op;
  DType dtype;
  bool gradient;
};

/// What gtest (and so the CTest test list) prints for a parameter: "op dtype [grad]".
void PrintTo(const Param& p, std::ostream* os) {
  *os << p.op->name << ' ' << dtype_name(p.dtype) << (p.gradient ? " grad" : "");
}

const std::vector<OpCase>& forward_table() {
  static const std::vector<OpCase> t = forward_cases();
  return t;
}
const std::vector<OpCase>& gradient_table() {
  static const std::vector<OpCase> t = gradient_cases();
  return t;
}

std::vector<Param> params_of(const std::vector<OpCase>& table, bool gradient) {
  std::vector<Param> out;
  for (const auto& c : table) {
    for (DType dt : c.required) out.push_back({&c, dt, gradient});
    for (DType dt : c.optional) out.push_back({&c, dt, gradient});
  }
  return out;
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  std::string s = info.param.op->name + "_" + dtype_name(info.param.dtype);
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

class Conformance : public ::testing::TestWithParam<Param> {};

TEST_P(Conformance, MatchesCpu) {
  REQUIRE_DEVICE();
  const Param& p = GetParam();
  const OpCase& c = *p.op;
  const std::string row = (p.gradient ? "grad " : "") + c.name;
  std::string failures;
  Verdict verdict;
  if (p.gradient) {
    verdict = check_gradient(c, p.dtype, failures);
  } else {
    verdict = check_forward(c, p.dtype, false, failures);
    if (verdict == Verdict::kPass && c.strided) {
      Verdict s = check_forward(c, p.dtype, true, failures);
      if (s != Verdict::kPass) verdict = Verdict::kFail;
    }
  }
  summary().note(row, dt_col(p.dtype), verdict == Verdict::kPass ? "ok" : verdict == Verdict::kFail ? "FAIL" : "unsup");
  if (verdict == Verdict::kUnsupported)
    GTEST_SKIP() << c.name << ": the backend has no " << dtype_name(p.dtype) << " kernel (an optional dtype)";
  EXPECT_EQ(verdict, Verdict::kPass) << "op " << c.name << " (" << dtype_name(p.dtype) << ") differs from cpu:\n"
                                     << failures;
}

INSTANTIATE_TEST_SUITE_P(Ops, Conformance, ::testing::ValuesIn(params_of(forward_table(), false)), param_name);
INSTANTIATE_TEST_SUITE_P(Grads, Conformance, ::testing::ValuesIn(params_of(gradient_table(), true)), param_name);

// ---------------------------------------------------------------- AdamW on device parameters

/// "p<i>" (a function: GCC 12 misreports -Wrestrict on an inlined "p" + to_string).
std::string param_label(size_t i) {
  std::ostringstream os;
  os << 'p' << i;
  return os.str();
}

TEST(CudaConformance, AdamWStepsMatchCpu) {
  REQUIRE_DEVICE();
  Generator g(31);
  const std::vector<Shape> shapes = {{17, 9}, {33}, {4, 5, 6}, {1}};
  std::vector<Tensor> p_cpu, p_dev;
  std::vector<std::string> names;
  nn::NamedTensors named_cpu, named_dev;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor p = uni(shapes[i], DType::f32, g);
    p_cpu.push_back(ops::clone(p).set_requires_grad(true));
    p_dev.push_back(to_dut(p).set_requires_grad(true));
    names.push_back(param_label(i));
    named_cpu.emplace_back(names.back(), p_cpu.back());
    named_dev.emplace_back(names.back(), p_dev.back());
  }
  nn::AdamWOptions opts;
  opts.beta1 = 0.9;
  opts.beta2 = 0.95;
  nn::AdamW opt_cpu(nn::weight_decay_groups(named_cpu, 1e-2, 0.1), opts);
  nn::AdamW opt_dev(nn::weight_decay_groups(named_dev, 1e-2, 0.1), opts);
  std::string failures;
  bool ok = true;
  for (int step = 0; step < 5; ++step) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      Tensor grad = ops::mul(nrm(shapes[i], DType::f32, g), step == 2 ? 1e-6 : 1.0);  // a tiny-gradient step too
      p_cpu[i].set_grad(ops::clone(grad));
      p_dev[i].set_grad(to_dut(grad));
    }
    opt_cpu.step();
    try {
      on_device_side([&] {
        opt_dev.step();
        return 0;
      });
    } catch (const std::exception& e) {
      FAIL() << "AdamW.step on " << mode().device.str() << " threw: " << e.what();
    }
    for (size_t i = 0; i < shapes.size(); ++i)
      ok &= compare_all("AdamW step " + std::to_string(step + 1), {p_dev[i]}, {p_cpu[i]}, {1e-6, 1e-6}, {names[i]},
                        failures);
  }
  auto st_cpu = opt_cpu.state_dict(), st_dev = opt_dev.state_dict();
  for (const auto& [index, s] : st_cpu.state) {
    ASSERT_TRUE(st_dev.state.count(index)) << "no AdamW state for parameter " << index << " on the device";
    EXPECT_EQ(st_dev.state.at(index).step, s.step);
    for (const auto& [name, t] : s.tensors)
      ok &= compare_all("AdamW state", {st_dev.state.at(index).tensors.at(name)}, {t}, {1e-6, 1e-5},
                        {name + "[" + std::to_string(index) + "]"}, failures);
  }
  summary().note("AdamW (5 steps)", "f32", ok ? "ok" : "FAIL");
  EXPECT_TRUE(ok) << failures;
}

// ---------------------------------------------------------------- errors

TEST(CudaConformance, OutOfRangeIndexNamesIt) {
  REQUIRE_DEVICE();
  const Device d = mode().device;
  Tensor w = to_dut(ops::ones({10, 4}));
  Tensor bad = to_dut(from_vector<int64_t>({1, 2, 1000, 3}, {2, 2}));
  try {
    Tensor out = ops::embedding(w, bad);
    (void)ops::to(out, kCPU);
    ADD_FAILURE() << "embedding with index 1000 into 10 rows on " << d.str() << " did not throw";
  } catch (const InvalidArgument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("embedding"), std::string::npos) << m;
    EXPECT_NE(m.find("1000"), std::string::npos) << "the message does not name the index: " << m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "embedding with index 1000 threw something other than InvalidArgument: " << e.what();
  }
  Tensor neg = to_dut(from_vector<int64_t>({0, -17}, {2}));  // -1 wraps, -17 does not
  try {
    (void)ops::to(ops::index_select(w, 0, neg), kCPU);
    ADD_FAILURE() << "index_select with index -17 into 10 rows on " << d.str() << " did not throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("-17"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "index_select with index -17 threw something other than InvalidArgument: " << e.what();
  }
  Tensor logits = to_dut(ops::zeros({3, 5}));
  Tensor target = to_dut(from_vector<int64_t>({0, 9, 1}, {3}));
  try {
    (void)ops::cross_entropy(logits, target).loss.item();
    ADD_FAILURE() << "cross_entropy with target 9 for 5 classes on " << d.str() << " did not throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find('9'), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "cross_entropy with target 9 threw something other than InvalidArgument: " << e.what();
  }
  // the device is still usable after the errors
  EXPECT_EQ(ops::sum(to_dut(ops::ones({4}))).item(), 4.0);
}

TEST(CudaConformance, MixingCpuAndCudaNamesBothDevices) {
  REQUIRE_DEVICE();
  if (mode().self_check) GTEST_SKIP() << "the CPU self-check has only one device";
  const Device d = mode().device;
  Tensor a = ops::ones({2, 3}), b = to_dut(ops::ones({2, 3}));
  auto expect_both = [&](const char* what, const std::function<void()>& f) {
    try {
      f();
      ADD_FAILURE() << what << " of a cpu and a " << d.str() << " tensor did not throw";
    } catch (const InvalidArgument& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("cpu"), std::string::npos) << what << ": " << m;
      EXPECT_NE(m.find(d.str()), std::string::npos) << what << ": " << m;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << " threw something other than InvalidArgument: " << e.what();
    }
  };
  expect_both("add", [&] { ops::add(a, b); });
  expect_both("add (cuda first)", [&] { ops::add(b, a); });
  expect_both("matmul", [&] { ops::matmul(a, ops::transpose(b, 0, 1)); });
  expect_both("add_", [&] { ops::add_(b, a); });
  expect_both("where", [&] { ops::where(ops::gt(b, 0.0), a, a); });
  expect_both("embedding", [&] { ops::embedding(a, to_dut(from_vector<int64_t>({0}, {1}))); });
  expect_both("cross_entropy", [&] { ops::cross_entropy(b, from_vector<int64_t>({0, 1}, {2})); });
}

}  // namespace
