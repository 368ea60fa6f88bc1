// Elementwise ops: broadcasting, promotion, non-contiguous operands, in-place
// updates and version bumps, activations against closed forms, selection ops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "tensor/ops.h"
#include "tests/tensor/torch_ref.h"

using namespace loom;
namespace O = loom::ops;

namespace {
Tensor iota(const Shape& s, DType dt = DType::f32, double start = 0, double step = 1) {
  return O::reshape(O::arange(start, start + step * static_cast<double>(shape_numel(s)), step, dt), s);
}
std::vector<double> vals(const Tensor& t) { return t.to_vector<double>(); }

/// Reference: out[i] = f(a[...], b[...]) computed by explicit broadcast indexing.
template <typename F>
std::vector<double> ref_broadcast(const Tensor& a, const Tensor& b, const Shape& out, F f) {
  auto av = vals(a), bv = vals(b);
  const int64_t nd = static_cast<int64_t>(out.size());
  std::vector<double> r(shape_numel(out));
  Shape as = contiguous_strides(a.sizes()), bs = contiguous_strides(b.sizes());
  for (int64_t lin = 0; lin < shape_numel(out); ++lin) {
    int64_t rem = lin, ao = 0, bo = 0;
    for (int64_t d = nd - 1; d >= 0; --d) {
      int64_t idx = rem % out[d];
      rem /= out[d];
      int64_t ad = d - (nd - a.dim()), bd = d - (nd - b.dim());
      if (ad >= 0 && a.sizes()[ad] != 1) ao += idx * as[ad];
      if (bd >= 0 && b.sizes()[bd] != 1) bo += idx * bs[bd];
    }
    r[lin] = f(av[ao], bv[bo]);
  }
  return r;
}
}  // namespace

TEST(Elementwise, BroadcastingMatchesExplicitIndexing) {
  Generator g(1);
  std::vector<std::pair<Shape, Shape>> cases = {
      {{4, 5}, {5}}, {{4, 1}, {1, 5}}, {{2, 3, 4}, {3, 1}}, {{}, {3, 2}}, {{7, 1, 3}, {7, 6, 1}}};
  for (auto& [sa, sb] : cases) {
    Tensor a = O::randn(sa, g), b = O::randn(sb, g);
    Shape out = O::broadcast_shapes(sa, sb, "test");
    auto check = [&](const Tensor& got, auto f) {
      auto want = ref_broadcast(a, b, out, f);
      ASSERT_EQ(got.sizes(), out);
      auto gv = vals(got);
      for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(gv[i], want[i], 1e-5 * (1 + std::fabs(want[i])));
    };
    check(O::add(a, b), [](double x, double y) { return double(float(x) + float(y)); });
    check(O::sub(a, b), [](double x, double y) { return x - y; });
    check(O::mul(a, b), [](double x, double y) { return x * y; });
    check(O::div(a, b), [](double x, double y) { return x / y; });
    check(O::maximum(a, b), [](double x, double y) { return std::max(x, y); });
    check(O::minimum(a, b), [](double x, double y) { return std::min(x, y); });
    check(O::gt(a, b), [](double x, double y) { return double(x > y); });
  }
}

TEST(Elementwise, IncompatibleShapesErrorNamesOpAndBothShapes) {
  try {
    O::add(O::zeros({2, 3}), O::zeros({4}));
    FAIL();
  } catch (const InvalidArgument& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("add"), std::string::npos) << m;
    EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
    EXPECT_NE(m.find("[4]"), std::string::npos) << m;
  }
  try {
    O::add_(O::zeros({3}), O::zeros({2, 3}));
    FAIL();
  } catch (const InvalidArgument& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("add_"), std::string::npos) << m;
    EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  }
}

