// Fills the allocator hooks and the kernel table (tensor/cuda_dispatch.h) with
// this backend's entries; each area's .cu file registers its own.
#include "tensor/cuda/common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::detail {

void register_runtime(CudaAllocatorHooks& hooks);
void register_attention(CudaKernels& kernels);
void register_adamw(CudaKernels& kernels);
void register_elementwise(CudaKernels& kernels);
void register_copy(CudaKernels& kernels);
void register_reduce(CudaKernels& kernels);
void register_nn_kernels(CudaKernels& kernels);

void register_cuda_backend(CudaAllocatorHooks& hooks, CudaKernels& kernels) {
  register_runtime(hooks);
  (void)kernels;
  register_attention(kernels);
  register_adamw(kernels);
  register_elementwise(kernels);
  register_copy(kernels);
  register_reduce(kernels);
  register_nn_kernels(kernels);
}

}  // namespace loom::detail
