// trainlaunch's job loop. One thread: poll() on the ranks' output pipes with the
// monitor interval as timeout, waitpid(WNOHANG) for exits, and the launchers'
// store (node 0 hosts it) for rendezvous, heartbeats and the shared decision
// that an attempt failed. Keys: node/<r>/nproc, hb/<r>, fail/<a>, stopped/<a>,
// done/<a>, exit/<a>, start/<a>, signal/<a> (a node was stopped by SIGINT/SIGTERM:
// the others forward it to their ranks rather than treat the stop as a failure),
// abort (no restart: a signal or a dead node).
#include "launcher/launcher.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "collectives/tcp_store.h"
#include "tensor/error.h"

extern char** environ;

namespace loom::launcher {
namespace {

using Clock = std::chrono::steady_clock;
using collectives::TCPStore;

volatile sig_atomic_t g_sigint = 0;
volatile sig_atomic_t g_sigterm = 0;

void on_signal(int sig) {
  if (sig == SIGINT) g_sigint = g_sigint + 1;
  if (sig == SIGTERM) g_sigterm = g_sigterm + 1;
}

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

void say(const std::string& msg) { write_all(2, "trainlaunch: " + msg + "\n"); }

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  std::string h = buf;
  return h.substr(0, h.find('.'));
}

/// True when a TCP socket can be bound to port on every local address right now (no SO_REUSEADDR, so a port with
/// connections in TIME_WAIT, or one a socket holds on any single address, counts as taken).
bool port_bindable(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

/// The first port of the kernel's ephemeral range (net.ipv4.ip_local_port_range; Linux's default 32768).
int ephemeral_low() {
  std::ifstream f("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  return (f >> low) && low > 0 ? low : 32768;
}

}  // namespace

int free_port(int count) {
  LOOM_CHECK(count >= 1, "trainlaunch: free_port needs a count >= 1, got ", count);
  constexpr int kLow = 20000;
  const int high = std::min(ephemeral_low() - 1, 32767) - (count - 1);  // the last first port whose run fits
  if (high > kLow) {
    std::random_device rd;
    std::mt19937 gen(rd());
    std::uniform_int_distribution<int> pick(kLow, high);
    for (int i = 0; i < 256; ++i) {
      const int p = pick(gen);
      int k = 0;
      while (k < count && port_bindable(p + k)) ++k;
      if (k == count) return p;
    }
  }
  LOOM_CHECK_T(CommError, count == 1, "trainlaunch: found no ", count, " consecutive free ports in 20000..",
               std::min(ephemeral_low() - 1, 32767), "; free some, or give the port yourself (--master-port)");
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  LOOM_CHECK_T(CommError, fd >= 0, "trainlaunch: socket() failed: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  LOOM_CHECK_T(CommError, ok, "trainlaunch: could not find a free port on 127.0.0.1");
  return ntohs(a.sin_port);
}

namespace {

/// One local rank of the current attempt.
struct Rank {
  int local = 0, global = 0;
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;
  std::string out_buf, err_buf;
  std::deque<std::string> tail;
  std::unique_ptr<std::ofstream> log;
  bool running = false;
  bool signalled_by_us = false;
  int status = 0;
  double exit_s = 0;
};

enum class Outcome { kSuccess, kFailed, kSignal };

class Launcher {
 public:
  explicit Launcher(const LaunchOptions& o) : o_(o), host_(host_name()) {}
  int run();

 private:
  void setup_store();
  void rendezvous();
  Outcome run_attempt();
  void spawn(Rank& r);
  void pump(std::vector<Rank>& ranks, int timeout_ms);
  void emit(Rank& r, std::string& buf, int fd_out, bool flush_partial);
  void reap(std::vector<Rank>& ranks);
  void signal_all(std::vector<Rank>& ranks, int sig);
  void stop_all(std::vector<Rank>& ranks, bool at_once);
  void drain(std::vector<Rank>& ranks);
  /// Reaps the ranks, relays their output and heartbeats until every rank has exited (true), or until deadline or a
  /// new SIGINT (false: the caller decides what comes next).
  bool wait_ranks(std::vector<Rank>& ranks, Clock::time_point deadline);
  /// --grace-period as a clock duration.
  Clock::duration grace() const {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.grace_period_s));
  }
  /// Forwards sig to the ranks and gives them the grace period to stop by themselves; records in clean_stop_
  /// whether every rank then exited 0. remote_why: empty when this launcher got the signal, else why another
  /// node's launcher stopped (it got the signal).
  Outcome stop_on_signal(std::vector<Rank>& ranks, int sig, const std::string& remote_why);
  /// The signal another node's launcher was stopped by (from the store), or 0.
  int remote_signal();
  bool remote_trouble(std::string* why);
  void heartbeat();
  /// Reads the other nodes' heartbeats; returns the first node whose heartbeat
  /// has not changed for --heartbeat-timeout seconds, or -1.
  int stale_node();
  void barrier(const std::string& key);
  /// "host gpu-b, address 10.0.0.2": where node n is, for reports.
  std::string node_where(int n) const;
  int linger(int rc);
  void print_report(const std::vector<Rank>& ranks, const Rank* first, const std::string& remote);
  std::string describe(const Rank& r) const;
  std::string prefix(const Rank& r) const {
    return o_.nnodes > 1 ? "[" + host_ + ":rank" + std::to_string(r.global) + "]: "
                         : "[rank" + std::to_string(r.global) + "]: ";
  }

  LaunchOptions o_;
  std::string host_;
  std::string secret_;
  std::unique_ptr<TCPStore> store_;
  std::string store_addr_;
  int world_size_ = 0, rank_offset_ = 0;
  int attempt_ = 0;
  Clock::time_point attempt_start_;
  Clock::time_point last_hb_;
  int64_t hb_count_ = 0;
  std::vector<std::string> hb_seen_;
  std::vector<Clock::time_point> hb_changed_;
  std::vector<std::string> node_host_, node_addr_;  // per node, from the rendezvous
  bool store_lost_ = false;
  int stop_signal_ = 0;
  bool clean_stop_ = false;  // after a signal: every local rank exited 0 within the grace period
  int dead_nodes_ = 0;
};

std::string Launcher::describe(const Rank& r) const {
  if (WIFEXITED(r.status)) return "exit code " + std::to_string(WEXITSTATUS(r.status));
  if (WIFSIGNALED(r.status)) return "signal " + signal_name(WTERMSIG(r.status));
  return "status " + std::to_string(r.status);
}

void Launcher::setup_store() {
  const char* env_secret = std::getenv("LOOM_STORE_SECRET");
  if (env_secret && *env_secret) {
    secret_ = env_secret;
  } else {
    LOOM_CHECK(o_.nnodes == 1, "trainlaunch: ", o_.nnodes, " nodes need one shared job secret: export ",
               "LOOM_STORE_SECRET=<same random string> on every node (e.g. $(openssl rand -hex 16))");
    secret_ = random_secret();
  }
  if (o_.standalone) o_.master_port = free_port(1);
  collectives::TCPStoreOptions so;
  so.secret = secret_;
  so.is_server = o_.node_rank == 0;
  // The launchers' requests are short; one not answered within the heartbeat
  // timeout means node 0 is gone or unreachable (the rendezvous waits longer).
  if (o_.nnodes > 1)
    so.timeout =
        std::max(collectives::Millis(1000), collectives::Millis(static_cast<int64_t>(o_.heartbeat_timeout_s * 1000)));
  std::string host;
  int port = 0;
  if (!o_.rdzv_host.empty()) {
    host = o_.rdzv_host;
    port = o_.rdzv_port;
  } else if (o_.nnodes == 1) {
    host = "127.0.0.1";  // only local ranks use it: any free port
  } else {
    host = o_.master_addr;
    port = o_.master_port + 1;
  }
  store_ = std::make_unique<TCPStore>(host, port, so);
  store_addr_ = host + ":" + std::to_string(store_->port());
}

void Launcher::heartbeat() {
  if (store_lost_ || o_.nnodes == 1) return;
  if (seconds_since(last_hb_) < std::min(0.5, o_.heartbeat_timeout_s / 4)) return;
  last_hb_ = Clock::now();
  store_->set("hb/" + std::to_string(o_.node_rank), std::to_string(++hb_count_));
}

bool Launcher::remote_trouble(std::string* why) {
  if (o_.nnodes == 1) return false;
  if (store_lost_) {
    *why = "lost the launchers' store at " + store_addr_ + " (node 0's launcher gone or unreachable)";
    return true;
  }
  try {
    heartbeat();
    std::string fkey = "fail/" + std::to_string(attempt_);
    if (store_->check({fkey})) {
      *why = store_->get_string(fkey);
      return true;
    }
    if (int n = stale_node(); n >= 0) {
      *why = "node " + std::to_string(n) + "'s launcher sent no heartbeat for " +
             std::to_string(static_cast<int>(seconds_since(hb_changed_[n]))) + " s (" + node_where(n) +
             "; down, or its network unreachable?)";
      store_->compare_set(fkey, {}, collectives::to_bytes(*why));
      store_->set("abort", *why);  // a dead node cannot rejoin: no restart
      ++dead_nodes_;
      return true;
    }
  } catch (const CommError& e) {
    store_lost_ = true;
    *why = "lost the launchers' store at " + store_addr_ + " (node 0's launcher gone or unreachable): " + e.what();
    return true;
  }
  return false;
}

int Launcher::stale_node() {
  for (int n = 0; n < o_.nnodes; ++n) {
    if (n == o_.node_rank) continue;
    std::string v = store_->get_string("hb/" + std::to_string(n));
    if (v != hb_seen_[n]) {
      hb_seen_[n] = v;
      hb_changed_[n] = Clock::now();
    } else if (seconds_since(hb_changed_[n]) > o_.heartbeat_timeout_s) {
      return n;
    }
  }
  return -1;
}

void Launcher::barrier(const std::string& key) {
  if (o_.nnodes == 1) return;
  store_->add(key, 1);
  while (store_->add(key, 0) < o_.nnodes) {
    // A failure published for the current attempt is expected here; only dead nodes matter.
    heartbeat();
    if (int n = stale_node(); n >= 0)
      LOOM_THROW(CommError, "trainlaunch: node ", n, "'s launcher sent no heartbeat while waiting at ", key, " (",
                 node_where(n), ")");
    std::this_thread::sleep_for(std::chrono::duration<double>(o_.monitor_interval_s));
  }
}

std::string Launcher::node_where(int n) const {
  if (n >= static_cast<int>(node_host_.size()) || node_host_[n].empty()) return "host unknown";
  return "host " + node_host_[n] + ", address " + node_addr_[n];
}

void Launcher::rendezvous() {
  hb_seen_.assign(o_.nnodes, "");
  hb_changed_.assign(o_.nnodes, Clock::now());
  node_host_.assign(o_.nnodes, "");
  node_addr_.assign(o_.nnodes, "");
  if (o_.nnodes == 1) {
    world_size_ = o_.nproc_per_node;
    return;
  }
  std::string me = std::to_string(o_.node_rank);
  store_->set("hb/" + me, "0");
  last_hb_ = Clock::now();
  // Host and address first: a node counts as joined once its nproc is set.
  std::string my_addr = store_->local_address();
  store_->set("node/" + me + "/host", host_);
  store_->set("node/" + me + "/addr", my_addr);
  store_->set("node/" + me + "/nproc", std::to_string(o_.nproc_per_node));
  std::vector<std::string> keys;
  for (int n = 0; n < o_.nnodes; ++n) keys.push_back("node/" + std::to_string(n) + "/nproc");
  // Wait for every node (up to LOOM_STORE_TIMEOUT_S). A node given another
  // secret never gets in: node 0's store sees its failed handshakes, say so.
  const collectives::Millis join_timeout = collectives::default_store_timeout();
  const auto join_deadline = Clock::now() + join_timeout;
  int64_t auth_seen = 0;
  std::string rejected;
  while (!store_->check(keys)) {
    collectives::TCPStore::AuthFailures af = store_->auth_failures();
    if (af.count > auth_seen) {
      auth_seen = af.count;
      rejected = "; the store rejected " + std::to_string(af.count) +
                 " connection(s) that failed the secret handshake, the last from " + af.last_peer +
                 ": every node must be given the same LOOM_STORE_SECRET";
      say("the store at " + store_addr_ + " rejected a connection from " + af.last_peer +
          " that failed the secret handshake (a node given a different LOOM_STORE_SECRET?); still waiting");
    }
    if (Clock::now() >= join_deadline) {
      std::string missing;
      for (int n = 0; n < o_.nnodes; ++n)
        if (!store_->check({keys[n]})) missing += (missing.empty() ? "" : ", ") + std::to_string(n);
      LOOM_THROW(CommError, "trainlaunch: node(s) ", missing, " did not join the store at ", store_addr_, " within ",
                 join_timeout.count() / 1000, " s (LOOM_STORE_TIMEOUT_S)", rejected);
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(o_.monitor_interval_s, 0.1)));
  }
  for (int n = 0; n < o_.nnodes; ++n) {
    std::string k = "node/" + std::to_string(n);
    int np = std::stoi(store_->get_string(k + "/nproc"));
    node_host_[n] = store_->get_string(k + "/host");
    node_addr_[n] = store_->get_string(k + "/addr");
    if (n < o_.node_rank) rank_offset_ += np;
    world_size_ += np;
    hb_changed_[n] = Clock::now();
  }
  say("node " + me + " of " + std::to_string(o_.nnodes) + " joined: world of " + std::to_string(world_size_) +
      " ranks, store " + store_addr_ + ", this node's address " + my_addr);
}

void Launcher::spawn(Rank& r) {
  int out[2], err[2];
  LOOM_CHECK_T(IoError, ::pipe2(out, O_CLOEXEC) == 0 && ::pipe2(err, O_CLOEXEC) == 0,
               "trainlaunch: pipe failed: ", std::strerror(errno));
  std::vector<std::string> env;
  auto overridden = [](const std::string& kv) {
    static const char* names[] = {"RANK=",
                                  "LOCAL_RANK=",
                                  "WORLD_SIZE=",
                                  "LOCAL_WORLD_SIZE=",
                                  "GROUP_RANK=",
                                  "MASTER_ADDR=",
                                  "MASTER_PORT=",
                                  "LOOM_RESTART_COUNT=",
                                  "TORCHELASTIC_RESTART_COUNT=",
                                  "TORCHELASTIC_MAX_RESTARTS=",
                                  "LOOM_STORE_SECRET=",
                                  "LOOM_LAUNCHER_STORE=",
                                  "GROUP_WORLD_SIZE="};
    for (const char* n : names)
      if (kv.rfind(n, 0) == 0) return true;
    return false;
  };
  for (char** e = environ; *e; ++e)
    if (!overridden(*e)) env.emplace_back(*e);
  auto put = [&](const std::string& k, const std::string& v) { env.push_back(k + "=" + v); };
  put("RANK", std::to_string(r.global));
  put("LOCAL_RANK", std::to_string(r.local));
  put("WORLD_SIZE", std::to_string(world_size_));
  put("LOCAL_WORLD_SIZE", std::to_string(o_.nproc_per_node));
  put("GROUP_RANK", std::to_string(o_.node_rank));
  put("GROUP_WORLD_SIZE", std::to_string(o_.nnodes));
  put("MASTER_ADDR", o_.master_addr);
  put("MASTER_PORT", std::to_string(o_.master_port));
  put("LOOM_RESTART_COUNT", std::to_string(attempt_));
  put("TORCHELASTIC_RESTART_COUNT", std::to_string(attempt_));
  put("TORCHELASTIC_MAX_RESTARTS", std::to_string(o_.max_restarts));
  put("LOOM_STORE_SECRET", secret_);
  put("LOOM_LAUNCHER_STORE", store_addr_);
  std::vector<char*> envp, argv;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = o_.program;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t parent = ::getpid();
  // Block INT/TERM across fork so that a signal sent to the new group before the
  // child resets its handlers is not swallowed by the launcher's handler.
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &block, &old);
  pid_t pid = ::fork();
  if (pid != 0) ::sigprocmask(SIG_SETMASK, &old, nullptr);
  LOOM_CHECK_T(IoError, pid >= 0, "trainlaunch: fork failed: ", std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a rank never outlives its launcher
    if (::getppid() != parent) ::_exit(127);
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    ::execvpe(argv[0], argv.data(), envp.data());
    std::string msg = "trainlaunch: cannot run " + o_.program[0] + ": " + std::strerror(errno) + "\n";
    write_all(2, msg);
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(out[1]);
  ::close(err[1]);
  ::fcntl(out[0], F_SETFL, O_NONBLOCK);
  ::fcntl(err[0], F_SETFL, O_NONBLOCK);
  r.pid = pid;
  r.out_fd = out[0];
  r.err_fd = err[0];
  r.running = true;
}

void Launcher::emit(Rank& r, std::string& buf, int fd_out, bool flush_partial) {
  size_t start = 0;
  std::string batch;
  for (;;) {
    size_t nl = buf.find('\n', start);
    if (nl == std::string::npos) break;
    std::string line = buf.substr(start, nl - start);
    batch += prefix(r) + line + "\n";
    if (r.log) *r.log << line << "\n";
    r.tail.push_back(line);
    if (r.tail.size() > 20) r.tail.pop_front();
    start = nl + 1;
  }
  buf.erase(0, start);
  if (flush_partial && !buf.empty()) {
    batch += prefix(r) + buf + "\n";
    if (r.log) *r.log << buf << "\n";
    r.tail.push_back(buf);
    if (r.tail.size() > 20) r.tail.pop_front();
    buf.clear();
  }
  if (r.log) r.log->flush();
  if (!batch.empty()) write_all(fd_out, batch);
}

void Launcher::pump(std::vector<Rank>& ranks, int timeout_ms) {
  std::vector<pollfd> fds;
  for (auto& r : ranks) {
    if (r.out_fd >= 0) fds.push_back({r.out_fd, POLLIN, 0});
    if (r.err_fd >= 0) fds.push_back({r.err_fd, POLLIN, 0});
  }
  if (fds.empty()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
    return;
  }
  int n = ::poll(fds.data(), fds.size(), timeout_ms);
  if (n <= 0) return;
  char buf[65536];
  for (auto& r : ranks) {
    for (int which = 0; which < 2; ++which) {
      int& fd = which == 0 ? r.out_fd : r.err_fd;
      if (fd < 0) continue;
      for (;;) {
        ssize_t k = ::read(fd, buf, sizeof(buf));
        if (k > 0) {
          (which == 0 ? r.out_buf : r.err_buf).append(buf, static_cast<size_t>(k));
          continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k == 0) {  // EOF
          ::close(fd);
          fd = -1;
        }
        break;
      }
      emit(r, which == 0 ? r.out_buf : r.err_buf, which == 0 ? 1 : 2, fd < 0);
    }
  }
}

void Launcher::reap(std::vector<Rank>& ranks) {
  for (auto& r : ranks) {
    if (!r.running) continue;
    int st = 0;
    pid_t p = ::waitpid(r.pid, &st, WNOHANG);
    if (p == r.pid) {
      r.running = false;
      r.status = st;
      r.exit_s = seconds_since(attempt_start_);
    }
  }
}

void Launcher::signal_all(std::vector<Rank>& ranks, int sig) {
  for (auto& r : ranks) {
    if (!r.running) continue;
    ::kill(-r.pid, sig);
    r.signalled_by_us = true;
  }
}

bool Launcher::wait_ranks(std::vector<Rank>& ranks, Clock::time_point deadline) {
  const int seen_int = g_sigint;
  for (;;) {
    reap(ranks);
    if (std::none_of(ranks.begin(), ranks.end(), [](const Rank& r) { return r.running; })) return true;
    if (Clock::now() >= deadline || g_sigint > seen_int) return false;
    pump(ranks, 20);
    try {
      heartbeat();
    } catch (const CommError&) {
      store_lost_ = true;
    }
  }
}

void Launcher::stop_all(std::vector<Rank>& ranks, bool at_once) {
  if (!at_once) signal_all(ranks, SIGTERM);
  // Past the grace period (or on a second SIGINT) SIGKILL, again on every further SIGINT, until all are reaped.
  if (!wait_ranks(ranks, Clock::now() + (at_once ? Clock::duration::zero() : grace()))) {
    do {
      signal_all(ranks, SIGKILL);
    } while (!wait_ranks(ranks, Clock::time_point::max()));
  }
  drain(ranks);
}

void Launcher::drain(std::vector<Rank>& ranks) {
  // Every rank is reaped, so what it wrote is in its pipes: read it all (a rank may have written and exited between
  // the last pump and the reap). A grandchild may hold a pipe open: read what is there, do not wait for EOF.
  pump(ranks, 0);
  for (auto& r : ranks) {
    emit(r, r.out_buf, 1, true);
    emit(r, r.err_buf, 2, true);
    if (r.out_fd >= 0) ::close(r.out_fd);
    if (r.err_fd >= 0) ::close(r.err_fd);
    r.out_fd = r.err_fd = -1;
  }
}

void Launcher::print_report(const std::vector<Rank>& ranks, const Rank* first, const std::string& remote) {
  std::string s = "\n================ trainlaunch: attempt " + std::to_string(attempt_) + " of the job failed (" +
                  std::to_string(o_.max_restarts) + " restarts allowed) ================\n";
  for (const auto& r : ranks) {
    if (&r == first) continue;
    std::string what;
    if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) {
      what = "exited 0";
    } else if (r.signalled_by_us) {
      what = "stopped by the launcher after the first failure (" + describe(r) + ")";
    } else {
      what = "failed after the first failure (" + describe(r) + "), likely a consequence";
    }
    s += "  rank " + std::to_string(r.global) + " (local rank " + std::to_string(r.local) + ") on " + host_ + ", pid " +
         std::to_string(r.pid) + ": " + what + "\n";
  }
  if (first) {
    s += "---------------- first failure ----------------\n";
    s += "  rank:   " + std::to_string(first->global) + " (local rank " + std::to_string(first->local) + ", node " +
         std::to_string(o_.node_rank) + ")\n";
    s += "  host:   " + host_ + "\n  pid:    " + std::to_string(first->pid) + "\n";
    s += "  failed: " + describe(*first) + "\n";
    char t[64];
    std::snprintf(t, sizeof(t), "%.2f", first->exit_s);
    s += "  time:   " + std::string(t) + " s after the attempt started\n";
    s += "  last " + std::to_string(first->tail.size()) + " lines of its output:\n";
    for (const auto& l : first->tail) s += "    | " + l + "\n";
  } else {
    s += "---------------- first failure (on another node) ----------------\n  " + remote + "\n";
  }
  s += "==============================================================================\n";
  write_all(2, s);
}

