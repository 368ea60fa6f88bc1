// Deliberately wrong kernels for CudaBuild.KernelResourceCheckCatchesBadKernels
// (tests/CMakeLists.txt): tests/gpu/check_kernel_resources.py must reject a
// kernel without __launch_bounds__ and a launch whose block exceeds its
// kernel's bound. Built for sm_90 into an object library; never run.
#include <cuda_runtime.h>

namespace loom_test_bad {

constexpr int kBadThreads = 256;

// No __launch_bounds__: the compiler may use more registers than a large block has.
__global__ void unbounded_kernel(float* p) { p[threadIdx.x] += 1.f; }

__global__ void __launch_bounds__(kBadThreads) bounded_kernel(float* p) { p[threadIdx.x] *= 2.f; }

/// Launches both; the second with a block four times its bound.
void launch_bad_kernels(float* p, cudaStream_t s) {
  unbounded_kernel<<<1, kBadThreads, 0, s>>>(p);
  bounded_kernel<<<1, 1024, 0, s>>>(p);
}

}  // namespace loom_test_bad
