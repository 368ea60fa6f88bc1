// Option parsing of trainlaunch and the Slurm environment.
#include "launcher/options.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>

#include "collectives/init.h"
#include "tensor/error.h"

namespace loom::launcher {
namespace {

int parse_int(const std::string& opt, const std::string& v, int lo, int hi, const char* form) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == v.size() && !v.empty() && x >= lo && x <= hi, "trainlaunch: ", opt, " got '", v, "'; expected ",
             form);
  return static_cast<int>(x);
}

double parse_seconds(const std::string& opt, const std::string& v) {
  size_t used = 0;
  double x = -1;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == v.size() && !v.empty() && x >= 0, "trainlaunch: ", opt, " got '", v,
             "'; expected a number of seconds >= 0, e.g. ", opt, " 0.5");
  return x;
}

int cores_present() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void split_host_port(const std::string& opt, const std::string& v, std::string* host, int* port) {
  size_t colon = v.rfind(':');
  LOOM_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < v.size(), "trainlaunch: ", opt, " got '", v,
             "'; expected HOST:PORT, e.g. ", opt, " node01:29400");
  *host = v.substr(0, colon);
  *port = parse_int(opt, v.substr(colon + 1), 1, 65535, "HOST:PORT with PORT in 1..65535");
}

}  // namespace

int count_gpus() {
  int n = 0;
  std::error_code ec;
  for (int i = 0; i < 64; ++i) {
    if (std::filesystem::exists("/dev/nvidia" + std::to_string(i), ec)) ++n;
  }
  if (const char* vis = std::getenv("CUDA_VISIBLE_DEVICES")) {
    std::string s = vis;
    int listed = s.empty() ? 0 : 1 + static_cast<int>(std::count(s.begin(), s.end(), ','));
    n = std::min(n, listed);
  }
  return n;
}

namespace {

// The options' values as given (strings: each is checked below with a message that names the option and the form it
// expects), and the flags.
struct RawOptions {
  std::vector<std::string> program;  // for --help only: parse_options splits the program off itself
  std::string nproc_per_node, nnodes, node_rank, master_addr, master_port, rdzv_endpoint, max_restarts, log_dir,
      monitor_interval, grace_period, heartbeat_timeout;
  bool help = false, free_port = false, standalone = false;
};

// trainlaunch's command line as a CLI11 app: the one table of options that parsing and --help both use.
std::unique_ptr<CLI::App> make_app(RawOptions& r) {
  auto app = std::make_unique<CLI::App>(
      "Starts --nproc-per-node ranks of PROGRAM on this node (one launcher per node), sets RANK, LOCAL_RANK,\n"
      "WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT, LOOM_RESTART_COUNT, LOOM_STORE_SECRET\n"
      "and LOOM_LAUNCHER_STORE, prefixes each output line with its rank, stops every rank when one fails and prints\n"
      "which one failed and how. Underscore spellings (--nproc_per_node) work.",
      "trainlaunch");
  app->set_help_flag();  // --help is an ordinary flag here: parse_options reports it, main prints usage()
  app->get_formatter()->column_width(30);
  app->add_option("--nproc-per-node", r.nproc_per_node,
                  "ranks on this node: a number, one per core, or one per GPU (default 1)")
      ->type_name("N|cpu|gpu");
  app->add_option("--nnodes", r.nnodes, "number of nodes, one launcher each (default 1; Slurm: SLURM_NNODES)")
      ->type_name("N");
  app->add_option("--node-rank", r.node_rank, "this node's rank 0..N-1 (default 0; Slurm: SLURM_NODEID)")
      ->type_name("R");
  app->add_option("--master-addr", r.master_addr,
                  "address of node 0, where rank 0 and the launchers' store run (default 127.0.0.1; Slurm: first "
                  "host of SLURM_JOB_NODELIST)")
      ->type_name("HOST");
  app->add_option("--master-port", r.master_port,
                  "port of rank 0's store (default 29500); the launchers' own store listens on PORT+1 unless "
                  "--rdzv-endpoint says otherwise")
      ->type_name("PORT");
  app->add_option("--rdzv-endpoint", r.rdzv_endpoint, "where node 0's launcher hosts the launchers' store")
      ->type_name("HOST:PORT");
  app->add_flag("--standalone", r.standalone, "one node on 127.0.0.1 with free ports chosen for you");
  app->add_option("--max-restarts", r.max_restarts,
                  "restart every rank after a failure, at most R times for the job (default 0)")
      ->type_name("R");
  app->add_option("--log-dir", r.log_dir, "keep each rank's output in DIR/attempt_K/rank_N.log")->type_name("DIR");
  app->add_option("--monitor-interval", r.monitor_interval, "how often ranks and other nodes are checked (default 0.1)")
      ->type_name("SECONDS");
  app->add_option("--grace-period", r.grace_period,
                  "time between SIGTERM and SIGKILL when ranks are stopped (default 5)")
      ->type_name("SECONDS");
  app->add_option("--heartbeat-timeout", r.heartbeat_timeout, "a node silent this long is taken as dead (default 30)")
      ->type_name("SECONDS");
  app->add_flag("--free-port", r.free_port,
                "print a port P with P and P+1 free on this node, below the ephemeral range (for --master-port in "
                "batch scripts), and exit");
  app->add_flag("--help", r.help, "this text");
  app->add_option("PROGRAM", r.program,
                  "after the options (or after --): the program every rank runs, with its own arguments");
  app->footer(
      "The job secret of the authenticated store is LOOM_STORE_SECRET; on one node a random one is made when it is\n"
      "unset; with several nodes set it on every node. SIGINT/SIGTERM are forwarded to the ranks, and to the other\n"
      "nodes' ranks; a repeated SIGTERM changes nothing, a second SIGINT kills at once.\n"
      "Exit status: 0 when every rank exited 0, also after a stop on SIGINT/SIGTERM (the ranks saved and exited 0\n"
      "within --grace-period); 128+signal when a signal stopped the job and a rank was killed or failed; 1 after a\n"
      "failure (restarts used up); 2 a usage error.\n"
      "Example:\n"
      "  trainlaunch --standalone --nproc-per-node 2 -- pretrain --config configs/tiny_cpu.yaml");
  return app;
}

}  // namespace

