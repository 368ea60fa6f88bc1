// Printing matches PyTorch's format: formatter modes, widths, line wrapping,
// summarisation and suffixes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "tensor/ops.h"

using namespace loom;
namespace O = loom::ops;

TEST(Print, IntegerValuedFloatsUseTrailingDot) {
  Tensor t = from_vector<float>({1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(to_string(t), "tensor([[1., 2.],\n        [3., 4.]])");
  EXPECT_EQ(to_string(from_vector<float>({0, 100}, {2})), "tensor([  0., 100.])");
}

TEST(Print, FixedPointWithFourDecimalsAndCommonWidth) {
  Tensor t = from_vector<float>({1.5f, -2.25f, 10.125f}, {3});
  EXPECT_EQ(to_string(t), "tensor([ 1.5000, -2.2500, 10.1250])");
  EXPECT_EQ(to_string(O::scalar_tensor(3.5)), "tensor(3.5000)");
}

TEST(Print, ScientificWhenRangeIsWide) {
  Tensor t = from_vector<double>({1e-5, 1.0}, {2});
  EXPECT_EQ(to_string(t), "tensor([1.0000e-05, 1.0000e+00], dtype=float64)");
}

TEST(Print, IntegersNonFiniteAndDtypeSuffix) {
  EXPECT_EQ(to_string(O::arange(3)), "tensor([0, 1, 2])");
  EXPECT_EQ(to_string(from_vector<int32_t>({-5, 10}, {2})), "tensor([-5, 10], dtype=int32)");
  EXPECT_EQ(to_string(from_vector<float>({NAN, 1.f, -INFINITY}, {3})), "tensor([nan, 1., -inf])");
  EXPECT_EQ(to_string(O::zeros({0, 3})), "tensor([], size=(0, 3))");
  EXPECT_EQ(to_string(O::zeros({0}, DType::i64)), "tensor([], dtype=int64)");
}

TEST(Print, NonContiguousPrintsLogicalOrder) {
  Tensor t = O::transpose(from_vector<float>({1, 2, 3, 4}, {2, 2}), 0, 1);
  EXPECT_EQ(to_string(t), "tensor([[1., 3.],\n        [2., 4.]])");
  std::ostringstream os;
  os << t;
  EXPECT_EQ(os.str(), to_string(t));
}

namespace {
/// reprs of the given PyTorch expressions from one /usr/bin/python3 run (empty when torch is missing).
std::vector<std::string> torch_reprs(const std::vector<std::string>& exprs) {
  std::string cmd = "/usr/bin/python3 -c \"import torch\nfor e in [";
  for (const auto& e : exprs) cmd += "'" + e + "',";
  cmd += "]: print(repr(eval(e)).replace('torch.', ''), end='\\x01')\" 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  if (pclose(p) != 0) return {};
  std::vector<std::string> parts;
  for (size_t pos = 0, q; (q = out.find('\x01', pos)) != std::string::npos; pos = q + 1)
    parts.push_back(out.substr(pos, q - pos));
  return parts;
}
}  // namespace

TEST(Print, MatchesPyTorchForWrappedAndSummarisedTensors) {
  // Our dtype suffix spells dtypes without the "torch." prefix, so it is stripped from PyTorch's.
  auto want = torch_reprs({"torch.arange(0,30,dtype=torch.float32)/7",
                           "torch.arange(0,2000,dtype=torch.float64).reshape(10,20,10)", "torch.arange(5000)",
                           "(torch.arange(0,12,dtype=torch.float32)/3-2).to(torch.bfloat16)"});
  if (want.size() != 4) GTEST_SKIP() << "/usr/bin/python3 has no torch; cannot compare against PyTorch";
  // 1-D wrapping across lines, fixed mode.
  EXPECT_EQ(to_string(O::div(O::arange(0.0, 30.0, 1.0, DType::f32), O::full({}, 7.0))), want[0]);
  // Summarised 3-D tensor (> 1000 elements), integer mode, and f64 suffix.
  EXPECT_EQ(to_string(O::reshape(O::arange(0.0, 2000.0, 1.0, DType::f64), {10, 20, 10})), want[1]);
  // Summarised 1-D integer tensor.
  EXPECT_EQ(to_string(O::arange(5000)), want[2]);
  // bf16 values, negative numbers.
  EXPECT_EQ(to_string(O::to(O::sub(O::div(O::arange(0.0, 12.0, 1.0, DType::f32), O::full({}, 3.0)), O::full({}, 2.0)),
                            DType::bf16)),
            want[3]);
}