TEST(Elementwise, NonContiguousInputsMatchContiguous) {
  Generator g(2);
  Tensor base = O::randn({6, 40, 50}, g);
  Tensor a = O::transpose(base, 1, 2);                         // (6, 50, 40) strided
  Tensor b = O::slice(O::randn({6, 50, 80}, g), 2, 0, 80, 2);  // step 2
  Tensor ac = O::contiguous(a), bc = O::contiguous(b);
  EXPECT_FALSE(a.is_contiguous());
  EXPECT_FALSE(b.is_contiguous());
  EXPECT_EQ(vals(O::add(a, b)), vals(O::add(ac, bc)));
  EXPECT_EQ(vals(O::mul(a, b)), vals(O::mul(ac, bc)));
  EXPECT_EQ(vals(O::gelu(a)), vals(O::gelu(ac)));
  EXPECT_EQ(vals(O::exp(a)), vals(O::exp(ac)));
  EXPECT_EQ(vals(O::lt(a, b)), vals(O::lt(ac, bc)));
  EXPECT_EQ(vals(O::where(O::gt(a, 0.0), a, b)), vals(O::where(O::gt(ac, 0.0), ac, bc)));
  // In place into a strided view.
  Tensor dst = O::clone(base);
  Tensor dview = O::transpose(dst, 1, 2);
  O::add_(dview, b, 2.0);
  Tensor want = O::add(ac, O::mul(bc, 2.0));
  EXPECT_EQ(vals(O::contiguous(dview)), vals(want));
}

TEST(Elementwise, LargeTensorsUseSameResultAsSmallSlices) {
  // > grain elements: exercises the parallel split.
  Generator g(3);
  Tensor a = O::randn({300, 1000}, g), bias = O::randn({1000}, g);
  Tensor y = O::add(a, bias);
  auto av = vals(a), bv = vals(bias), yv = vals(y);
  for (int64_t i = 0; i < 300; i += 37)
    for (int64_t j = 0; j < 1000; j += 13) EXPECT_EQ(yv[i * 1000 + j], double(float(av[i * 1000 + j]) + float(bv[j])));
  Tensor col = O::randn({300, 1}, g);
  auto cv = vals(col), mv = vals(O::mul(a, col));
  for (int64_t i = 0; i < 300; i += 41)
    for (int64_t j = 0; j < 1000; j += 17) EXPECT_EQ(mv[i * 1000 + j], double(float(av[i * 1000 + j]) * float(cv[i])));
}

TEST(Elementwise, DtypePromotion) {
  Tensor i = O::arange(4, DType::i32);
  Tensor f = O::full({4}, 0.5, DType::f32);
  Tensor d = O::full({4}, 0.25, DType::f64);
  EXPECT_EQ(O::add(i, f).dtype(), DType::f32);
  EXPECT_EQ(O::add(f, d).dtype(), DType::f64);
  EXPECT_EQ(O::add(i, O::arange(4, DType::i64)).dtype(), DType::i64);
  EXPECT_EQ(O::add(O::ones({2}, DType::f16), O::ones({2}, DType::bf16)).dtype(), DType::f32);
  EXPECT_EQ(O::div(i, i).dtype(), DType::f32);  // true division
  EXPECT_EQ(vals(O::div(O::full({1}, 7, DType::i64), O::full({1}, 2, DType::i64)))[0], 3.5);
  EXPECT_EQ(O::add(i, 1.0).dtype(), DType::i32);
  EXPECT_EQ(O::add(i, 0.5).dtype(), DType::f32);
  EXPECT_EQ(vals(O::add(i, 0.5))[3], 3.5);
  EXPECT_EQ(O::eq(i, i).dtype(), DType::u8);
  EXPECT_EQ(vals(O::gt(i, 1.5)), (std::vector<double>{0, 0, 1, 1}));
}

