// The nccl backend: CUDA tensors over NCCL on the group's own stream, ordered
// against the compute stream with events; the unique id travels through the
// Store. Compiled only when CUDA is on and NCCL is found (LOOM_WITH_NCCL).
#pragma once

#include <memory>

#include "collectives/backend.h"

namespace loom::collectives {

/// Creates the communicator for ctx.rank on CUDA device LOCAL_RANK (or
/// ctx.rank modulo the device count). Throws CommError when no device is
/// present or NCCL fails; Timeout when the unique id never arrives.
std::unique_ptr<Backend> make_nccl_backend(const BackendContext& ctx);

}  // namespace loom::collectives
