#include "collectives/init.h"

#include <cstdlib>

#include "collectives/tcp_store.h"
#include "tensor/logging.h"

namespace loom::collectives {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (v == nullptr) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  LOOM_CHECK_T(ConfigError, *end == '\0' && x >= 0, "init_process_group: ", name, "='", v,
               "' is not a non-negative integer");
  return static_cast<int>(x);
}

// Splits on commas that are outside brackets.
std::vector<std::string> split_top(const std::string& s) {
  std::vector<std::string> out;
  int depth = 0;
  std::string cur;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    LOOM_CHECK_T(ConfigError, depth >= 0 && depth <= 1, "parse_nodelist: unbalanced brackets in '", s, "'");
    if (c == ',' && depth == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  LOOM_CHECK_T(ConfigError, depth == 0, "parse_nodelist: unbalanced brackets in '", s, "'");
  out.push_back(cur);
  return out;
}

void expand(const std::string& item, std::vector<std::string>& out) {
  size_t open = item.find('[');
  if (open == std::string::npos) {
    LOOM_CHECK_T(ConfigError, !item.empty() && item.find(']') == std::string::npos, "parse_nodelist: bad host '", item,
                 "'");
    out.push_back(item);
    return;
  }
  size_t close = item.find(']', open);
  LOOM_CHECK_T(ConfigError, close != std::string::npos, "parse_nodelist: unbalanced brackets in '", item, "'");
  std::string prefix = item.substr(0, open), body = item.substr(open + 1, close - open - 1),
              rest = item.substr(close + 1);
  LOOM_CHECK_T(ConfigError, !body.empty(), "parse_nodelist: empty brackets in '", item, "'");
  size_t start = 0;
  while (start <= body.size()) {
    size_t comma = body.find(',', start);
    std::string range = body.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t dash = range.find('-');
    std::string lo = range.substr(0, dash), hi = dash == std::string::npos ? lo : range.substr(dash + 1);
    auto digits = [](const std::string& x) {
      return !x.empty() && x.find_first_not_of("0123456789") == std::string::npos;
    };
    LOOM_CHECK_T(ConfigError, digits(lo) && digits(hi), "parse_nodelist: bad range '", range, "' in '", item, "'");
    long a = std::stol(lo), b = std::stol(hi);
    LOOM_CHECK_T(ConfigError, a <= b && b - a < 100000, "parse_nodelist: bad range '", range, "' in '", item, "'");
    for (long k = a; k <= b; ++k) {
      std::string num = std::to_string(k);
      if (num.size() < lo.size()) num = std::string(lo.size() - num.size(), '0') + num;
      expand(prefix + num + rest, out);  // rest may hold another bracket group
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
}

}  // namespace

std::vector<std::string> parse_nodelist(const std::string& list) {
  std::vector<std::string> out;
  LOOM_CHECK_T(ConfigError, !list.empty(), "parse_nodelist: empty nodelist");
  for (const auto& item : split_top(list)) expand(item, out);
  return out;
}

RankInfo rank_info_from_env() {
  RankInfo info;
  if (env("RANK") && env("WORLD_SIZE")) {
    info.source = "torchrun";
    info.rank = env_int("RANK", 0);
    info.world_size = env_int("WORLD_SIZE", 1);
    info.local_rank = env_int("LOCAL_RANK", info.rank);
    info.local_world_size = env_int("LOCAL_WORLD_SIZE", info.world_size);
  } else if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE")) {
    info.source = "openmpi";
    info.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    info.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    info.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    info.local_world_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", info.world_size);
    LOOM_CHECK_T(ConfigError, env("MASTER_ADDR") || info.local_world_size == info.world_size,
                 "init_process_group: under mpirun across several nodes, set MASTER_ADDR (and MASTER_PORT) to rank "
                 "0's address, e.g. mpirun -x MASTER_ADDR=node01 ...");
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    info.source = "slurm";
    info.rank = env_int("SLURM_PROCID", 0);
    info.world_size = env_int("SLURM_NTASKS", 1);
    info.local_rank = env_int("SLURM_LOCALID", 0);
    const char* per = env("SLURM_NTASKS_PER_NODE");
    info.local_world_size = per ? std::atoi(per) : info.world_size;  // "4(x2)" -> 4
    if (const char* nl = env("SLURM_JOB_NODELIST")) info.master_addr = parse_nodelist(nl).front();
  } else {
    LOOM_THROW(ConfigError,
               "init_process_group: no rank information in the environment; start the program with "
               "trainlaunch, mpirun or srun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
  }
  if (const char* a = env("MASTER_ADDR")) info.master_addr = a;
  info.master_port = env_int("MASTER_PORT", info.master_port);
  LOOM_CHECK_T(ConfigError, info.world_size >= 1 && info.rank < info.world_size, "init_process_group: rank ", info.rank,
               " is not below world size ", info.world_size, " (from ", info.source, " variables)");
  return info;
}

std::shared_ptr<ProcessGroup> init_process_group(const std::string& backend, InitOptions options) {
  RankInfo info = rank_info_from_env();
  set_log_prefix("rank " + std::to_string(info.rank));
  // The transport listens on the address that routes to the store's host.
  if (options.group.master_addr.empty()) options.group.master_addr = info.master_addr;
  if (options.group.master_port == 0) options.group.master_port = info.master_port;
  std::shared_ptr<Store> store = options.store;
  if (!store) {
    TCPStoreOptions so;
    so.is_server = info.rank == 0;
    so.secret = options.secret;
    store = std::make_shared<TCPStore>(info.master_addr, info.master_port, so);
  }
  return std::make_shared<ProcessGroup>(store, info.rank, info.world_size, backend, options.group);
}

}  // namespace loom::collectives
