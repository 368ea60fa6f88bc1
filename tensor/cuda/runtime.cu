// Device runtime: current stream per device. (Being replaced by the full
// runtime: caching allocator, stream/event wrappers, allocator hooks.)
#include "tensor/cuda/common.cuh"

namespace loom::cuda_detail {

cudaStream_t current_stream(int /*device*/) { return cudaStreamPerThread; }

}  // namespace loom::cuda_detail
