// The mpi backend: Open MPI under mpirun. Initialises MPI with
// MPI_THREAD_MULTIPLE when nobody did; ops are non-blocking MPI calls polled by
// the group's worker thread until done or until their timeout.
#pragma once

#include <memory>

#include "collectives/backend.h"

namespace loom::collectives {

/// A communicator over ctx.global_ranks of MPI_COMM_WORLD (which must match
/// the world group). Throws CommError when MPI cannot be initialised or the
/// world sizes disagree.
std::unique_ptr<Backend> make_mpi_backend(const BackendContext& ctx);

/// True when this process was started by mpirun (OMPI_COMM_WORLD_SIZE set).
bool launched_by_mpirun();

}  // namespace loom::collectives
