// How much communication the data-parallel wrappers hide: step time (forward, backward, AdamW) of a GPT-2-shaped model
// on 2 ranks with no wrapper (compute only: each rank alone, no collectives), DistributedDataParallel and FullyShard,
// each with overlap on and off (off: every collective waited on right after it is issued), on gloo and mpi:
//   comm time       = T_off - T_compute
//   hidden fraction = (T_off - T_on) / (T_off - T_compute)
// and, for DDP, the time the training thread spent blocked on all-reduces per step with overlap on and off (the
// schedule's overlap, whatever the cores: 1 - blocked_on / blocked_off).
// The overlap-on steps of DDP and FSDP are also run traced (tensor/trace_events.h): the fraction hidden then comes from
// the timeline of the very steps timed (comm = union of the collectives' execution on the worker thread, blocked =
// the training thread's waits, hidden = 1 - blocked / comm), and the tracing overhead is the traced step time over the
// untraced one (median over rounds of the per-round ratio). On CPU backends the collectives' copies and
// reductions run on cores too; when every core computes, hiding them in the step time needs spare cores.
//
// Started plainly it starts its own ranks (gloo: forked with torchrun-style variables; mpi: under mpirun). Started
// under mpirun or trainlaunch it is one rank (backend from LOOM_BENCH_BACKEND, default gloo).
//   bench_parallel [LAYERS WIDTH HEADS SEQ BATCH_PER_RANK VOCAB STEPS]   (default 6 512 8 64 4 4096 7)
//   LOOM_BENCH_BACKENDS=gloo,mpi: the backends a plain start runs; MASTER_PORT: first port (default: one the kernel
//   reports free) LOOM_BENCH_BUCKET_MIB: DDP's bucket_cap_bytes in MiB (default 25, PyTorch's) LOOM_BENCH_GRAD_VIEW=0:
//   DDP without gradient_as_bucket_view (default: with it)
// Rank 0 prints one line per figure, then README's table row for its backend in markdown (a line starting with '|';
// a plain start prints the table's header first): `bench_parallel | grep '^|'` is the table. The row's hidden fractions
// and "less" are computed from the figures in the row itself, as printed (so a reader recomputes them exactly); the
// lines above also give the hidden fraction as the median over rounds of each round's own difference, which load
// from other processes moves less. A step time is the median over STEPS timed rounds (after 2 warm-up rounds) of the
// max over ranks; in each round every variant runs one step, back to back, and the differences (comm, saved) are taken
// within a round before the median, so load that comes and goes hits the variants alike.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "collectives/init.h"
#include "collectives/mpi/mpi_backend.h"
#include "collectives/tcp_store.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "parallel/ddp.h"
#include "parallel/fully_shard.h"
#include "tensor/trace_json.h"

extern char** environ;

using namespace loom;

