// A scope in which OpenBLAS runs single-threaded: for callers that already run one gemm per OpenMP thread (attention's
// per-head products, convolution's per-image ones), where OpenBLAS's own threads on top oversubscribe the cores
// (measured 5-10x slower on 2 cores with the pthreads build).
//
// With OpenBLAS's OpenMP build (what loom links where Debian's libopenblas-openmp-dev is installed) the scope does
// nothing: that build already runs one thread when called inside a parallel region, and its
// openblas_set_num_threads() calls omp_set_num_threads(), which would make the caller's own parallel_for serial.
#pragma once

#include <cblas.h>

namespace loom::detail {

/// Sets OpenBLAS to one thread for its lifetime and restores the previous count after (pthreads build only).
class BlasSingleThreaded {
 public:
  BlasSingleThreaded() {
#if defined(OPENBLAS_VERSION)
    constexpr int kOpenMpBuild = 2;  // openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
    if (openblas_get_parallel() == kOpenMpBuild) return;
    prev_ = openblas_get_num_threads();
    if (prev_ > 1) openblas_set_num_threads(1);
#endif
  }
  ~BlasSingleThreaded() {
#if defined(OPENBLAS_VERSION)
    if (prev_ > 1) openblas_set_num_threads(prev_);
#endif
  }
  BlasSingleThreaded(const BlasSingleThreaded&) = delete;
  BlasSingleThreaded& operator=(const BlasSingleThreaded&) = delete;

 private:
  int prev_ = 1;
};

}  // namespace loom::detail
