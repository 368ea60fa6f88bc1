// Command line of trainlaunch: torchrun's options in GNU spelling (underscore
// aliases accepted), parsed into LaunchOptions, and the Slurm environment that
// fills in node rank, node count and master address under srun.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace loom::launcher {

/// Everything trainlaunch was asked to do.
struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// HOST:PORT of the launchers' own store; empty: master_addr:master_port+1.
  std::string rdzv_host;
  int rdzv_port = 0;
  bool standalone = false;
  int max_restarts = 0;
  std::string log_dir;
  double monitor_interval_s = 0.1;
  /// Seconds between SIGTERM and SIGKILL when ranks are stopped.
  double grace_period_s = 5.0;
  /// A node whose heartbeat is older than this is taken as dead.
  double heartbeat_timeout_s = 30.0;
  bool help = false;
  /// --free-port: print a free MASTER_PORT for a job on this node (it and the port above it) and exit.
  bool free_port = false;
  /// Which of nnodes/node_rank/master_addr/master_port the user gave.
  bool set_nnodes = false, set_node_rank = false, set_master_addr = false, set_master_port = false;
  /// Program and its arguments (everything after "--" or the first non-option).
  std::vector<std::string> program;
};

/// Parses argv[1..] (argv[0] is skipped). Accepts "--opt value", "--opt=value"
/// and "--opt_name" spellings. --nproc-per-node takes N, "cpu" (cores present)
/// or "gpu" (devices present). Throws InvalidArgument naming the option and the
/// expected form on an unknown option, a missing or malformed value, or a
/// missing program (unless --help or --free-port).
LaunchOptions parse_options(const std::vector<std::string>& args);

/// Fills nnodes, node_rank and master_addr from SLURM_NNODES, SLURM_NODEID and
/// the first host of SLURM_JOB_NODELIST when SLURM_NODEID is set and the user
/// did not give them. env is the environment (name -> value). Throws
/// InvalidArgument when SLURM_STEP_NUM_TASKS shows more than one launcher per
/// node (duplicate ranks would start) or a value is malformed.
void apply_slurm_env(LaunchOptions& o, const std::map<std::string, std::string>& env);

/// Checks the options against each other (node_rank < nnodes, ports in range,
/// a program given). Throws InvalidArgument.
void validate(const LaunchOptions& o);

/// The --help text: each option and what it does.
std::string usage();

/// Number of GPUs visible (counts /dev/nvidiaN; CUDA_VISIBLE_DEVICES narrows).
int count_gpus();

}  // namespace loom::launcher
