// Initialisation from the environment: torchrun-style variables first, then
// Open MPI's, then Slurm's (with our own nodelist parser), so one binary runs
// under trainlaunch, mpirun and srun unchanged.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "collectives/store.h"

namespace loom::collectives {

/// Where this process sits in the job, and where the store lives.
struct RankInfo {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source;  // "torchrun", "openmpi" or "slurm"
};

/// Reads RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT,
/// else OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}, else SLURM_PROCID,
/// SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE and the first host of
/// SLURM_JOB_NODELIST. MASTER_ADDR/MASTER_PORT override the address in every
/// case. Throws ConfigError when none is set or a value is malformed.
RankInfo rank_info_from_env();

/// Expands a Slurm hostlist: "node[01-04,07],gpu-a" -> node01 node02 node03
/// node04 node07 gpu-a (zero padding kept, several bracket groups allowed).
/// Throws ConfigError on unbalanced brackets or a bad range.
std::vector<std::string> parse_nodelist(const std::string& list);

struct InitOptions {
  ProcessGroupOptions group = default_process_group_options();
  /// Store secret; empty: LOOM_STORE_SECRET.
  std::string secret;
  /// Use this store instead of a TCPStore at MASTER_ADDR:MASTER_PORT.
  std::shared_ptr<Store> store;
};

/// Creates the world group: rank 0 hosts a TCPStore at master_addr:master_port
/// (listening on that address only), the others connect to it, and the backend
/// ("gloo", "mpi", "nccl") connects through it. Throws ConfigError, CommError
/// or Timeout (naming what it waited for).
std::shared_ptr<ProcessGroup> init_process_group(const std::string& backend, InitOptions options = {});

}  // namespace loom::collectives