LaunchOptions parse_options(const std::vector<std::string>& args) {
  RawOptions r;
  std::unique_ptr<CLI::App> app = make_app(r);
  // The launcher's own options end at "--" or at the first argument that is neither an option nor an option's value
  // (the program, whose options are its own). Each option is handed to CLI11 as "--name=value" with the name in its
  // GNU spelling, so underscore spellings work and a value that looks like an option stays a value.
  std::vector<std::string> mine;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (a.rfind("--", 0) != 0) break;  // first non-option: the program
    const size_t eq = a.find('=');
    std::string name = a.substr(0, eq);
    std::replace(name.begin() + 2, name.end(), '_', '-');
    const CLI::Option* opt = app->get_option_no_throw(name);
    if (opt == nullptr) LOOM_THROW(InvalidArgument, "trainlaunch: unknown option ", name, "; see trainlaunch --help");
    if (name == "--standalone" || name == "--free-port" || name == "--help") {  // the flags
      LOOM_CHECK(eq == std::string::npos, "trainlaunch: ", name, " takes no value (got '", a.substr(eq + 1), "')");
      mine.push_back(name);
      continue;
    }
    std::string value;
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
    } else {
      LOOM_CHECK(i + 1 < args.size(), "trainlaunch: ", name, " needs a value; expected ", name, " ",
                 opt->get_type_name());
      value = args[++i];
    }
    mine.push_back(name + "=" + value);
  }
  std::reverse(mine.begin(), mine.end());  // CLI11 takes the arguments in reverse order
  try {
    app->parse(mine);
  } catch (const CLI::ParseError& e) {
    LOOM_THROW(InvalidArgument, "trainlaunch: ", e.what(), "; see trainlaunch --help");
  }
  LaunchOptions o;
  o.help = r.help;
  o.free_port = r.free_port;
  o.standalone = r.standalone;
  auto given = [&](const char* name) { return app->get_option(name)->count() > 0; };
  if (given("--nproc-per-node")) {
    const std::string& v = r.nproc_per_node;
    if (v == "cpu") {
      o.nproc_per_node = cores_present();
    } else if (v == "gpu") {
      o.nproc_per_node = count_gpus();
      LOOM_CHECK(o.nproc_per_node > 0, "trainlaunch: --nproc-per-node gpu but no GPU is visible (/dev/nvidiaN, ",
                 "CUDA_VISIBLE_DEVICES); give a number or 'cpu'");
    } else {
      o.nproc_per_node = parse_int("--nproc-per-node", v, 1, 1 << 20, "N|cpu|gpu with N >= 1, e.g. --nproc-per-node 4");
    }
  }
  if (given("--nnodes")) {
    o.nnodes = parse_int("--nnodes", r.nnodes, 1, 1 << 20, "a node count N >= 1, e.g. --nnodes 2");
    o.set_nnodes = true;
  }
  if (given("--node-rank")) {
    o.node_rank = parse_int("--node-rank", r.node_rank, 0, 1 << 20, "a node rank R >= 0, e.g. --node-rank 1");
    o.set_node_rank = true;
  }
  if (given("--master-addr")) {
    o.master_addr = r.master_addr;
    LOOM_CHECK(!o.master_addr.empty(), "trainlaunch: --master-addr got ''; expected a host name or address");
    o.set_master_addr = true;
  }
  if (given("--master-port")) {
    o.master_port =
        parse_int("--master-port", r.master_port, 1, 65534, "a TCP port 1..65534, e.g. --master-port 29500");
    o.set_master_port = true;
  }
  if (given("--rdzv-endpoint")) split_host_port("--rdzv-endpoint", r.rdzv_endpoint, &o.rdzv_host, &o.rdzv_port);
  if (given("--max-restarts"))
    o.max_restarts = parse_int("--max-restarts", r.max_restarts, 0, 1 << 20, "a count R >= 0, e.g. --max-restarts 3");
  if (given("--log-dir")) o.log_dir = r.log_dir;
  if (given("--monitor-interval")) o.monitor_interval_s = parse_seconds("--monitor-interval", r.monitor_interval);
  if (given("--grace-period")) o.grace_period_s = parse_seconds("--grace-period", r.grace_period);
  if (given("--heartbeat-timeout")) o.heartbeat_timeout_s = parse_seconds("--heartbeat-timeout", r.heartbeat_timeout);
  for (; i < args.size(); ++i) o.program.push_back(args[i]);
  if (o.standalone) {
    LOOM_CHECK(!(o.set_nnodes && o.nnodes != 1), "trainlaunch: --standalone runs one node, but --nnodes is ", o.nnodes);
    o.nnodes = 1;
    o.node_rank = 0;
    o.master_addr = "127.0.0.1";
  }
  return o;
}