namespace {

constexpr int kWorld = 2;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double group_max(collectives::ProcessGroup& g, double v) {
  Tensor t = ops::full({1}, v, DType::f64);
  g.allreduce(t, {collectives::ReduceOp::kMax})->wait();
  return t.item<double>();
}

// One configuration under test: its own model (a wrapper claims its model), optimizer and wrapper.
struct Variant {
  std::string wrapper;  // "none", "ddp", "fsdp"
  bool overlap = true;
  bool traced = false;  // recorded with the timeline on (overlap on only)
  std::shared_ptr<nn::GPT2> model;
  std::unique_ptr<parallel::DistributedDataParallel> ddp;
  std::unique_ptr<parallel::FullyShard> fsdp;
  std::unique_ptr<nn::AdamW> opt;
  std::vector<double> times;                  // seconds per timed step, max over ranks
  std::vector<double> waits;                  // DDP: seconds blocked on all-reduces per timed step, max over ranks
  std::vector<double> hidden, comm, blocked;  // traced: per timed step, mean over ranks, from the timeline
  size_t events = 0;                          // traced: events rank 0 recorded in its last step
};

// What one module span costs on this thread (ns), timed on 200k spans built as Module::call builds them (a name from
// a string, one argument), with tracing on (recorded) and off (one relaxed load). A load-independent estimate of
// tracing overhead: events per step x the cost, against the step time.
struct SpanCost {
  double on_ns = 0, off_ns = 0;
};
SpanCost span_cost() {
  const std::string name = "transformer.h.0.attn";
  const int n = 200000;
  auto time = [&](bool on) {
    trace::clear();
    trace::set_enabled(on);
    const int64_t t0 = trace::now_ns();
    for (int i = 0; i < n; ++i) {
      trace::Span s(trace::enabled() ? "forward " + name : std::string(), trace::kForward);
      s.arg(trace::num("i", i));
    }
    const int64_t t1 = trace::now_ns();
    trace::set_enabled(false);
    trace::clear();
    return static_cast<double>(t1 - t0) / n;
  };
  SpanCost c;
  c.on_ns = time(true);
  c.off_ns = time(false);
  return c;
}

// README's table: one row per backend.
void print_table_header() {
  std::printf(
      "| backend | compute only | DDP on / off | DDP hidden | FSDP on / off | FSDP hidden | DDP blocked on "
      "all-reduces, on / off | DDP / FSDP hidden, from the trace | trace overhead DDP / FSDP |\n"
      "|---|---|---|---|---|---|---|---|---|\n");
}

// Rounds seconds to whole ms (step times) or tenths of a ms (blocked times), as the row prints them.
double ms_rounded(double s, double step) { return std::round(s * 1e3 / step) * step; }

// hidden = (T_off - T_on) / (T_off - T_compute) from the rounded figures the row shows; "n/a" when T_off <= T_compute
// (no communication time to hide).
std::string hidden_cell(double compute_ms, double on_ms, double off_ms) {
  if (off_ms - compute_ms <= 0) return "n/a (off <= compute)";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 * (off_ms - on_ms) / (off_ms - compute_ms));
  return buf;
}

// A variant by wrapper, overlap and tracing.
const Variant* find(const std::vector<Variant>& variants, const std::string& w, bool overlap, bool traced = false) {
  for (const auto& v : variants)
    if (v.wrapper == w && v.overlap == overlap && v.traced == traced) return &v;
  return nullptr;
}

// Median over rounds of traced / untraced - 1 (the rounds ran both back to back).
double overhead(const Variant& traced, const Variant& plain) {
  std::vector<double> r;
  for (size_t i = 0; i < traced.times.size() && i < plain.times.size(); ++i)
    r.push_back(traced.times[i] / plain.times[i] - 1);
  return median(r);
}

void print_table_row(const char* backend, double t_compute, const std::vector<Variant>& variants, double wait_on,
                     double wait_off) {
  auto med_ms = [&](const char* w, bool overlap) { return ms_rounded(median(find(variants, w, overlap)->times), 1); };
  const double c = ms_rounded(t_compute, 1);
  const double d_on = med_ms("ddp", true), d_off = med_ms("ddp", false);
  const double f_on = med_ms("fsdp", true), f_off = med_ms("fsdp", false);
  const double b_on = ms_rounded(wait_on, 0.1), b_off = ms_rounded(wait_off, 0.1);
  char less[48] = "";
  if (b_off > 0) std::snprintf(less, sizeof less, " (%.0f%% less)", 100.0 * (b_off - b_on) / b_off);
  const Variant* dt = find(variants, "ddp", true, true);
  const Variant* ft = find(variants, "fsdp", true, true);
  std::printf(
      "| %s | %.0f ms | %.0f / %.0f ms | %s | %.0f / %.0f ms | %s | %.1f / %.1f ms%s | %.0f%% / %.0f%% | %+.1f%% / "
      "%+.1f%% |\n",
      backend, c, d_on, d_off, hidden_cell(c, d_on, d_off).c_str(), f_on, f_off, hidden_cell(c, f_on, f_off).c_str(),
      b_on, b_off, less, 100 * median(dt->hidden), 100 * median(ft->hidden),
      100 * overhead(*dt, *find(variants, "ddp", true)), 100 * overhead(*ft, *find(variants, "fsdp", true)));
}