TEST(Elementwise, ScalarOverloadsAndIntegerOps) {
  Tensor a = from_vector<float>({1, 2, 4}, {3});
  EXPECT_EQ(vals(O::rsub(a, 10)), (std::vector<double>{9, 8, 6}));
  EXPECT_EQ(vals(O::rdiv(a, 2)), (std::vector<double>{2, 1, 0.5}));
  EXPECT_EQ(vals(O::pow(a, 2.0)), (std::vector<double>{1, 4, 16}));
  EXPECT_EQ(vals(O::pow(a, 0.5))[2], 2.0);
  EXPECT_NEAR(vals(O::pow(a, 3.0))[2], 64.0, 1e-4);
  EXPECT_EQ(vals(O::pow(O::arange(5, DType::i64), O::full({5}, 3, DType::i64)))[4], 64.0);
  EXPECT_EQ(vals(O::neg(O::arange(3, DType::i64)))[2], -2.0);
  EXPECT_EQ(vals(O::abs(from_vector<int32_t>({-3, 4}, {2}))), (std::vector<double>{3, 4}));
  EXPECT_EQ(vals(O::clamp(from_vector<float>({-2, 0.5, 3}, {3}), -1, 1)), (std::vector<double>{-1, 0.5, 1}));
  EXPECT_EQ(vals(O::relu(from_vector<int64_t>({-2, 5}, {2}))), (std::vector<double>{0, 5}));
  // NaN passes through relu, as in PyTorch (torch.relu(nan) is nan), instead of becoming 0.
  std::vector<double> r = vals(O::relu(from_vector<float>({-1.5f, NAN, 2.0f}, {3})));
  EXPECT_EQ(r[0], 0.0);
  EXPECT_TRUE(std::isnan(r[1]));
  EXPECT_EQ(r[2], 2.0);
  EXPECT_EQ(O::exp(O::arange(2, DType::i64)).dtype(), DType::f32);
}

TEST(Elementwise, InPlaceOpsAndVersionBumps) {
  Tensor a = from_vector<float>({1, 2, 3}, {3});
  Tensor b = from_vector<float>({4, 5, 6}, {3});
  Tensor c = from_vector<float>({2, 2, 4}, {3});
  int64_t v = a.version();
  O::add_(a, b, 0.5);  // 3, 4.5, 6
  EXPECT_EQ(vals(a), (std::vector<double>{3, 4.5, 6}));
  O::mul_(a, 2.0);   // 6, 9, 12
  O::add_(a, -1.0);  // 5, 8, 11
  O::mul_(a, c);     // 10, 16, 44
  EXPECT_EQ(vals(a), (std::vector<double>{10, 16, 44}));
  O::addcmul_(a, b, c, 0.5);  // + 0.5*b*c = 4, 5, 12 -> 14, 21, 56
  EXPECT_EQ(vals(a), (std::vector<double>{14, 21, 56}));
  O::addcdiv_(a, b, c, 2.0);  // + 2*b/c = 4, 5, 3 -> 18, 26, 59
  EXPECT_EQ(vals(a), (std::vector<double>{18, 26, 59}));
  O::lerp_(a, b, 0.25);  // a + 0.25*(b-a)
  EXPECT_EQ(vals(a), (std::vector<double>{18 + 0.25 * (4 - 18), 26 + 0.25 * (5 - 26), 59 + 0.25 * (6 - 59)}));
  EXPECT_EQ(a.version(), v + 7);  // seven in-place ops above
  O::copy_(a, b);
  O::fill_(a, 1);
  O::zero_(a);
  EXPECT_EQ(a.version(), v + 10);
  // In place in bf16 computes in f32 and rounds once.
  Tensor h = O::full({2}, 1.0, DType::bf16);
  O::add_(h, O::full({2}, 1.0 / 256, DType::f32));
  EXPECT_EQ(vals(h)[0], 1.0);  // 1 + 2^-8 is a tie between 1 and 1+2^-7 -> even (1.0)
}

