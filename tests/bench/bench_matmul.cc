// Benchmark: loom's matmul / linear against a direct cblas_sgemm on the same
// buffers, for square sizes 256..2048 and GPT-2-like linear layers
// (B*T = 2048, 384 -> 1536) in forward and both backward products.
// Prints one line per figure: loom GFLOP/s, cblas GFLOP/s and their ratio.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "tensor/ops.h"

namespace {

using loom::Tensor;
namespace ops = loom::ops;

/// Best wall time of fn() in seconds over enough runs to fill ~min_total seconds.
double best_seconds(const std::function<void()>& fn, double min_total = 0.5) {
  fn();  // warm up (thread pools, page faults)
  double best = 1e30, total = 0;
  int runs = 0;
  while ((total < min_total || runs < 3) && runs < 50) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++runs;
  }
  return best;
}

void report(const std::string& what, double flops, double loom_s, double blas_s) {
  const double g_loom = flops / loom_s * 1e-9, g_blas = flops / blas_s * 1e-9;
  std::printf("%-46s loom %8.1f GFLOP/s   cblas_sgemm %8.1f GFLOP/s   ratio %.3f\n", what.c_str(), g_loom, g_blas,
              g_loom / g_blas);
  std::fflush(stdout);
}

}  // namespace

int main() {
  loom::Generator gen(1);
  for (int64_t n : {256, 512, 1024, 2048}) {
    Tensor a = ops::randn({n, n}, gen), b = ops::randn({n, n}, gen);
    Tensor c = ops::empty_like(a);
    const double flops = 2.0 * n * n * n;
    const double tl = best_seconds([&] { ops::matmul(a, b); });
    const double tb = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n,
                  0.0f, c.data<float>(), n);
    });
    report("matmul " + std::to_string(n) + "^3", flops, tl, tb);
    const double tlt = best_seconds([&] { ops::matmul(a, ops::transpose(b, 0, 1)); });
    const double tbt = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data<float>(), n, b.data<float>(), n, 0.0f,
                  c.data<float>(), n);
    });
    report("matmul " + std::to_string(n) + "^3, b transposed view", flops, tlt, tbt);
  }

  // GPT-2-small-like MLP input projection: x (B*T, C) -> (B*T, 4C).
  const int64_t M = 2048, K = 384, N = 1536;
  Tensor x = ops::randn({4, 512, K}, gen), w = ops::randn({N, K}, gen), bias = ops::randn({N}, gen);
  Tensor dy = ops::randn({M, N}, gen);
  Tensor out = loom::empty({M, N});
  const double flops = 2.0 * M * N * K;
  {
    const double tl = best_seconds([&] { ops::linear(x, w, bias); });
    const double tb = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x.data<float>(), K, w.data<float>(), K, 0.0f,
                  out.data<float>(), N);
    });
    report("linear fwd (2048x384)@(1536x384)^T + b", flops, tl, tb);
    const double tn = best_seconds([&] { ops::linear(x, w, Tensor()); });
    report("linear fwd (2048x384)@(1536x384)^T, no bias", flops, tn, tb);
  }
  {
    Tensor dx = loom::empty({M, K});
    const double tl = best_seconds([&] { ops::matmul(dy, w); });
    const double tb = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dy.data<float>(), N, w.data<float>(), K,
                  0.0f, dx.data<float>(), K);
    });
    report("linear dx (2048x1536)@(1536x384)", flops, tl, tb);
  }
  {
    Tensor x2 = ops::view(x, {M, K});
    Tensor dw = loom::empty({N, K});
    const double tl = best_seconds([&] { ops::matmul(ops::transpose(dy, 0, 1), x2); });
    const double tb = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dy.data<float>(), N, x2.data<float>(), K,
                  0.0f, dw.data<float>(), K);
    });
    report("linear dw (1536x2048 view)@(2048x384)", flops, tl, tb);
  }
  return 0;
}
