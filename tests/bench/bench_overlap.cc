// When do DDP and FullyShard issue and wait, apart from what the machine's cores do? A GPT-2-shaped "sleep model":
// every layer holds the real parameter tensors of a GPT-2 block (so DDP's buckets and FSDP's units have their real
// sizes and the real gradients are communicated), but its forward and backward sleep a fixed time instead of
// computing. Nothing competes with the collectives for the cores, so the communication a wrapper leaves exposed is
// only a matter of when it issues and waits (its schedule).
//
// Per step, with overlap on (the wrapper's normal schedule) and off (every collective waited on at once), and the
// unwrapped model (compute only):
//   compute   = the sleeps (known) + the optimizer step, measured as the unwrapped model's step time
//   comm      = the time the group's collectives ran on the communication thread (their union, from the trace)
//   exposed   = T_on - T_compute (the step got longer by this much: communication nothing hid)
//   hidden    = 1 - exposed / comm                          (hidden_step)
//   hidden    = 1 - blocked / comm from the step's trace      (hidden_trace: the figure; tensor/trace_json.h's
//               exposed_comm over the timeline recorded during the very step that is timed)
// Each a median over rounds of per-round figures (in each round the variants run one step each, back to back).
//
// One rank per process, started by trainlaunch / mpirun / srun (tests/bench/overlap_netns.sh runs it across two
// network-namespace nodes joined by a rate-limited link). Arguments (all optional):
//   bench_overlap [LAYERS WIDTH VOCAB SEQ FWD_MS STEPS]   (default 6 512 4096 64 16 6)
// A block's forward sleeps FWD_MS, its backward 2 x FWD_MS; the embeddings and the head sleep FWD_MS / 4 each way.
// LOOM_BENCH_BACKEND: gloo (default) or mpi. LOOM_BENCH_BUCKET_MIB: DDP's bucket cap (default 25).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "autograd/autograd.h"
#include "collectives/init.h"
#include "collectives/tcp_store.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "parallel/ddp.h"
#include "parallel/fully_shard.h"
#include "tensor/trace_events.h"
#include "tensor/trace_json.h"

using namespace loom;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

void sleep_ms(double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); }

// out = a fresh tensor of `shape` after sleeping fwd_ms; backward sleeps bwd_ms, passes a gradient of x's shape back
// (when x is defined) and gives every parameter a gradient of its own shape (filled with a small constant: the values
// do not matter, their bytes do).
Tensor sleep_layer(const char* name, const Tensor& x, const std::vector<Tensor>& params, const Shape& shape,
                   double fwd_ms, double bwd_ms) {
  sleep_ms(fwd_ms);
  Tensor out = ops::zeros(shape);
  std::vector<Tensor> inputs;
  if (x.defined()) inputs.push_back(x);
  inputs.insert(inputs.end(), params.begin(), params.end());
  std::vector<Shape> in_shapes;
  for (const auto& t : inputs) in_shapes.push_back(t.sizes());
  autograd::record(name, inputs, {out}, [in_shapes, bwd_ms](const std::vector<Tensor>&) {
    sleep_ms(bwd_ms);
    std::vector<Tensor> g;
    for (const auto& s : in_shapes) g.push_back(ops::full(s, 1e-4));
    return g;
  });
  return out;
}

struct Timing {
  double block_fwd_ms = 16, block_bwd_ms = 32, edge_fwd_ms = 4, edge_bwd_ms = 4;
};

// The parameters of a GPT-2 block (Hugging Face's shapes), in registration order.
class SleepBlock : public nn::Module {
 public:
  SleepBlock(int64_t C, Timing t) : Module("SleepBlock"), t_(t) {
    const std::vector<std::pair<std::string, Shape>> shapes = {{"ln_1_weight", {C}},
                                                               {"ln_1_bias", {C}},
                                                               {"c_attn_weight", {C, 3 * C}},
                                                               {"c_attn_bias", {3 * C}},
                                                               {"attn_proj_weight", {C, C}},
                                                               {"attn_proj_bias", {C}},
                                                               {"ln_2_weight", {C}},
                                                               {"ln_2_bias", {C}},
                                                               {"c_fc_weight", {C, 4 * C}},
                                                               {"c_fc_bias", {4 * C}},
                                                               {"mlp_proj_weight", {4 * C, C}},
                                                               {"mlp_proj_bias", {C}}};
    for (const auto& [n, s] : shapes) params_.push_back(register_parameter(n, ops::full(s, 0.01)));
  }
  Tensor operator()(const Tensor& x) {
    return call([&] { return sleep_layer("sleep_block", x, params_, x.sizes(), t_.block_fwd_ms, t_.block_bwd_ms); });
  }

