// The neural-network kernels' entries of the kernel table, one concern per file:
// softmax.cu, norm.cu, embedding.cu (with index_check), cross_entropy.cu,
// dropout_rope.cu; the matrix products are matmul.cu's.
#include "tensor/cuda_dispatch.h"

namespace loom::detail {

void register_matmul(CudaKernels& k);
void register_softmax(CudaKernels& k);
void register_norm(CudaKernels& k);
void register_embedding(CudaKernels& k);
void register_cross_entropy(CudaKernels& k);
void register_dropout_rope(CudaKernels& k);

void register_nn_kernels(CudaKernels& k) {
  register_matmul(k);
  register_softmax(k);
  register_norm(k);
  register_embedding(k);
  register_cross_entropy(k);
  register_dropout_rope(k);
}

}  // namespace loom::detail
