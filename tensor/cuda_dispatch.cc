#include "tensor/cuda_dispatch.h"

#include "tensor/device.h"
#include "tensor/error.h"

namespace loom {
namespace detail {
namespace {

/// The allocator hooks and the kernel table, filled together on first use so
/// that a static library's CUDA objects are linked whenever storage is.
struct Backend {
  CudaAllocatorHooks hooks;
  CudaKernels kernels;
  Backend() {
#if LOOM_WITH_CUDA
    register_cuda_backend(hooks, kernels);
#endif
  }
};
Backend& backend() {
  static Backend b;
  return b;
}

}  // namespace

CudaAllocatorHooks& cuda_hooks() { return backend().hooks; }
CudaKernels& mutable_cuda_kernels() { return backend().kernels; }

void throw_missing_cuda_kernel(const char* op, const Tensor& t) {
  LOOM_THROW(Unsupported, op, ": no CUDA kernel for a ", dtype_name(t.dtype()), " tensor on ", t.device().str(),
             " of shape ", shape_str(t.sizes()), " in this build");
}

const CudaKernels& cuda_kernels(const char* op, const Tensor& t) {
#if LOOM_WITH_CUDA
  if (!cuda_is_available())
    LOOM_THROW(Unsupported, op, ": a tensor on ", t.device().str(), " of shape ", shape_str(t.sizes()),
               " but no CUDA device is present (cuda_device_count() is 0); keep tensors on cpu on this machine");
  return backend().kernels;
#else
  LOOM_THROW(Unsupported, op, ": no kernel for a tensor on ", t.device().str(), " of shape ", shape_str(t.sizes()),
             " in this build (only cpu kernels are built; configure with -DLOOM_CUDA=ON on a machine with nvcc)");
#endif
}

}  // namespace detail
}  // namespace loom