 private:
  Timing t_;
  std::vector<Tensor> params_;
};

// Tied embeddings (wte is used by the lookup at the start and the head at the end, so its gradient is final only
// when backward ends: the classic last bucket), positions, blocks, final norm.
class SleepGPT : public nn::Module {
 public:
  SleepGPT(int64_t L, int64_t C, int64_t V, int64_t T, Timing t) : Module("SleepGPT"), t_(t), C_(C), T_(T) {
    wte_ = register_parameter("wte", ops::full({V, C}, 0.01));
    wpe_ = register_parameter("wpe", ops::full({T, C}, 0.01));
    auto list = register_module("h", std::make_shared<nn::ModuleList>());
    for (int64_t i = 0; i < L; ++i) blocks_.push_back(list->push_back(std::make_shared<SleepBlock>(C, t)));

    lnf_w_ = register_parameter("ln_f_weight", ops::full({C}, 1.0));
    lnf_b_ = register_parameter("ln_f_bias", ops::full({C}, 0.0));
  }
  // The (scalar) loss of a batch of B sequences.
  Tensor loss(int64_t B) {
    return call([&] {
      Tensor x = sleep_layer("sleep_embed", Tensor(), {wte_, wpe_}, {B, T_, C_}, t_.edge_fwd_ms, t_.edge_bwd_ms);
      for (auto& b : blocks_) x = (*b)(x);
      return sleep_layer("sleep_head", x, {lnf_w_, lnf_b_, wte_}, {}, t_.edge_fwd_ms, t_.edge_bwd_ms);
    });
  }
  std::vector<std::shared_ptr<nn::Module>> units() const { return {blocks_.begin(), blocks_.end()}; }

 private:
  Timing t_;
  int64_t C_, T_;
  Tensor wte_, wpe_, lnf_w_, lnf_b_;
  std::vector<std::shared_ptr<SleepBlock>> blocks_;
};

double group_max(collectives::ProcessGroup& g, double v) {
  Tensor t = ops::full({1}, v, DType::f64);
  g.allreduce(t, {collectives::ReduceOp::kMax})->wait();
  return t.item<double>();
}

// Milliseconds covered by the union of the [start, end) intervals of the trace entries that started at or after
// since_ns (the time the communication thread was busy with this step's collectives).
double comm_busy_ms(const std::vector<collectives::TraceEntry>& trace, int64_t since_ns) {
  std::vector<std::pair<int64_t, int64_t>> iv;
  for (const auto& e : trace)
    if (e.start_ns >= since_ns && e.end_ns > e.start_ns) iv.emplace_back(e.start_ns, e.end_ns);
  std::sort(iv.begin(), iv.end());
  int64_t busy = 0, cur_lo = 0, cur_hi = -1;
  for (auto [lo, hi] : iv) {
    if (lo > cur_hi) {
      if (cur_hi > cur_lo) busy += cur_hi - cur_lo;
      cur_lo = lo;
      cur_hi = hi;
    } else {
      cur_hi = std::max(cur_hi, hi);
    }
  }
  if (cur_hi > cur_lo) busy += cur_hi - cur_lo;
  return static_cast<double>(busy) * 1e-6;
}

struct Variant {
  std::string wrapper;  // none, ddp, fsdp
  bool overlap = true;
  std::shared_ptr<SleepGPT> model;
  std::unique_ptr<parallel::DistributedDataParallel> ddp;
  std::unique_ptr<parallel::FullyShard> fsdp;
  std::unique_ptr<nn::AdamW> opt;
  std::vector<double> step_ms, comm_ms, blocked_ms;
  std::vector<double> trace_comm_ms, trace_blocked_ms, trace_hidden;  // from the timeline of the same step
};