TEST(Activations, MatchClosedForms) {
  std::vector<double> xs;
  for (double x = -6; x <= 6; x += 0.37) xs.push_back(x);
  xs.push_back(0.0);
  xs.push_back(-20.0);
  xs.push_back(20.0);
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 2e-6 : 1e-12;
    Tensor x = O::to(from_vector<double>(xs, {static_cast<int64_t>(xs.size())}), dt);
    auto gelu = vals(O::gelu(x)), gelu_t = vals(O::gelu(x, O::GeluApprox::kTanh)), silu = vals(O::silu(x));
    auto sig = vals(O::sigmoid(x)), th = vals(O::tanh(x));
    Tensor g = O::full_like(x, 1.5);
    auto dgelu = vals(O::gelu_backward(g, x)), dgelu_t = vals(O::gelu_backward(g, x, O::GeluApprox::kTanh));
    auto dsilu = vals(O::silu_backward(g, x));
    for (size_t i = 0; i < xs.size(); ++i) {
      double v = xs[i];
      double cdf = 0.5 * (1 + std::erf(v / std::sqrt(2.0)));
      double pdf = std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
      double u = std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v);
      double s = 1 / (1 + std::exp(-v));
      EXPECT_NEAR(gelu[i], v * cdf, tol * (1 + std::fabs(v))) << v;
      EXPECT_NEAR(gelu_t[i], 0.5 * v * (1 + std::tanh(u)), tol * (1 + std::fabs(v))) << v;
      EXPECT_NEAR(silu[i], v * s, tol * (1 + std::fabs(v))) << v;
      EXPECT_NEAR(sig[i], s, tol) << v;
      EXPECT_NEAR(th[i], std::tanh(v), tol) << v;
      EXPECT_NEAR(dgelu[i], 1.5 * (cdf + v * pdf), 2 * tol * (1 + std::fabs(v))) << v;
      double du = std::sqrt(2 / M_PI) * (1 + 3 * 0.044715 * v * v);
      double t = std::tanh(u);
      EXPECT_NEAR(dgelu_t[i], 1.5 * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du), 2 * tol * (1 + v * v)) << v;
      EXPECT_NEAR(dsilu[i], 1.5 * s * (1 + v * (1 - s)), 2 * tol * (1 + std::fabs(v))) << v;
    }
  }
}

TEST(Activations, UnaryMathMatchesStd) {
  std::vector<double> xs = {0.1, 0.5, 1, 2.5, 7, 30};
  Tensor x = from_vector<double>(xs, {6});
  auto e = vals(O::exp(x)), l = vals(O::log(x)), s = vals(O::sqrt(x)), r = vals(O::rsqrt(x));
  auto sn = vals(O::sin(x)), cs = vals(O::cos(x));
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_DOUBLE_EQ(e[i], std::exp(xs[i]));
    EXPECT_DOUBLE_EQ(l[i], std::log(xs[i]));
    EXPECT_DOUBLE_EQ(s[i], std::sqrt(xs[i]));
    EXPECT_DOUBLE_EQ(r[i], 1 / std::sqrt(xs[i]));
    EXPECT_DOUBLE_EQ(sn[i], std::sin(xs[i]));
    EXPECT_DOUBLE_EQ(cs[i], std::cos(xs[i]));
  }
  // f16 computes in f32 and rounds the result.
  auto h = vals(O::exp(O::to(x, DType::f16)));
  EXPECT_EQ(h[2], double(float(Half(std::exp(1.0f)))));
}

TEST(Selection, WhereMaskedFillCausalMask) {
  Tensor m = O::causal_mask(4);
  auto mv = vals(m);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(mv[i * 4 + j], j > i ? 1.0 : 0.0);
  Tensor scores = O::ones({2, 4, 4});
  Tensor filled = O::masked_fill(scores, m, -INFINITY);
  auto fv = vals(filled);
  EXPECT_TRUE(std::isinf(fv[16 + 1]));
  EXPECT_EQ(fv[16 + 4], 1.0);
  Tensor w = O::where(m, O::full({1}, 5.0), O::arange(4, DType::i64));
  EXPECT_EQ(w.dtype(), DType::f32);
  EXPECT_EQ(vals(w)[1], 5.0);
  EXPECT_EQ(vals(w)[4 + 1], 1.0);
  EXPECT_THROW(O::masked_fill(O::ones({4}), m, 0), InvalidArgument);
}

