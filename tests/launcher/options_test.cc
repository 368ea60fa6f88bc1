// Unit tests of trainlaunch's option parsing, the Slurm environment and the
// nodelist parser it relies on.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <thread>

#include "collectives/init.h"
#include "launcher/launcher.h"
#include "launcher/options.h"
#include "tensor/error.h"

using namespace loom;
using namespace loom::launcher;

namespace {
// The message of the InvalidArgument that parse_options throws for args.
std::string parse_error(const std::vector<std::string>& args) {
  try {
    validate(parse_options(args));
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(LaunchOptions, GnuSpellingSeparateAndEqualsValues) {
  auto o = parse_options({"--nproc-per-node", "4", "--nnodes=3", "--node-rank", "2", "--master-addr", "n01",
                          "--master-port=1234", "--max-restarts", "5", "--log-dir", "/tmp/x", "--monitor-interval",
                          "0.25", "--", "prog", "--flag", "a"});
  EXPECT_EQ(o.nproc_per_node, 4);
  EXPECT_EQ(o.nnodes, 3);
  EXPECT_EQ(o.node_rank, 2);
  EXPECT_EQ(o.master_addr, "n01");
  EXPECT_EQ(o.master_port, 1234);
  EXPECT_EQ(o.max_restarts, 5);
  EXPECT_EQ(o.log_dir, "/tmp/x");
  EXPECT_DOUBLE_EQ(o.monitor_interval_s, 0.25);
  EXPECT_EQ(o.program, (std::vector<std::string>{"prog", "--flag", "a"}));
}

TEST(LaunchOptions, UnderscoreAliasesAreAccepted) {
  auto o = parse_options(
      {"--nproc_per_node=2", "--node_rank", "1", "--nnodes", "2", "--master_addr", "h", "--max_restarts", "1", "prog"});
  EXPECT_EQ(o.nproc_per_node, 2);
  EXPECT_EQ(o.node_rank, 1);
  EXPECT_EQ(o.master_addr, "h");
  EXPECT_EQ(o.max_restarts, 1);
  EXPECT_EQ(o.program, std::vector<std::string>{"prog"});
}

TEST(LaunchOptions, ProgramStartsAtFirstNonOptionAndKeepsItsOwnOptions) {
  auto o = parse_options({"--standalone", "train", "--nnodes", "7"});
  EXPECT_TRUE(o.standalone);
  EXPECT_EQ(o.nnodes, 1);
  EXPECT_EQ(o.program, (std::vector<std::string>{"train", "--nnodes", "7"}));
}

TEST(LaunchOptions, CpuMeansOneRankPerCore) {
  auto o = parse_options({"--nproc-per-node", "cpu", "p"});
  EXPECT_EQ(o.nproc_per_node, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

TEST(LaunchOptions, GpuWithoutDevicesIsAnErrorNamingTheOption) {
  if (count_gpus() > 0) GTEST_SKIP() << "GPUs present";
  EXPECT_NE(parse_error({"--nproc-per-node", "gpu", "p"}).find("--nproc-per-node gpu"), std::string::npos);
}

TEST(LaunchOptions, RdzvEndpointSplitsHostAndPort) {
  auto o = parse_options({"--rdzv-endpoint", "node7:29400", "p"});
  EXPECT_EQ(o.rdzv_host, "node7");
  EXPECT_EQ(o.rdzv_port, 29400);
  EXPECT_NE(parse_error({"--rdzv-endpoint", "node7", "p"}).find("HOST:PORT"), std::string::npos);
  EXPECT_NE(parse_error({"--rdzv-endpoint", "node7:abc", "p"}).find("HOST:PORT"), std::string::npos);
}

TEST(LaunchOptions, ErrorsNameTheOptionAndTheExpectedForm) {
  std::string e = parse_error({"--nproc-per-node", "four", "p"});
  EXPECT_NE(e.find("--nproc-per-node"), std::string::npos) << e;
  EXPECT_NE(e.find("N|cpu|gpu"), std::string::npos) << e;
  e = parse_error({"--master-port", "70000", "p"});
  EXPECT_NE(e.find("--master-port"), std::string::npos) << e;
  EXPECT_NE(e.find("1..65534"), std::string::npos) << e;
  e = parse_error({"--monitor-interval", "-1", "p"});
  EXPECT_NE(e.find("--monitor-interval"), std::string::npos) << e;
  e = parse_error({"--max-restarts"});
  EXPECT_NE(e.find("--max-restarts needs a value"), std::string::npos) << e;
  e = parse_error({"--nprocs", "2", "p"});
  EXPECT_NE(e.find("unknown option --nprocs"), std::string::npos) << e;
  e = parse_error({"--standalone=yes", "p"});
  EXPECT_NE(e.find("takes no value"), std::string::npos) << e;
}

TEST(LaunchOptions, ValidateRejectsMissingProgramAndNodeRankOutOfRange) {
  EXPECT_NE(parse_error({"--nnodes", "2"}).find("no program"), std::string::npos);
  EXPECT_NE(parse_error({"--nnodes", "2", "--node-rank", "2", "p"}).find("--node-rank 2 must be below --nnodes 2"),
            std::string::npos);
  EXPECT_EQ(parse_error({"--nnodes", "2", "--node-rank", "1", "p"}), "");
}

TEST(LaunchOptions, HelpNeedsNoProgramAndDescribesEveryOption) {
  auto o = parse_options({"--help"});
  EXPECT_TRUE(o.help);
  for (const char* opt : {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port",
                          "--rdzv-endpoint", "--standalone", "--max-restarts", "--log-dir", "--monitor-interval"})
    EXPECT_NE(usage().find(opt), std::string::npos) << opt;
  // The layout every loom program's --help shares (CLI11): options, then a footer ending in an example.
  EXPECT_NE(usage().find("Example:\n  trainlaunch --standalone"), std::string::npos) << usage();
}

TEST(SlurmEnv, FillsNodeRankCountAndMasterFromSlurm) {
  auto o = parse_options({"p"});
  apply_slurm_env(o, {{"SLURM_NODEID", "2"}, {"SLURM_NNODES", "4"}, {"SLURM_JOB_NODELIST", "gpu[07-10],cpu1"}});
  EXPECT_EQ(o.node_rank, 2);
  EXPECT_EQ(o.nnodes, 4);
  EXPECT_EQ(o.master_addr, "gpu07");
}

TEST(SlurmEnv, OptionsGivenByTheUserWin) {
  auto o = parse_options({"--master-addr", "10.0.0.1", "--nnodes", "1", "p"});
  apply_slurm_env(o, {{"SLURM_NODEID", "0"}, {"SLURM_NNODES", "4"}, {"SLURM_JOB_NODELIST", "a[1-4]"}});
  EXPECT_EQ(o.nnodes, 1);
  EXPECT_EQ(o.master_addr, "10.0.0.1");
}

TEST(SlurmEnv, SeveralLaunchersPerNodeIsAnError) {
  auto o = parse_options({"p"});
  try {
    apply_slurm_env(o, {{"SLURM_NODEID", "0"},
                        {"SLURM_NNODES", "2"},
                        {"SLURM_JOB_NODELIST", "a[1-2]"},
                        {"SLURM_STEP_NUM_TASKS", "8"},
                        {"SLURM_STEP_NUM_NODES", "2"}});
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("duplicate ranks"), std::string::npos) << e.what();
  }
}

TEST(SlurmEnv, IgnoredOutsideSlurmAndWithStandalone) {
  auto o = parse_options({"p"});
  apply_slurm_env(o, {{"SLURM_NNODES", "4"}});
  EXPECT_EQ(o.nnodes, 1);
  auto s = parse_options({"--standalone", "p"});
  apply_slurm_env(s, {{"SLURM_NODEID", "1"}, {"SLURM_NNODES", "4"}});
  EXPECT_EQ(s.nnodes, 1);
  EXPECT_EQ(s.node_rank, 0);
}

TEST(Nodelist, ExpandsRangesKeepsPaddingAndPlainNames) {
  EXPECT_EQ(collectives::parse_nodelist("node[01-03,07],gpu-a"),
            (std::vector<std::string>{"node01", "node02", "node03", "node07", "gpu-a"}));
  EXPECT_EQ(collectives::parse_nodelist("single"), std::vector<std::string>{"single"});
  EXPECT_THROW(collectives::parse_nodelist("node[1-3"), ConfigError);
}

TEST(Launcher, SignalNamesAndSecrets) {
  EXPECT_EQ(signal_name(SIGKILL), "SIGKILL");
  EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
  std::string a = random_secret(), b = random_secret();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_NE(a, b);
}