void apply_slurm_env(LaunchOptions& o, const std::map<std::string, std::string>& env) {
  auto get = [&](const char* k) -> const std::string* {
    auto it = env.find(k);
    return it == env.end() ? nullptr : &it->second;
  };
  if (o.standalone || !get("SLURM_NODEID")) return;
  auto num = [&](const char* k, int lo) {
    return parse_int(k, *get(k), lo, 1 << 20, "an integer (Slurm's environment is malformed)");
  };
  if (!o.set_nnodes && get("SLURM_NNODES")) o.nnodes = num("SLURM_NNODES", 1);
  if (!o.set_node_rank) o.node_rank = num("SLURM_NODEID", 0);
  if (!o.set_master_addr && get("SLURM_JOB_NODELIST")) {
    auto hosts = collectives::parse_nodelist(*get("SLURM_JOB_NODELIST"));
    LOOM_CHECK(!hosts.empty(), "trainlaunch: SLURM_JOB_NODELIST is empty; give --master-addr");
    o.master_addr = hosts[0];
  }
  if (get("SLURM_STEP_NUM_TASKS") && get("SLURM_STEP_NUM_NODES")) {
    int tasks = num("SLURM_STEP_NUM_TASKS", 1), nodes = num("SLURM_STEP_NUM_NODES", 1);
    LOOM_CHECK(tasks == nodes, "trainlaunch: srun started ", tasks, " tasks on ", nodes,
               " nodes, so several launchers per node would start duplicate ranks; run one launcher per node "
               "(srun --ntasks-per-node=1 trainlaunch ...) and let --nproc-per-node start the ranks");
  }
}

void validate(const LaunchOptions& o) {
  LOOM_CHECK(!o.program.empty(), "trainlaunch: no program given; usage: trainlaunch [options] -- PROGRAM [ARGS...]");
  LOOM_CHECK(o.node_rank < o.nnodes, "trainlaunch: --node-rank ", o.node_rank, " must be below --nnodes ", o.nnodes);
  LOOM_CHECK(o.monitor_interval_s > 0, "trainlaunch: --monitor-interval must be > 0 seconds");
}

std::string usage() {
  RawOptions r;
  return make_app(r)->help();
}

}  // namespace loom::launcher
