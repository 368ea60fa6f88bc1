// The gloo backend: CPU tensors over Gloo's TCP transport (Debian's
// libgloo-dev), rendezvous through our Store. allreduce, reduce_scatter and
// all_gather are loom's own segmented rings; when the whole group is on one
// host they read the neighbour's memory (process_vm_readv) instead of using
// TCP. Gloo headers stay in the .cc.
#pragma once

#include <memory>

#include "collectives/backend.h"

namespace loom::collectives {

/// Connects a full mesh of ctx.size ranks through ctx.store. Throws CommError
/// (or Timeout) when peers do not show up within ctx.timeout.
std::unique_ptr<Backend> make_gloo_backend(const BackendContext& ctx);

}  // namespace loom::collectives