TEST(Selection, CatStackIndexSelect) {
  Tensor a = iota({2, 3}), b = iota({2, 2}, DType::f32, 100);
  Tensor c = O::cat({a, b}, 1);
  EXPECT_EQ(c.sizes(), (Shape{2, 5}));
  EXPECT_EQ(vals(c), (std::vector<double>{0, 1, 2, 100, 101, 3, 4, 5, 102, 103}));
  Tensor ct = O::cat({O::transpose(a, 0, 1), O::transpose(a, 0, 1)}, 0);  // non-contiguous inputs
  EXPECT_EQ(vals(O::select(ct, 0, 4)), (std::vector<double>{1, 4}));
  EXPECT_THROW(O::cat({a, b}, 0), InvalidArgument);
  Tensor s = O::stack({a, a}, 1);
  EXPECT_EQ(s.sizes(), (Shape{2, 2, 3}));
  EXPECT_EQ(vals(O::select(O::select(s, 0, 1), 0, 1)), (std::vector<double>{3, 4, 5}));
  Tensor t = iota({3, 4, 2});
  Tensor idx = from_vector<int64_t>({3, 0, 3, -1}, {4});
  Tensor r = O::index_select(O::permute(t, {0, 1, 2}), 1, idx);
  EXPECT_EQ(r.sizes(), (Shape{3, 4, 2}));
  auto rv = vals(r), tv = vals(t);
  int64_t src[4] = {3, 0, 3, 3};
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 2; ++j) EXPECT_EQ(rv[(i * 4 + k) * 2 + j], tv[(i * 4 + src[k]) * 2 + j]);
  EXPECT_THROW(O::index_select(t, 0, from_vector<int64_t>({3}, {1})), InvalidArgument);
}

