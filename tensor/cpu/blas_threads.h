// A scope in which OpenBLAS runs single-threaded: for callers that already run one gemm per OpenMP thread (attention's
// per-head products, convolution's per-image ones), where OpenBLAS's own threads on top oversubscribe the cores
// (measured 5-10x slower on 2 cores).
#pragma once

#include <cblas.h>

namespace loom::detail {

/// Sets OpenBLAS to one thread for its lifetime and restores the previous count after.
class BlasSingleThreaded {
 public:
  BlasSingleThreaded() {
#if defined(OPENBLAS_VERSION)
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