int run_rank(const std::string& backend, const std::vector<int64_t>& a) {
  const int64_t L = a[0], C = a[1], H = a[2], T = a[3], B = a[4], V = a[5], steps = std::max<int64_t>(a[6], 1);
  // One store for two groups: the group under test, and a gloo group for the bench's own barriers and timing
  // reductions, whose waits block (an mpi wait polls, and a rank polling while the other still computes would slow
  // that rank on a machine with as many cores as ranks).
  const collectives::RankInfo info = collectives::rank_info_from_env();
  collectives::TCPStoreOptions so;
  so.is_server = info.rank == 0;
  auto store = std::make_shared<collectives::TCPStore>(info.master_addr, info.master_port, so);
  collectives::InitOptions init;
  init.store = store;
  auto group = collectives::init_process_group(backend, init);
  auto sync = std::make_shared<collectives::ProcessGroup>(store, info.rank, info.world_size, "gloo",
                                                          collectives::default_process_group_options(), "bench_sync");
  const int rank = group->rank(), W = group->size();

  nn::GPT2Config cfg;
  cfg.n_layer = L;
  cfg.n_embd = C;
  cfg.n_head = H;
  cfg.n_positions = T;
  cfg.vocab_size = V;
  Generator data_gen(1000 + rank);  // each rank its own batch, as in data-parallel training
  Tensor idx = ops::randint(0, V, {B, T}, data_gen), targets = ops::randint(0, V, {B, T}, data_gen);

  std::vector<Variant> variants;
  for (const char* w : {"none", "ddp", "fsdp"})
    for (int mode : {0, 1, 2}) {  // overlap on traced, on, off
      const bool overlap = mode < 2;
      if (std::string(w) == "none" && mode != 1) continue;
      Variant v;
      v.wrapper = w;
      v.overlap = overlap;
      v.traced = mode == 0;
      Generator gen(0);
      v.model = std::make_shared<nn::GPT2>(cfg, gen);
      nn::set_trace_names(*v.model);  // every module's spans when traced; nothing when not
      const double lr = 1e-4, wd = 0.1;
      if (v.wrapper == "ddp") {
        parallel::DDPOptions o;
        o.overlap = overlap;
        if (const char* cap = std::getenv("LOOM_BENCH_BUCKET_MIB")) o.bucket_cap_bytes = std::atoll(cap) << 20;
        const char* view = std::getenv("LOOM_BENCH_GRAD_VIEW");
        o.gradient_as_bucket_view = !(view && std::string(view) == "0");  // no copy back: less unhidable work
        v.ddp = std::make_unique<parallel::DistributedDataParallel>(v.model, group, o);
      } else if (v.wrapper == "fsdp") {
        parallel::FullyShardOptions o;
        o.overlap = overlap;
        o.prefetch = overlap;  // without overlap a prefetch is waited on at once: no point issuing it early
        v.fsdp = std::make_unique<parallel::FullyShard>(v.model, group, o);
      }
      auto groups =
          v.fsdp ? v.fsdp->param_groups(lr, wd) : nn::weight_decay_groups(v.model->named_parameters(), lr, wd);
      v.opt = std::make_unique<nn::AdamW>(groups, nn::AdamWOptions{});
      variants.push_back(std::move(v));
    }

  if (rank == 0) {
    const double numel = static_cast<double>(variants[0].model->num_parameters());
    std::printf(
        "# bench_parallel backend=%s ranks=%d cores=%ld: GPT-2 %lld layers, width %lld, %lld heads, seq %lld, "
        "batch %lld per rank, vocab %lld, %.2fM parameters (%.1f MiB of f32 gradients), 1 thread per rank; "
        "median of %lld steps after 2 warm-up\n",
        backend.c_str(), W, sysconf(_SC_NPROCESSORS_ONLN), static_cast<long long>(L), static_cast<long long>(C),
        static_cast<long long>(H), static_cast<long long>(T), static_cast<long long>(B), static_cast<long long>(V),
        numel / 1e6, numel * 4 / (1024.0 * 1024.0), static_cast<long long>(steps));
    // The last bucket holds the embeddings (final only when backward ends): its all-reduce can never be hidden.
    std::printf("# ddp buckets (launch order, MiB):");
    for (const auto& b : find(variants, "ddp", true)->ddp->buckets())
      std::printf(" %.1f", static_cast<double>(b.bytes) / (1 << 20));
    std::printf("\n");
    std::fflush(stdout);
  }

  for (int64_t round = 0; round < steps + 2; ++round) {
    for (auto& v : variants) {
      sync->barrier()->wait();  // start together: a step then includes waiting for the slower rank
      if (v.traced) {
        trace::clear();
        trace::set_enabled(true);
      }
      const int64_t b_ns = trace::now_ns();
      auto t0 = std::chrono::steady_clock::now();
      v.opt->zero_grad();
      if (v.fsdp) v.fsdp->zero_grad();
      Tensor loss = v.model->loss(idx, targets);
      loss.backward();
      v.opt->step();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (v.traced) {
        trace::set_enabled(false);
        const std::vector<trace::Event> ev = trace::collect();
        v.events = ev.size();
        const trace::ExposedComm x = trace::exposed_comm(ev, b_ns, trace::now_ns());
        Tensor t = from_vector<double>({x.hidden_frac, x.comm_s, x.blocked_s}, {3});
        sync->allreduce(t, {collectives::ReduceOp::kAvg})->wait();
        const auto m = t.to_vector<double>();
        if (round >= 2) {
          v.hidden.push_back(m[0]);
          v.comm.push_back(m[1]);
          v.blocked.push_back(m[2]);
        }
      }
      if (v.ddp) {
        const double waited = group_max(*sync, static_cast<double>(v.ddp->last_comm_wait_ns()) * 1e-9);
        if (round >= 2) v.waits.push_back(waited);
      }
      const double worst = group_max(*sync, s);
      if (round >= 2) v.times.push_back(worst);
    }
  }

  // The DDP buckets' all-reduces alone, back to back (no compute): a cross-check of T_off - T_compute.
  double comm_alone = 0;
  {
    std::vector<Tensor> bufs;
    for (const auto& b : find(variants, "ddp", true)->ddp->buckets())
      bufs.push_back(ops::zeros({b.bytes / 4}, b.dtype));
    std::vector<double> t;
    for (int64_t r = 0; r < steps + 1; ++r) {
      sync->barrier()->wait();
      auto t0 = std::chrono::steady_clock::now();
      for (auto& buf : bufs) group->allreduce(buf, {collectives::ReduceOp::kAvg})->wait();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double worst = group_max(*sync, s);
      if (r >= 1) t.push_back(worst);
    }
    comm_alone = median(t);
  }

  const SpanCost cost = span_cost();
  const double span_ns = cost.on_ns;
  if (rank == 0) {
    const char* be = backend.c_str();
    const double t_compute = median(variants[0].times);
    std::printf("%-5s %-5s %-13s step_ms=%8.1f\n", be, "none", "compute_only", t_compute * 1e3);
    for (const char* w : {"ddp", "fsdp"}) {
      const Variant* on = find(variants, w, true);
      const Variant* off = find(variants, w, false);
      const Variant* traced = find(variants, w, true, true);
      const double t_on = median(on->times), t_off = median(off->times);
      // Differences taken within each round (the variants ran back to back), then the median: load from other
      // processes that comes and goes shifts a whole round rather than one variant.
      std::vector<double> comm_r, saved_r;
      for (size_t r = 0; r < off->times.size(); ++r) {
        comm_r.push_back(off->times[r] - variants[0].times[r]);
        saved_r.push_back(off->times[r] - on->times[r]);
      }
      const double comm = median(comm_r), saved = median(saved_r);
      std::printf("%-5s %-5s %-13s step_ms=%8.1f\n", be, w, "overlap_on", t_on * 1e3);
      std::printf("%-5s %-5s %-13s step_ms=%8.1f\n", be, w, "overlap_off", t_off * 1e3);
      std::printf("%-5s %-5s %-13s comm_ms=%8.1f (T_off - T_compute, median over rounds)\n", be, w, "comm", comm * 1e3);
      std::printf("%-5s %-5s %-13s saved_ms=%8.1f (T_off - T_on, median over rounds)\n", be, w, "overlap_saved",
                  saved * 1e3);
      std::printf(
          "%-5s %-5s %-13s fraction=%.2f (from the trace of the timed steps: comm %.1f ms, blocked %.1f ms per step; "
          "medians over rounds of the mean over ranks)\n",
          be, w, "hidden_trace", median(traced->hidden), median(traced->comm) * 1e3, median(traced->blocked) * 1e3);
      std::printf(
          "%-5s %-5s %-13s overhead=%+.1f%% (step traced %.1f ms vs untraced %.1f ms; median of per-round "
          "ratios)\n",
          be, w, "trace_overhead", 100 * overhead(*traced, *on), median(traced->times) * 1e3, median(on->times) * 1e3);
      const double cost_ms = static_cast<double>(traced->events) * span_ns * 1e-6;
      std::printf(
          "%-5s %-5s %-13s overhead=%.2f%% (%zu events per step x %.0f ns per event = %.2f ms of a %.1f ms step: the "
          "recording itself, whatever the load)\n",
          be, w, "trace_cost", 100 * cost_ms / (median(on->times) * 1e3), traced->events, span_ns, cost_ms,
          median(on->times) * 1e3);
      std::printf("%-5s %-5s %-13s off_ns=%.1f per span with tracing off (%.4f%% of the step for the same %zu spans)\n",
                  be, w, "trace_off", cost.off_ns,
                  100 * static_cast<double>(traced->events) * cost.off_ns * 1e-6 / (median(on->times) * 1e3),
                  traced->events);
      if (comm > 0) {
        std::printf(
            "%-5s %-5s %-13s fraction=%.2f (saved_ms / comm_ms: medians of per-round differences; the table row "
            "divides the medians of the step times instead)\n",
            be, w, "hidden_rounds", saved / comm);
      } else {
        std::printf("%-5s %-5s %-13s fraction=n/a (T_off <= T_compute: no measurable communication time)\n", be, w,
                    "hidden_rounds");
      }
    }
    double wait_on = 0, wait_off = 0;
    wait_on = median(find(variants, "ddp", true)->waits);
    wait_off = median(find(variants, "ddp", false)->waits);
    std::printf("%-5s %-5s %-13s wait_ms=%8.1f (training thread blocked on all-reduces per step)\n", be, "ddp",
                "blocked_on", wait_on * 1e3);
    std::printf("%-5s %-5s %-13s wait_ms=%8.1f (training thread blocked on all-reduces per step)\n", be, "ddp",
                "blocked_off", wait_off * 1e3);
    if (wait_off > 0)
      std::printf("%-5s %-5s %-13s fraction=%.2f (1 - blocked_on / blocked_off)\n", be, "ddp", "blocked_hidden",
                  1.0 - wait_on / wait_off);
    std::printf("%-5s %-5s %-13s comm_ms=%8.1f (the DDP buckets' all-reduces alone, no compute)\n", be, "ddp",
                "allreduce", comm_alone * 1e3);
    if (!std::getenv("LOOM_BENCH_NO_TABLE_HEADER")) print_table_header();
    print_table_row(be, t_compute, variants, wait_on, wait_off);
    std::fflush(stdout);
  }
  sync->barrier()->wait();
  return 0;
}