int Launcher::remote_signal() {
  if (o_.nnodes == 1 || store_lost_) return 0;
  try {
    std::string key = "signal/" + std::to_string(attempt_);
    if (store_->check({key})) return std::stoi(store_->get_string(key));
  } catch (const CommError&) {
    store_lost_ = true;
  } catch (const std::exception&) {  // a malformed value: treat as no signal
  }
  return 0;
}

Outcome Launcher::stop_on_signal(std::vector<Rank>& ranks, int sig, const std::string& remote_why) {
  stop_signal_ = sig;
  char grace_s[32];
  std::snprintf(grace_s, sizeof(grace_s), "%g", o_.grace_period_s);
  if (remote_why.empty()) {
    say("got " + signal_name(sig) + "; forwarding it to the ranks (grace period " + grace_s +
        " s; a second SIGINT kills at once)");
  } else {
    say(remote_why + "; forwarding " + signal_name(sig) + " to the ranks of this node (grace period " + grace_s +
        " s)");
  }
  // A rank may already have the signal (Slurm signals every process of the step; a process manager may signal the
  // whole group): the ranks' handlers take a repeat as the same request, so forwarding is always safe.
  signal_all(ranks, sig);
  if (remote_why.empty() && o_.nnodes > 1 && !store_lost_) {
    try {
      const std::string a = std::to_string(attempt_);
      std::string why = "node " + std::to_string(o_.node_rank) + " (" + host_ + ") was stopped by " + signal_name(sig);
      store_->compare_set("signal/" + a, {}, collectives::to_bytes(std::to_string(sig)));
      store_->compare_set("fail/" + a, {}, collectives::to_bytes(why));
      store_->set("abort", why);  // stopped on purpose: no node restarts
    } catch (const CommError&) {
      store_lost_ = true;
    }
  }
  // Repeated SIGTERMs (scancel sent twice, a whole-group signal) change nothing: only a second SIGINT (a person at
  // the terminal) or the end of the grace period cuts the ranks short.
  const bool cut_short = !wait_ranks(ranks, Clock::now() + grace());
  stop_all(ranks, true);
  clean_stop_ = !cut_short;
  for (auto& r : ranks) clean_stop_ = clean_stop_ && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0;
  if (clean_stop_) {
    say("every rank of this node stopped cleanly after " + signal_name(sig) + " (exit 0)");
  } else {
    std::string how;
    for (auto& r : ranks)
      if (!(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0))
        how += (how.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r.global) + ": " + describe(r);
    say("the ranks did not all stop cleanly after " + signal_name(sig) + (cut_short ? " (cut short)" : "") + ": " +
        how);
  }
  return Outcome::kSignal;
}

