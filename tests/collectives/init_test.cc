// Environment-driven initialisation: variable precedence and the Slurm nodelist parser.
#include <gtest/gtest.h>

#include <cstdlib>

#include "collectives/init.h"

using namespace loom;
using namespace loom::collectives;

namespace {
// Clears every variable rank_info_from_env reads, restoring nothing (tests own the env).
void clear_env() {
  for (const char* v :
       {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID",
        "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST"})
    ::unsetenv(v);
}
}  // namespace

TEST(Nodelist, ExpandsRangesListsAndPadding) {
  EXPECT_EQ(parse_nodelist("node[01-04,07],gpu-a"),
            (std::vector<std::string>{"node01", "node02", "node03", "node04", "node07", "gpu-a"}));
  EXPECT_EQ(parse_nodelist("single"), std::vector<std::string>{"single"});
  EXPECT_EQ(parse_nodelist("n[8-11]"), (std::vector<std::string>{"n8", "n9", "n10", "n11"}));
  EXPECT_EQ(parse_nodelist("r[1-2]-c[1,3]"), (std::vector<std::string>{"r1-c1", "r1-c3", "r2-c1", "r2-c3"}));
  EXPECT_EQ(parse_nodelist("a,b[009-010]"), (std::vector<std::string>{"a", "b009", "b010"}));
}

TEST(Nodelist, MalformedListsThrowConfigError) {
  EXPECT_THROW(parse_nodelist("node[01-04"), ConfigError);
  EXPECT_THROW(parse_nodelist("node01]"), ConfigError);
  EXPECT_THROW(parse_nodelist("node[4-1]"), ConfigError);
  EXPECT_THROW(parse_nodelist("node[a-b]"), ConfigError);
  EXPECT_THROW(parse_nodelist(""), ConfigError);
}

TEST(RankInfo, TorchrunVariablesWinOverOpenMpiAndSlurm) {
  clear_env();
  ::setenv("RANK", "3", 1);
  ::setenv("WORLD_SIZE", "8", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  ::setenv("LOCAL_WORLD_SIZE", "2", 1);
  ::setenv("MASTER_ADDR", "10.0.0.5", 1);
  ::setenv("MASTER_PORT", "1234", 1);
  ::setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  RankInfo i = rank_info_from_env();
  EXPECT_EQ(i.source, "torchrun");
  EXPECT_EQ(i.rank, 3);
  EXPECT_EQ(i.world_size, 8);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_world_size, 2);
  EXPECT_EQ(i.master_addr, "10.0.0.5");
  EXPECT_EQ(i.master_port, 1234);
  clear_env();
}

TEST(RankInfo, OpenMpiThenSlurmWithFirstNodeAsMaster) {
  clear_env();
  ::setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
  ::setenv("SLURM_PROCID", "2", 1);
  ::setenv("SLURM_NTASKS", "4", 1);
  RankInfo m = rank_info_from_env();
  EXPECT_EQ(m.source, "openmpi");
  EXPECT_EQ(m.rank, 1);
  EXPECT_EQ(m.world_size, 4);
  EXPECT_EQ(m.master_addr, "127.0.0.1");
  clear_env();
  ::setenv("SLURM_PROCID", "5", 1);
  ::setenv("SLURM_NTASKS", "8", 1);
  ::setenv("SLURM_LOCALID", "1", 1);
  ::setenv("SLURM_JOB_NODELIST", "gpu[07-10],cpu-x", 1);
  RankInfo s = rank_info_from_env();
  EXPECT_EQ(s.source, "slurm");
  EXPECT_EQ(s.rank, 5);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.master_addr, "gpu07");
  EXPECT_EQ(s.master_port, 29500);
  clear_env();
}

TEST(RankInfo, MissingOrMalformedVariablesThrowConfigError) {
  clear_env();
  EXPECT_THROW(rank_info_from_env(), ConfigError);
  ::setenv("RANK", "x", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  EXPECT_THROW(rank_info_from_env(), ConfigError);
  ::setenv("RANK", "2", 1);
  EXPECT_THROW(rank_info_from_env(), ConfigError);  // rank >= world size
  clear_env();
}