// ------------------------------------------------------------------ launcher (a plain start)

std::string self_path() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "bench_parallel";
  return std::string(buf.data(), static_cast<size_t>(n));
}

// Spawns argv with the current environment plus `extra` (NAME=value); returns the pid or -1.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra) {
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    bool overridden = false;
    for (const auto& x : extra) overridden = overridden || x.substr(0, x.find('=')) == name;
    if (!overridden) env_s.push_back(kv);
  }
  env_s.insert(env_s.end(), extra.begin(), extra.end());
  std::vector<char*> envp, args;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), envp.data()) != 0) return -1;
  return pid;
}

// Waits for every pid; true when all exited with status 0.
bool wait_all(const std::vector<pid_t>& pids) {
  bool ok = true;
  for (pid_t p : pids) {
    int status = 0;
    if (p < 0 || waitpid(p, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
  }
  return ok;
}

// A port the kernel reports free on 127.0.0.1 (bound to port 0, then released), or -1. Each backend's run then binds
// it at once; set MASTER_PORT to choose one.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

int launch(const std::vector<std::string>& args) {
  const char* port_env = std::getenv("MASTER_PORT");
  int port = port_env && *port_env ? std::atoi(port_env) : free_port();
  if (port <= 0) {
    std::fprintf(stderr, "bench_parallel: no free TCP port on 127.0.0.1; set MASTER_PORT\n");
    return 1;
  }
  const char* which = std::getenv("LOOM_BENCH_BACKENDS");
  std::stringstream list(which && *which ? which : "gloo,mpi");
  std::vector<std::string> common = {"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MASTER_ADDR=127.0.0.1",
                                     "LOOM_STORE_SECRET=bench-parallel"};
  int rc = 0;
  print_table_header();  // each backend's rank 0 prints its row
  std::fflush(stdout);
  common.push_back("LOOM_BENCH_NO_TABLE_HEADER=1");
  for (std::string backend; std::getline(list, backend, ',');) {
    std::vector<std::string> env = common;
    env.push_back("MASTER_PORT=" + std::to_string(port));
    port = free_port();  // the next backend's run: a fresh one
    env.push_back("LOOM_BENCH_BACKEND=" + backend);
    std::vector<pid_t> pids;
    if (backend == "mpi") {
      env.insert(env.end(), {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
      // --bind-to none: the ranks float like the forked gloo ranks (Open MPI pins each to one core by default,
      // with its collectives' worker thread on the same core).
      std::vector<std::string> argv = {"mpirun", "--oversubscribe",      "--bind-to", "none",
                                       "-np",    std::to_string(kWorld), self_path()};
      argv.insert(argv.end(), args.begin(), args.end());
      pids.push_back(spawn(argv, env));
      if (pids.back() < 0) std::fprintf(stderr, "bench_parallel: cannot start mpirun (is Open MPI installed?)\n");
    } else {
      for (int r = 0; r < kWorld; ++r) {
        std::vector<std::string> e = env;
        e.insert(e.end(), {"RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(kWorld),
                           "LOCAL_RANK=" + std::to_string(r), "LOCAL_WORLD_SIZE=" + std::to_string(kWorld)});
        std::vector<std::string> argv = {self_path()};
        argv.insert(argv.end(), args.begin(), args.end());
        pids.push_back(spawn(argv, e));
      }
    }
    if (!wait_all(pids)) {
      std::fprintf(stderr, "bench_parallel: the %s ranks failed\n", backend.c_str());
      rc = 1;
    }
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<int64_t> a = {6, 512, 8, 64, 4, 4096, 7};
  for (size_t i = 0; i < args.size() && i < a.size(); ++i) a[i] = std::atoll(args[i].c_str());
  const bool is_rank = std::getenv("RANK") || collectives::launched_by_mpirun();
  if (!is_rank) return launch(args);
  const char* backend = std::getenv("LOOM_BENCH_BACKEND");
  try {
    return run_rank(backend && *backend ? backend : "gloo", a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_parallel: %s\n", e.what());
    return 1;
  }
}