int run(const std::vector<int64_t>& a) {
  const int64_t L = a[0], C = a[1], V = a[2], T = a[3], steps = std::max<int64_t>(a[5], 1), B = 1;
  Timing t;
  t.block_fwd_ms = static_cast<double>(a[4]);
  t.block_bwd_ms = 2 * t.block_fwd_ms;
  t.edge_fwd_ms = t.edge_bwd_ms = t.block_fwd_ms / 4;
  const char* be = std::getenv("LOOM_BENCH_BACKEND");
  const std::string backend = be && *be ? be : "gloo";
  // One store for two groups: the group under test, and a gloo group for the bench's own barriers and reductions
  // (so they never appear in the measured trace, and their waits block instead of polling).
  const collectives::RankInfo info = collectives::rank_info_from_env();
  collectives::TCPStoreOptions so;
  so.is_server = info.rank == 0;
  auto store = std::make_shared<collectives::TCPStore>(info.master_addr, info.master_port, so);
  collectives::InitOptions init;
  init.store = store;
  auto group = collectives::init_process_group(backend, init);
  auto sync = std::make_shared<collectives::ProcessGroup>(store, info.rank, info.world_size, "gloo",
                                                          collectives::default_process_group_options(), "bench_sync");
  const int rank = group->rank();

  std::vector<Variant> variants;
  for (const char* w : {"none", "ddp", "ddp_optov", "fsdp", "fsdp_optov"})
    for (bool overlap : {true, false}) {
      const std::string ws = w;
      if ((ws == "none" || ws == "ddp_optov" || ws == "fsdp_optov") && !overlap) continue;
      Variant v;
      v.wrapper = w;
      v.overlap = overlap;
      v.model = std::make_shared<SleepGPT>(L, C, V, T, t);
      if (v.wrapper == "ddp" || v.wrapper == "ddp_optov") {
        parallel::DDPOptions o;
        o.overlap = overlap;
        o.wait_in_backward = v.wrapper == "ddp";
        o.gradient_as_bucket_view = true;
        if (const char* cap = std::getenv("LOOM_BENCH_BUCKET_MIB")) o.bucket_cap_bytes = std::atoll(cap) << 20;
        v.ddp = std::make_unique<parallel::DistributedDataParallel>(v.model, group, o);
      } else if (v.wrapper == "fsdp" || v.wrapper == "fsdp_optov") {
        parallel::FullyShardOptions o;
        o.overlap = overlap;
        o.wait_in_backward = v.wrapper == "fsdp";
        o.prefetch = overlap;
        v.fsdp = std::make_unique<parallel::FullyShard>(v.model, v.model->units(), group, o);
      }
      std::vector<Tensor> params = v.fsdp ? v.fsdp->parameters() : v.model->parameters();
      v.opt = std::make_unique<nn::AdamW>(params, nn::AdamWOptions{});
      variants.push_back(std::move(v));
    }
  if (rank == 0) {
    const double numel = static_cast<double>(variants[0].model->num_parameters());
    const double sleep_ms_step =
        static_cast<double>(L) * (t.block_fwd_ms + t.block_bwd_ms) + 2 * (t.edge_fwd_ms + t.edge_bwd_ms);
    std::printf(
        "# bench_overlap backend=%s ranks=%d: sleep model with GPT-2's parameter shapes, %lld layers, width %lld, "
        "vocab %lld, seq %lld: %.2fM parameters (%.1f MiB of f32 gradients); sleeps %.0f ms per step (block %.0f / "
        "%.0f ms forward / backward); AdamW; median of %lld steps after 2 warm-up\n",
        backend.c_str(), group->size(), static_cast<long long>(L), static_cast<long long>(C), static_cast<long long>(V),
        static_cast<long long>(T), numel / 1e6, numel * 4 / (1 << 20), sleep_ms_step, t.block_fwd_ms, t.block_bwd_ms,
        static_cast<long long>(steps));
    std::printf("# ddp buckets (launch order, MiB):");
    for (const auto& b : variants[1].ddp->buckets()) std::printf(" %.1f", static_cast<double>(b.bytes) / (1 << 20));
    std::printf("\n");
    std::fflush(stdout);
  }

  for (int64_t round = 0; round < steps + 2; ++round) {
    for (auto& v : variants) {
      sync->barrier()->wait();
      trace::clear();
      trace::set_enabled(true);  // the timeline of this very step: collectives on the comm thread, waits on this one
      const int64_t b_ns = trace::now_ns();
      const int64_t t0_ns = collectives::trace_now_ns();
      auto t0 = std::chrono::steady_clock::now();
      v.opt->zero_grad();
      if (v.fsdp) v.fsdp->zero_grad();
      Tensor loss = v.model->loss(B);
      loss.backward();
      // A plain opt->step() unless the variant leaves collectives pending after backward.
      if (v.ddp)
        v.ddp->step(*v.opt);
      else if (v.fsdp)
        v.fsdp->step(*v.opt);
      else
        v.opt->step();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      trace::set_enabled(false);
      const trace::ExposedComm x = trace::exposed_comm(trace::collect(), b_ns, trace::now_ns());
      trace::clear();
      const double comm = v.wrapper == "none" ? 0.0 : comm_busy_ms(group->trace(), t0_ns);
      const int64_t blocked_ns = v.ddp ? v.ddp->last_comm_wait_ns() : v.fsdp ? v.fsdp->last_comm_wait_ns() : 0;
      const double worst = group_max(*sync, ms), comm_worst = group_max(*sync, comm);
      const double blocked_worst = group_max(*sync, static_cast<double>(blocked_ns) * 1e-6);
      // The trace's figures of the rank that blocked longest (the one whose step the others waited for at the end).
      Tensor tr = from_vector<double>({x.blocked_s * 1e3, x.comm_s * 1e3}, {2});
      sync->allreduce(tr, {collectives::ReduceOp::kMax})->wait();
      const auto trv = tr.to_vector<double>();
      if (round >= 2) {
        v.trace_blocked_ms.push_back(trv[0]);
        v.trace_comm_ms.push_back(trv[1]);
        v.trace_hidden.push_back(trv[1] > 0 ? std::max(0.0, 1.0 - trv[0] / trv[1]) : 0.0);
        v.step_ms.push_back(worst);
        v.comm_ms.push_back(comm_worst);
        v.blocked_ms.push_back(blocked_worst);
      }
    }
  }

  if (rank == 0) {
    const auto& none = variants[0];
    const double t_none = median(none.step_ms);
    std::printf("%-5s %-5s %-12s step_ms=%7.1f\n", backend.c_str(), "none", "compute_only", t_none);
    for (const char* w : {"ddp", "ddp_optov", "fsdp", "fsdp_optov"}) {
      const Variant* on = nullptr;
      const Variant* off = nullptr;
      for (const auto& v : variants)
        if (v.wrapper == w) (v.overlap ? on : off) = &v;
      // An optimizer-overlap variant has no "off" of its own: its wrapper's one without overlap is the baseline.
      const std::string base = std::string(w).substr(0, std::string(w).find('_'));
      if (!off)
        for (const auto& v : variants)
          if (v.wrapper == base && !v.overlap) off = &v;
      std::vector<double> exposed, hidden, exposed_off, hidden_blocked;
      for (size_t r = 0; r < on->step_ms.size(); ++r) {
        const double e = std::max(0.0, on->step_ms[r] - none.step_ms[r]);
        exposed.push_back(e);
        exposed_off.push_back(off->step_ms[r] - none.step_ms[r]);
        if (on->comm_ms[r] > 0) {
          hidden.push_back(1.0 - std::min(1.0, e / on->comm_ms[r]));
          hidden_blocked.push_back(1.0 - std::min(1.0, on->blocked_ms[r] / on->comm_ms[r]));
        }
      }
      const double comm = median(on->comm_ms);
      std::printf("%-5s %-5s %-12s step_ms=%7.1f (overlap off: %.1f)\n", backend.c_str(), w, "step",
                  median(on->step_ms), median(off->step_ms));
      std::printf("%-5s %-5s %-12s comm_ms=%7.1f (communication thread busy; overlap off: %.1f)\n", backend.c_str(), w,
                  "comm", comm, median(off->comm_ms));
      std::printf("%-5s %-5s %-12s ratio=%.2f (communication / compute)\n", backend.c_str(), w, "comm_share",
                  t_none > 0 ? comm / t_none : 0.0);
      std::printf("%-5s %-5s %-12s exposed_ms=%7.1f (T_on - T_compute; overlap off: %.1f)\n", backend.c_str(), w,
                  "exposed", median(exposed), median(exposed_off));
      std::printf("%-5s %-5s %-12s blocked_ms=%7.1f (training thread waiting on collectives; overlap off: %.1f)\n",
                  backend.c_str(), w, "blocked", median(on->blocked_ms), median(off->blocked_ms));
      std::printf("%-5s %-5s %-12s fraction=%.2f (1 - exposed / comm)\n", backend.c_str(), w, "hidden_step",
                  median(hidden));
      std::printf("%-5s %-5s %-12s fraction=%.2f (1 - blocked / comm, the wrapper's wait counter)\n", backend.c_str(),
                  w, "hidden_wait", median(hidden_blocked));
      std::printf(
          "%-5s %-5s %-12s fraction=%.2f (from the trace: comm %.1f ms, blocked %.1f ms; max over ranks, median over "
          "steps)\n",
          backend.c_str(), w, "hidden_trace", median(on->trace_hidden), median(on->trace_comm_ms),
          median(on->trace_blocked_ms));
    }
    std::fflush(stdout);
  }
  sync->barrier()->wait();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> a = {6, 512, 4096, 64, 16, 6};
  for (int i = 1; i < argc && i - 1 < static_cast<int>(a.size()); ++i) a[i - 1] = std::atoll(argv[i]);
  try {
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_overlap: %s\n", e.what());
    return 1;
  }
}