Outcome Launcher::run_attempt() {
  std::vector<Rank> ranks(o_.nproc_per_node);
  std::string logdir;
  if (!o_.log_dir.empty()) {
    logdir = o_.log_dir + "/attempt_" + std::to_string(attempt_);
    std::filesystem::create_directories(logdir);
  }
  attempt_start_ = Clock::now();
  for (int i = 0; i < o_.nproc_per_node; ++i) {
    Rank& r = ranks[i];
    r.local = i;
    r.global = rank_offset_ + i;
    if (!logdir.empty()) {
      r.log = std::make_unique<std::ofstream>(logdir + "/rank_" + std::to_string(r.global) + ".log");
      LOOM_CHECK_T(IoError, r.log->good(), "trainlaunch: cannot write log file under ", logdir);
    }
    spawn(r);
  }
  const int interval_ms = std::max(1, static_cast<int>(o_.monitor_interval_s * 1000));
  const std::string fkey = "fail/" + std::to_string(attempt_);
  for (;;) {
    pump(ranks, interval_ms);
    reap(ranks);
    // Signals to the launcher: forward, then stop (a second SIGINT kills at once).
    if (g_sigint > 0 || g_sigterm > 0) return stop_on_signal(ranks, g_sigint > 0 ? SIGINT : SIGTERM, "");
    const Rank* failed = nullptr;
    bool all_ok = true;
    for (auto& r : ranks) {
      if (r.running) {
        all_ok = false;
      } else if (!(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0)) {
        all_ok = false;
        if (!failed || r.exit_s < failed->exit_s) failed = &r;
      }
    }
    if (failed) {
      std::string desc = "rank " + std::to_string(failed->global) + " (local rank " + std::to_string(failed->local) +
                         ") on " + host_ + ", pid " + std::to_string(failed->pid) + ": " + describe(*failed);
      bool first = true;
      std::string remote;
      if (o_.nnodes > 1 && !store_lost_) {
        try {
          std::string won = collectives::to_string(store_->compare_set(fkey, {}, collectives::to_bytes(desc)));
          first = won == desc;
          remote = won;
        } catch (const CommError&) {
          store_lost_ = true;
        }
      }
      say(desc + "; stopping the other ranks");
      stop_all(ranks, false);
      print_report(ranks, first ? failed : nullptr, remote);
      return Outcome::kFailed;
    }
    if (all_ok) {
      drain(ranks);
      return Outcome::kSuccess;
    }
    std::string why;
    if (remote_trouble(&why)) {
      // Another node was stopped on purpose (Slurm signals every node, but not always at the same moment): stop
      // the same way here, so that the ranks save their agreed checkpoint and the stop is not reported as a failure.
      if (int sig = remote_signal(); sig != 0) return stop_on_signal(ranks, sig, why);
      say("stopping the ranks of this node: " + why);
      stop_all(ranks, false);
      print_report(ranks, nullptr, why);
      return Outcome::kFailed;
    }
  }
}

