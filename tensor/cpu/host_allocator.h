// The CPU caching allocator: every CPU tensor's memory comes from one process-wide CachingAllocator
// (tensor/caching_allocator.h, the policy of PyTorch's CUDA caching allocator) over aligned_alloc. A training step
// after the first reuses the blocks the step before freed, so it neither calls malloc for its activations and gradients
// nor page-faults fresh memory in: glibc hands blocks above its mmap threshold back to the kernel on free, and each new
// mmap costs a fault and a page clear per 4 KiB touched (perf: ~4% of a 1-thread GPT-2 step).
// LOOM_CPU_CACHING_ALLOCATOR=0 at start turns caching off (every tensor straight from aligned_alloc, as before).
#pragma once

#include <cstddef>

#include "tensor/caching_allocator.h"

namespace loom {

/// The CPU allocator's counters (bytes allocated to tensors, reserved from malloc, backend calls, ...).
AllocatorStats host_allocator_stats();
/// Returns the CPU allocator's cached free segments to malloc (tensors alive keep their memory).
void host_empty_cache();
/// Whether the CPU allocator caches (LOOM_CPU_CACHING_ALLOCATOR unset or not "0").
bool host_caching_enabled();

namespace detail {
/// bytes (> 0) of CPU memory, 64-byte aligned; throws OutOfMemory naming the request and the cache.
void* host_alloc(size_t bytes);
/// Gives back memory from host_alloc (nullptr is ignored).
void host_free(void* ptr);
}  // namespace detail

}  // namespace loom
