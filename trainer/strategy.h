// Distribution strategies for fit(), as TensorFlow names them: one device, mirrored (every rank holds the model,
// gradients averaged: parallel/ DDP) and fully sharded (parallel/ FullyShard). The ranks come from the launcher
// (trainlaunch, mpirun or srun, read by collectives::init_process_group), so one program runs unchanged on 1 or N.
#pragma once

#include <memory>
#include <string>

#include "collectives/process_group.h"
#include "parallel/ddp.h"
#include "parallel/fully_shard.h"

namespace loom::trainer {

enum class StrategyKind { kSingleDevice, kMirrored, kFullyShard };

struct Strategy {
  StrategyKind kind = StrategyKind::kSingleDevice;
  /// The ranks the global batch is split across; null: the world group (world_group()).
  std::shared_ptr<collectives::ProcessGroup> group;
  parallel::DDPOptions ddp;
  parallel::FullyShardOptions fsdp;

  /// One process, no wrapper (a one-rank group still backs checkpoints).
  static Strategy single_device();
  /// DistributedDataParallel over `group` (null: the world).
  static Strategy mirrored(std::shared_ptr<collectives::ProcessGroup> group = nullptr);
  /// FullyShard over `group` (null: the world); units: the model's direct children that hold parameters.
  static Strategy fully_sharded(std::shared_ptr<collectives::ProcessGroup> group = nullptr);
  /// mirrored when the process was started by a launcher with more than one rank, else single_device.
  static Strategy from_env();
  /// "single_device", "mirrored" or "fully_sharded".
  std::string name() const;
};

/// Whether a launcher started this process (RANK, WORLD_SIZE, OMPI_COMM_WORLD_SIZE or SLURM_NTASKS set).
bool launched();
/// The world group of this process, made once: collectives::init_process_group(LOOM_BACKEND or "gloo") when
/// launched(), else a one-rank group over an in-memory store. Throws what init_process_group throws.
std::shared_ptr<collectives::ProcessGroup> world_group();

}  // namespace loom::trainer
