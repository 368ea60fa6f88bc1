// Test support for the reduction, matmul and nn-kernel suites: deterministic
// inputs (gen, the formula tests/reference/tensor_ops_ref.py also uses) and the
// PyTorch values that script prints, run once and cached in the build dir.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tensor/ops.h"

namespace loom::testing {

/// 2*sin(0.37*i + seed) (times scale/2) in f64, reshaped and cast to dt.
inline Tensor gen(const Shape& shape, double seed, double scale = 2.0, DType dt = DType::f32) {
  std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<double>(i) * 0.37 + seed) * scale;
  return ops::to(from_vector(v, shape), dt);
}

/// Reference values by name, from /usr/bin/python3 tests/reference/tensor_ops_ref.py.
class TorchRef {
 public:
  static const TorchRef& get() {
    static const TorchRef ref;
    return ref;
  }
  bool available() const { return !values_.empty(); }
  const std::string& why_unavailable() const { return why_; }
  /// Values of figure `name`; fails the test (and returns empty) when absent.
  const std::vector<double>& operator[](const std::string& name) const {
    static const std::vector<double> kEmpty;
    auto it = values_.find(name);
    if (it == values_.end()) {
      ADD_FAILURE() << "no reference figure '" << name << "' in tensor_ops_ref.py's output";
      return kEmpty;
    }
    return it->second;
  }

 private:
  TorchRef() {
    namespace fs = std::filesystem;
    const fs::path script = fs::path(LOOM_SOURCE_DIR) / "tests/reference/tensor_ops_ref.py";
    const fs::path cache = fs::path(LOOM_BINARY_DIR) / "tensor_ops_ref.txt";
    std::error_code ec;
    const bool fresh = fs::exists(cache, ec) && fs::last_write_time(cache, ec) >= fs::last_write_time(script, ec);
    if (!fresh) {
      // Write to a private name and rename, so tests run in parallel never read half a file.
      const fs::path tmp = cache.string() + ".tmp" + std::to_string(::getpid());
      const std::string cmd = "/usr/bin/python3 '" + script.string() + "' > '" + tmp.string() + "' 2>/dev/null";
      if (std::system(cmd.c_str()) != 0) {
        fs::remove(tmp, ec);
        why_ = "could not run " + cmd + " (needs Debian's python3 with torch)";
        return;
      }
      fs::rename(tmp, cache, ec);
      if (ec) {
        why_ = "could not write " + cache.string();
        return;
      }
    }
    std::ifstream in(cache);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string name, tok;
      ls >> name;
      std::vector<double> vals;
      while (ls >> tok) vals.push_back(std::strtod(tok.c_str(), nullptr));  // strtod reads nan/inf
      values_[name] = std::move(vals);
    }
    if (values_.empty()) why_ = "reference file " + cache.string() + " is empty";
  }
  std::map<std::string, std::vector<double>> values_;
  std::string why_;
};

#define LOOM_REQUIRE_TORCH_REF()                                          \
  do {                                                                    \
    if (!::loom::testing::TorchRef::get().available())                    \
      GTEST_SKIP() << ::loom::testing::TorchRef::get().why_unavailable(); \
  } while (0)

/// Expects t (any dtype) to match reference `name` elementwise within atol + rtol*|ref|.
inline void expect_matches_ref(const Tensor& t, const std::string& name, double rtol, double atol) {
  const std::vector<double>& ref = TorchRef::get()[name];
  const std::vector<double> got = t.to_vector<double>();
  ASSERT_EQ(got.size(), ref.size()) << name << ": element count differs (shape " << shape_str(t.sizes()) << ")";
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool both_nan = std::isnan(got[i]) && std::isnan(ref[i]);
    const bool ok = both_nan || got[i] == ref[i] || std::abs(got[i] - ref[i]) <= atol + rtol * std::abs(ref[i]);
    if (!ok && bad++ < 5) ADD_FAILURE() << name << "[" << i << "]: got " << got[i] << ", PyTorch " << ref[i];
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << got.size() << " elements differ";
}

/// Expects fn() to throw loom::Error whose message contains every one of `parts`.
template <typename F>
void expect_error_mentions(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an error mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
  }
}

/// A tensor that claims to live on cuda:0 (host memory underneath), to check
/// that CPU-only builds refuse it with Unsupported rather than touching it.
inline Tensor fake_cuda_tensor(const Shape& sizes, DType dt = DType::f32) {
  static std::vector<char> backing(1 << 16);
  auto storage =
      std::make_shared<Storage>(backing.data(), backing.size(), Device(DeviceType::kCUDA, 0), nullptr, nullptr);
  return Tensor(storage, sizes, contiguous_strides(sizes), 0, dt);
}

/// Expects fn() to throw loom::Unsupported whose message names op.
template <typename F>
void expect_unsupported(F&& fn, const std::string& op) {
  try {
    fn();
    ADD_FAILURE() << op << ": expected Unsupported for a cuda tensor";
  } catch (const Unsupported& e) {
    EXPECT_NE(std::string(e.what()).find(op), std::string::npos) << e.what();
  }
}

}  // namespace loom::testing