int Launcher::linger(int rc) {
  // Node 0 hosts the store: keep it up until the other nodes have stopped their
  // ranks and read why (bounded: a dead node never answers; a second SIGINT ends it).
  if (o_.nnodes == 1 || o_.node_rank != 0 || store_lost_) return rc;
  auto until = Clock::now() +
               std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.grace_period_s + 5.0));
  int seen = g_sigint;
  try {
    while (store_->add("stopped/" + std::to_string(attempt_), 0) < o_.nnodes - dead_nodes_ && Clock::now() < until &&
           g_sigint <= seen)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } catch (const CommError&) {
  }
  return rc;
}

int Launcher::run() {
  setup_store();
  rendezvous();
  unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0 && static_cast<unsigned>(o_.nproc_per_node) > cores)
    say("warning: --nproc-per-node " + std::to_string(o_.nproc_per_node) + " is more than the " +
        std::to_string(cores) + " cores present; ranks will share cores");
  int gpus = count_gpus();
  if (gpus > 0 && o_.nproc_per_node > gpus)
    say("warning: --nproc-per-node " + std::to_string(o_.nproc_per_node) + " is more than the " + std::to_string(gpus) +
        " GPUs present; ranks will share GPUs");
  for (attempt_ = 0;; ++attempt_) {
    if (attempt_ > 0) barrier("start/" + std::to_string(attempt_));
    Outcome out = run_attempt();
    if (out != Outcome::kSuccess && o_.nnodes > 1 && !store_lost_) {
      try {
        store_->add("stopped/" + std::to_string(attempt_), 1);
      } catch (const CommError&) {
        store_lost_ = true;
      }
    }
    // After a stop on a signal: 0 when every rank saved and exited 0 by itself (what Slurm counts as COMPLETED and
    // what a requeue or a retry loop expects of a preempted run), 128+signal when a rank was killed or failed.
    if (out == Outcome::kSignal) return linger(clean_stop_ ? 0 : 128 + stop_signal_);
    if (out == Outcome::kSuccess) {
      if (o_.nnodes == 1) return 0;
      // Wait for the other nodes: they may still fail this attempt (then restart with them).
      std::string a = std::to_string(attempt_);
      store_->add("done/" + a, 1);
      std::string why;
      bool failed_elsewhere = false;
      while (store_->add("done/" + a, 0) < o_.nnodes) {
        if (remote_trouble(&why)) {
          failed_elsewhere = true;
          break;
        }
        std::this_thread::sleep_for(std::chrono::duration<double>(o_.monitor_interval_s));
      }
      if (!failed_elsewhere) {
        store_->add("exit/" + a, 1);
        if (o_.node_rank == 0) {  // keep the store up until every node has seen the end
          auto until = Clock::now() + std::chrono::seconds(10);
          while (store_->add("exit/" + a, 0) < o_.nnodes && Clock::now() < until)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return 0;
      }
      if (remote_signal() != 0) {  // another node was stopped on purpose as this one finished: not a failure here
        say("ranks of this node finished; " + why);
        try {
          store_->add("stopped/" + a, 1);
        } catch (const CommError&) {
          store_lost_ = true;
        }
        return linger(0);
      }
      say("ranks of this node finished, but the attempt failed elsewhere: " + why);
    }
    if (store_lost_) return 1;
    if (o_.nnodes > 1) {
      bool abort = true;
      try {
        abort = store_->check({"abort"});
      } catch (const CommError&) {
      }
      if (abort) {
        say("not restarting: the job was stopped on purpose or lost a node");
        return linger(1);
      }
    }
    if (attempt_ >= o_.max_restarts) {
      if (o_.max_restarts > 0) say("no restarts left (--max-restarts " + std::to_string(o_.max_restarts) + ")");
      return linger(1);
    }
    say("restarting every rank (restart " + std::to_string(attempt_ + 1) + " of " + std::to_string(o_.max_restarts) +
        ")");
  }
}

}  // namespace

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "SIG?" + std::to_string(sig);
}

std::string random_secret() {
  std::ifstream in("/dev/urandom", std::ios::binary);
  unsigned char b[32] = {0};
  in.read(reinterpret_cast<char*>(b), sizeof(b));
  LOOM_CHECK_T(IoError, in.good(), "trainlaunch: cannot read /dev/urandom for the job secret");
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += hex[c >> 4];
    s += hex[c & 15];
  }
  return s;
}

int run_launcher(const LaunchOptions& o) {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() returns at once
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  Launcher l(o);
  return l.run();
}

}  // namespace loom::launcher