TEST(Elementwise, MatchesPyTorchForMixedOps) {
  FILE* probe = popen("/usr/bin/python3 -c 'import torch' 2>/dev/null && echo ok", "r");
  char buf[16] = {0};
  bool have = probe && fgets(buf, sizeof(buf), probe) && std::string(buf).rfind("ok", 0) == 0;
  if (probe) pclose(probe);
  if (!have) GTEST_SKIP() << "/usr/bin/python3 has no torch; cannot compare against PyTorch";
  const char* script =
      "/usr/bin/python3 -c \""
      "import torch\n"
      "a=torch.arange(-6,6,dtype=torch.float32).reshape(3,4)/3\n"
      "b=torch.linspace(-1,2,4)\n"
      "r=[torch.nn.functional.gelu(a), torch.nn.functional.gelu(a,approximate='tanh'), torch.nn.functional.silu(a),"
      " torch.where(a>b, a*b, a-b), (a+b).to(torch.bfloat16).float(), torch.maximum(a,b)/(b+3)]\n"
      "print(' '.join(repr(float(v)) for t in r for v in t.flatten()))\"";
  FILE* p = popen(script, "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char chunk[4096];
  while (fgets(chunk, sizeof(chunk), p)) out += chunk;
  ASSERT_EQ(pclose(p), 0);
  std::istringstream is(out);
  std::vector<double> want;
  double d;
  while (is >> d) want.push_back(d);
  ASSERT_EQ(want.size(), 72u);
  Tensor a = O::mul(O::reshape(O::arange(-6.0, 6.0, 1.0, DType::f32), {3, 4}), 1.0 / 3);
  a = O::div(O::reshape(O::arange(-6.0, 6.0, 1.0, DType::f32), {3, 4}), O::full({}, 3.0));
  Tensor b = from_vector<float>({-1, 0, 1, 2}, {4});
  std::vector<Tensor> got = {O::gelu(a),
                             O::gelu(a, O::GeluApprox::kTanh),
                             O::silu(a),
                             O::where(O::gt(a, b), O::mul(a, b), O::sub(a, b)),
                             O::to(O::to(O::add(a, b), DType::bf16), DType::f32),
                             O::div(O::maximum(a, b), O::add(b, 3.0))};
  size_t k = 0;
  for (const Tensor& t : got)
    for (double v : vals(t)) {
      EXPECT_NEAR(v, want[k], 2e-6 * (1 + std::fabs(want[k]))) << "value " << k;
      ++k;
    }
}

// Ops on a CUDA tensor validate and broadcast here, then call the CUDA kernel
// table; with no device present (this machine) each must throw Unsupported
// naming the op before anything reads or writes the tensor's memory (host
// memory labelled cuda:0 here, which no cpu loop may touch either).
TEST(Elementwise, CudaTensorsWithoutADeviceAreUnsupportedAndUntouched) {
  if (cuda_is_available()) GTEST_SKIP() << "a CUDA device is present";
  Tensor c = loom::testing::fake_cuda_tensor({4, 4});
  Tensor m = loom::testing::fake_cuda_tensor({4, 4}, DType::u8);
  Tensor ix = loom::testing::fake_cuda_tensor({2}, DType::i64);
  Tensor row = O::narrow(c, 1, 1, 2);  // a strided view
  unsigned char* bytes = static_cast<unsigned char*>(c.data_ptr());
  std::fill(bytes, bytes + 64, 0x5a);
  using loom::testing::expect_unsupported;
  expect_unsupported([&] { O::add(c, c); }, "add");
  expect_unsupported([&] { O::div(c, c); }, "div");
  expect_unsupported([&] { O::pow(c, 3.0); }, "pow");
  expect_unsupported([&] { O::add(c, 1.5); }, "add");
  expect_unsupported([&] { O::rdiv(c, 1.0); }, "rdiv");
  expect_unsupported([&] { O::eq(c, c); }, "eq");
  expect_unsupported([&] { O::gt(c, 0.5); }, "gt");
  expect_unsupported([&] { O::exp(c); }, "exp");
  expect_unsupported([&] { O::relu(row); }, "relu");
  expect_unsupported([&] { O::clamp(c, -1, 1); }, "clamp");
  expect_unsupported([&] { O::gelu(c, O::GeluApprox::kTanh); }, "gelu");
  expect_unsupported([&] { O::gelu_backward(c, c); }, "gelu_backward");
  expect_unsupported([&] { O::silu_backward(c, c); }, "silu_backward");
  expect_unsupported([&] { O::add_(c, c, 0.5); }, "add_");
  expect_unsupported([&] { O::add_(c, 1.0); }, "add_");
  expect_unsupported([&] { O::mul_(c, c); }, "mul_");
  expect_unsupported([&] { O::mul_(row, 2.0); }, "mul_");
  expect_unsupported([&] { O::addcmul_(c, c, c); }, "addcmul_");
  expect_unsupported([&] { O::addcdiv_(c, c, c); }, "addcdiv_");
  expect_unsupported([&] { O::lerp_(c, c, 0.1); }, "lerp_");
  expect_unsupported([&] { O::where(m, c, c); }, "where");
  expect_unsupported([&] { O::masked_fill(c, m, -1.0); }, "masked_fill");
  expect_unsupported([&] { O::copy_(row, c); }, "copy_");
  expect_unsupported([&] { O::to(c, DType::bf16); }, "cuda:0");  // refused when allocating the result
  expect_unsupported([&] { O::fill_(c, 2.0); }, "fill_");
  expect_unsupported([&] { O::zero_(row); }, "zero_");
  expect_unsupported([&] { O::cat({c, c}, 0); }, "cat");
  expect_unsupported([&] { O::stack({c, c}, 0); }, "cat");
  expect_unsupported([&] { O::index_select(c, 0, ix); }, "index_select");
  expect_unsupported([&] { O::uniform_(c, 0, 1); }, "uniform_");
  expect_unsupported([&] { O::normal_(row, 0, 1); }, "normal_");
  expect_unsupported([&] { O::sum(c, {0}); }, "sum");
  expect_unsupported([&] { O::mean(c); }, "mean");
  expect_unsupported([&] { O::sum_to(c, {4}); }, "sum_to");
  expect_unsupported([&] { O::max(c); }, "max");
  expect_unsupported([&] { O::argmax(c, 1); }, "max");
  for (int i = 0; i < 64; ++i) ASSERT_EQ(bytes[i], 0x5a) << "byte " << i << " of the fake cuda tensor was written";
  // A device mismatch is still an InvalidArgument naming both devices.
  loom::testing::expect_error_mentions([&] { O::add(O::zeros({4, 4}), c); }, {"add", "cpu", "cuda:0"});
}
