// parallel_for over OpenMP: splits [begin, end) into one contiguous chunk per
// thread, runs serially below `grain` or when already inside a parallel region,
// and rethrows the first exception a worker raised on the calling thread.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>

namespace loom {

/// Elements below which an elementwise loop is not worth splitting across threads.
inline constexpr int64_t kElementwiseGrain = 32768;

/// Number of threads parallel_for may use.
inline int num_threads() { return omp_get_max_threads(); }

/// Calls fn(b, e) on disjoint chunks covering [begin, end), in parallel when the
/// range is larger than grain (each chunk then has at least ~grain elements).
/// Chunks are contiguous and in order of thread id, so a result that depends
/// only on the index (not on the chunking) is independent of the thread count.
/// An exception thrown by fn is rethrown here after all threads finish.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& fn) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  grain = std::max<int64_t>(grain, 1);
  const int max_threads = omp_get_max_threads();
  if (n <= grain || max_threads <= 1 || omp_in_parallel()) {
    fn(begin, end);
    return;
  }
  const int64_t want = std::min<int64_t>(max_threads, (n + grain - 1) / grain);
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel num_threads(static_cast <int>(want))
  {
    const int64_t nt = omp_get_num_threads();
    const int64_t tid = omp_get_thread_num();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t b = begin + tid * chunk;
    const int64_t e = std::min(end, b + chunk);
    if (b < e) {
      try {
        fn(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace loom
