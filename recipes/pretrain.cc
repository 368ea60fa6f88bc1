// pretrain: the transformer pretraining recipe. One YAML config (recipes/config.h) describes the model (GPT-2 or
// Llama), the data, the optimisation, the parallel layout, checkpoints and logging; the same binary runs as one
// process, or as every rank under trainlaunch, mpirun or srun.
//
// Usage: pretrain --config FILE [--set section.key=value ...] [--validate [--world-size N] | --eval]
//
// Layout: the world is split into a (dp, fsdp, tp) mesh, tp fastest (one node's GPUs). tp > 1 converts the model to
// Megatron-style tensor parallelism; fsdp > 1 wraps it in FullyShard over the fsdp group, otherwise dp > 1 wraps it
// in DistributedDataParallel. precision: bf16 is FullyShard's mixed precision (bf16 compute, f32 master shards): with
// fsdp 1 the model is wrapped in FullyShard over the data-parallel group instead of DDP (over one rank there is no
// communication at all), so bf16 works with any layout. dp > 1 together with fsdp > 1 is hybrid sharding (HSDP):
// FullyShard over the fsdp group with the dp group as its replicate_group, every dp x fsdp rank reading its own data.
//
// Exit codes: 0 trained (or stopped cleanly by SIGTERM/SIGINT after saving, or nothing left to train), 1 a runtime
// failure (I/O, communication), 2 a config or usage error (reported before any process group or model exists).
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/hf_import.h"
#include "collectives/init.h"
#include "collectives/store.h"
#include "nn/activation_checkpointing.h"
#include "nn/clip_grad.h"
#include "nn/freeze.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "nn/lr_scheduler.h"
#include "nn/optim.h"
#include "parallel/ddp.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "parallel/tensor_parallel.h"
#include "recipes/config.h"
#include "recipes/data.h"
#include "recipes/metrics.h"
#include "recipes/trace_window.h"
#include "tensor/storage.h"

using namespace loom;
using namespace loom::recipes;

namespace {

using Clock = std::chrono::steady_clock;

// Set by SIGTERM (Slurm preemption, trainlaunch forwarding) or SIGINT; read once per step and agreed across ranks.
volatile std::sig_atomic_t g_stop_signal = 0;

// A stop request may arrive several times: Slurm signals every process of a job step (so each rank gets SIGTERM
// from Slurm and again from trainlaunch), a process manager may signal a whole process group, scancel may be
// repeated. None of those may cost the checkpoint. Only a second SIGINT typed at this process's terminal (si_code
// SI_KERNEL: the tty driver, not kill()) stops at once without it; under trainlaunch a person's second Ctrl-C goes
// to the launcher, which kills the ranks itself.
void on_stop_signal(int sig, siginfo_t* info, void*) {
  if (g_stop_signal != 0) {
    if (sig == SIGINT && info != nullptr && info->si_code == SI_KERNEL) {
      std::signal(sig, SIG_DFL);  // a person at the terminal insists: stop now, without the checkpoint
      std::raise(sig);
    }
    return;
  }
  g_stop_signal = sig;
}

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_sigaction = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_SIGINFO;  // collectives and file I/O in flight carry on; the loop checks the flag
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Args {
  std::string config;
  std::vector<std::string> sets;
  bool validate = false;
  bool eval_only = false;  // --eval: evaluate the weights the run would start from, then exit
  std::optional<int> world_size;
};

const char* kUsage =
    "usage: pretrain --config FILE [--set section.key=value ...] [--validate [--world-size N] | --eval]\n"
    "\n"
    "Pretrains a GPT-2 or Llama model as the YAML config says (see configs/*.yaml). Run it alone (one rank) or\n"
    "under trainlaunch, mpirun or srun (every rank runs it; the layout comes from the config's parallelism section).\n"
    "  --config FILE    the recipe config (YAML)\n"
    "  --set K=V        override a key, e.g. --set training.steps=100 (repeatable)\n"
    "  --validate       check the config, print it resolved with the parameter count and the estimated memory\n"
    "                   per rank, and exit without training\n"
    "  --world-size N   with --validate: the number of ranks to check the layout for (default: from the\n"
    "                   launcher's environment, else 1)\n"
    "  --eval           evaluate the weights the run would start from (the checkpoint it would resume from, else\n"
    "                   the initial weights) on logging.eval_sequences held-out sequences, print the loss and exit;\n"
    "                   any layout gives the same loss\n"
    "Exit status: 0 done (also after a clean stop on SIGTERM/SIGINT), 1 runtime error, 2 config or usage error.\n";

/// Parses argv; prints the problem and exits 2 on a usage error.
Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "pretrain: %s needs a value (try --help)\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (s == "--config") {
      a.config = value("--config");
    } else if (s.rfind("--config=", 0) == 0) {
      a.config = s.substr(9);
    } else if (s == "--set") {
      a.sets.push_back(value("--set"));
    } else if (s.rfind("--set=", 0) == 0) {
      a.sets.push_back(s.substr(6));
    } else if (s == "--validate") {
      a.validate = true;
    } else if (s == "--eval") {
      a.eval_only = true;
    } else if (s == "--world-size" || s == "--world_size") {
      std::string v = value("--world-size");
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || n < 1 || n > 1000000) {
        std::fprintf(stderr, "pretrain: --world-size expects a positive integer, got '%s'\n", v.c_str());
        std::exit(2);
      }
      a.world_size = static_cast<int>(n);
    } else if (s == "--help" || s == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      std::fprintf(stderr, "pretrain: unknown option '%s' (try --help)\n", s.c_str());
      std::exit(2);
    }
  }
  if (a.config.empty()) {
    std::fprintf(stderr, "pretrain: --config FILE is required (try --help)\n");
    std::exit(2);
  }
  if (a.eval_only && a.validate) {
    std::fprintf(stderr,
                 "pretrain: --eval and --validate exclude each other: --validate trains nothing and loads "
                 "nothing, --eval loads the weights and evaluates them\n");
    std::exit(2);
  }
  if (a.world_size && !a.validate) {
    std::fprintf(stderr,
                 "pretrain: --world-size is only for --validate; a training run takes its world size from "
                 "the launcher (trainlaunch, mpirun, srun)\n");
    std::exit(2);
  }
  return a;
}

/// True when a launcher (trainlaunch/torchrun, mpirun, srun) set this process's rank variables.
bool launched() {
  for (const char* v : {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"})
    if (const char* e = std::getenv(v); e && *e) return true;
  return false;
}

/// Builds the config's model on the CPU from gen (the same draws on every rank given the same seed).
std::shared_ptr<nn::CausalLM> build_model(const ModelConfig& m, Generator& gen) {
  if (m.family == "gpt2") {
    nn::GPT2Config c;
    c.vocab_size = m.vocab_size;
    c.n_positions = m.seq_len;
    c.n_embd = m.n_embd;
    c.n_layer = m.n_layer;
    c.n_head = m.n_head;
    c.dropout = m.dropout;
    c.tie_word_embeddings = m.tie_embeddings;
    if (m.norm_eps > 0) c.layer_norm_epsilon = m.norm_eps;
    return std::make_shared<nn::GPT2>(c, gen);
  }
  nn::LlamaConfig c;
  c.vocab_size = m.vocab_size;
  c.max_seq_len = m.seq_len;
  c.n_embd = m.n_embd;
  c.n_layer = m.n_layer;
  c.n_head = m.n_head;
  c.n_kv_head = m.n_kv_head > 0 ? m.n_kv_head : m.n_head;
  if (m.intermediate_size > 0) c.intermediate_size = m.intermediate_size;
  c.dropout = m.dropout;
  c.rope_theta = m.rope_theta;
  c.tie_word_embeddings = m.tie_embeddings;
  if (m.norm_eps > 0) c.rms_norm_eps = m.norm_eps;
  return std::make_shared<nn::Llama>(c, gen);
}

/// Which sections of cfg differ from the config a checkpoint was saved with ("training, logging"), or "some keys"
/// when the saved text does not parse (a config from another version of the recipe).
std::string changed_sections(const std::string& saved_yaml, const RecipeConfig& cfg) {
  RecipeConfig old;
  try {
    old = parse_config(saved_yaml, "checkpoint config");
  } catch (const Error&) {
    return "some keys";
  }
  old.parallelism.dp = cfg.parallelism.dp;  // the layout may change on resume; only other keys are news
  std::string out;
  auto add = [&](bool same, const char* name) {
    if (!same) out += (out.empty() ? "" : ", ") + std::string(name);
  };
  add(old.model == cfg.model, "model");
  add(old.data == cfg.data, "data");
  add(old.training == cfg.training, "training");
  add(old.parallelism == cfg.parallelism, "parallelism");
  add(old.checkpoint == cfg.checkpoint, "checkpoint");
  add(old.logging == cfg.logging, "logging");
  return out.empty() ? "resolved details only" : out;
}

/// --validate: the resolved config, parameter count and memory estimate.
int run_validate(const RecipeConfig& cfg, int world) {
  std::printf("# resolved config (%s, world size %d)\n%s", cfg.source_file.c_str(), world, cfg.to_yaml().c_str());
  const int64_t n = parameter_count(cfg.model);
  MemoryEstimate mem = estimate_memory_per_rank(cfg, world);
  const auto& p = cfg.parallelism;
  std::printf("\nlayout: dp=%d fsdp=%d tp=%d on %d ranks; grad accumulation %lld micro-steps of %lld sequences\n", p.dp,
              p.fsdp, p.tp, world,
              static_cast<long long>(cfg.training.grad_accum_steps(cfg.model.seq_len, p.dp_world())),
              static_cast<long long>(cfg.training.micro_batch));
  std::printf("parameters: %lld (%s)\n", static_cast<long long>(n), format_count(static_cast<double>(n)).c_str());
  std::printf("estimated memory per rank: %s at the step's peak (params %s, grads %s, optimizer %s, activations %s, ",
              format_bytes(mem.total).c_str(), format_bytes(mem.params).c_str(), format_bytes(mem.grads).c_str(),
              format_bytes(mem.optimizer).c_str(), format_bytes(mem.activations).c_str());
  std::printf("buffers %s, transient %s; activation checkpointing: %s)\n", format_bytes(mem.buffers).c_str(),
              format_bytes(mem.transient).c_str(), cfg.training.activation_checkpointing.c_str());
  if (mem.host_offloaded > 0)
    std::printf("host memory per rank for offloaded shards: %s\n", format_bytes(mem.host_offloaded).c_str());
  // The same in bytes, for scripts (tests/recipes/memory_estimate.sh compares it with a run's peak_mem_bytes_max).
  std::printf(
      "estimate_bytes total=%lld params=%lld grads=%lld optimizer=%lld activations=%lld buffers=%lld transient=%lld "
      "host_offloaded=%lld\n",
      static_cast<long long>(mem.total), static_cast<long long>(mem.params), static_cast<long long>(mem.grads),
      static_cast<long long>(mem.optimizer), static_cast<long long>(mem.activations),
      static_cast<long long>(mem.buffers), static_cast<long long>(mem.transient),
      static_cast<long long>(mem.host_offloaded));
  const TrafficEstimate traffic = estimate_traffic_per_rank(cfg, world);
  if (traffic.shard > 0)
    std::printf("traffic per rank per step over the shard group (fsdp, %d ranks): %s (all-gathers, reduce-scatters)\n",
                traffic.shard_ranks, format_bytes(traffic.shard).c_str());
  if (traffic.replica > 0)
    std::printf("traffic per rank per step over the replica group (dp, %d replicas): %s (gradient-shard all-reduce)\n",
                traffic.replica_ranks, format_bytes(traffic.replica).c_str());
  if (traffic.dp > 0)
    std::printf("traffic per rank per step over the data-parallel group (dp, %d ranks): %s (gradient all-reduce)\n",
                traffic.dp_ranks, format_bytes(traffic.dp).c_str());
  std::printf("config OK\n");
  return 0;
}

/// Everything one training run holds, built in order by run_training.
struct Run {
  RecipeConfig cfg;
  std::shared_ptr<collectives::ProcessGroup> world;
  std::unique_ptr<parallel::DeviceMesh> mesh;
  std::shared_ptr<collectives::ProcessGroup> data_group, tp_group;  // data_group: ranks that see different data
  std::shared_ptr<nn::CausalLM> model;
  std::unique_ptr<parallel::DistributedDataParallel> ddp;
  std::unique_ptr<parallel::FullyShard> fsdp;
  std::unique_ptr<nn::Optimizer> opt;
  std::unique_ptr<nn::LRScheduler> sched;
  bool rank0 = true;
  Device device = kCPU;  // where the model and batches live: cuda:LOCAL_RANK under nccl, else cpu

  /// The evaluation set's size: logging.eval_sequences, or every whole sequence of a held-out split that holds fewer.
  int64_t eval_count(const TokenSource& val) const {
    const int64_t available = (val.size() - 1) / cfg.model.seq_len;
    return std::min(cfg.logging.eval_sequences, available);
  }

  /// Mean loss per target token over the first eval_count() sequences of the held-out split: the same tokens every
  /// time and on every layout, so evaluations compare across runs and after a reshard. The sequences are split into
  /// contiguous parts over the data-parallel ranks (tp ranks of one replica read the same part) and read in
  /// micro-batches of training.micro_batch; each rank adds up its token losses and token counts, and one all-reduce
  /// over the data-parallel group sums them, so uneven parts weigh by their tokens (not a mean of the ranks' means).
  /// FullyShard all-gathers parameters in every forward: under it every rank runs as many forwards as the largest
  /// part needs, a rank with fewer sequences running dummy ones whose loss is not counted.
  double evaluate(const std::shared_ptr<TokenSource>& val) {
    const int64_t T = cfg.model.seq_len, mb = cfg.training.micro_batch, n = eval_count(*val);
    const int D = data_group->size();
    const EvalPart part = eval_part(n, data_group->rank(), D);
    const int64_t largest = (n + D - 1) / D;
    const int64_t forwards = ((fsdp ? largest : part.size()) + mb - 1) / mb;
    constexpr int64_t kIgnoreIndex = -100;  // nn::CausalLM::loss skips these targets (none in pretraining data)
    double loss_sum = 0, tokens = 0;        // over this rank's part
    model->eval();
    {
      autograd::NoGradGuard ng;
      for (int64_t i = 0; i < forwards; ++i) {
        const int64_t b = part.begin + i * mb, e = std::min(b + mb, part.end);
        const bool dummy = b >= e;  // only under FullyShard: a forward every rank must run
        Batch batch = read_sequences(*val, T, dummy ? 0 : b, dummy ? 1 : e);
        const double loss = model->loss(ops::to(batch.idx, device), ops::to(batch.targets, device)).item();
        if (dummy) continue;
        const auto y = batch.targets.to_vector<int64_t>();
        const auto counted = std::count_if(y.begin(), y.end(), [](int64_t t) { return t != kIgnoreIndex; });
        if (counted == 0) continue;  // the mean over no tokens is NaN; such a batch adds nothing
        loss_sum += loss * static_cast<double>(counted);
        tokens += static_cast<double>(counted);
      }
    }
    model->train();
    Tensor t = from_vector<double>({loss_sum, tokens}, {2});
    data_group->allreduce(t, {collectives::ReduceOp::kSum})->wait();
    const auto v = t.to_vector<double>();
    return v[1] > 0 ? v[0] / v[1] : std::numeric_limits<double>::quiet_NaN();
  }

  /// Gradient norm before clipping (clipping when training.grad_clip > 0), over every rank holding a part.
  double clip() {
    const double max_norm = cfg.training.grad_clip > 0 ? cfg.training.grad_clip : 1e300;
    if (fsdp) return fsdp->clip_grad_norm_(max_norm, 2.0, tp_group);
    if (tp_group) return parallel::tp_clip_grad_norm_(model->parameters(), max_norm, *tp_group);
    return nn::clip_grad_norm_(model->parameters(), max_norm);
  }
};

/// Trains as cfg says; with eval_only, loads the starting weights (checkpoint or init), evaluates them and returns.
int run_training(const RecipeConfig& cfg_in, bool eval_only) {
  Run r;
  r.cfg = cfg_in;
  const RecipeConfig& cfg = r.cfg;
  const auto& P = cfg.parallelism;
  install_signal_handlers();

  // Ranks sharing a node share its cores: without an explicit OMP_NUM_THREADS, give each local rank its share so
  // two ranks on two cores do not fight over four threads.
  if (!std::getenv("OMP_NUM_THREADS")) {
    int local = 1;
    for (const char* v : {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"})
      if (const char* e = std::getenv(v); e && std::atoi(e) > 0) {
        local = std::atoi(e);
        break;
      }
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    omp_set_num_threads(std::max(1, cores / local));
  }

  // The data first: a missing or malformed file is reported before any rank waits on another.
  auto train_src = open_tokens(cfg.data, "train", cfg.model.vocab_size);
  std::shared_ptr<TokenSource> val_src;
  if (cfg.logging.eval_interval > 0 || eval_only) val_src = open_tokens(cfg.data, "val", cfg.model.vocab_size);
  if (val_src && val_src->size() < cfg.model.seq_len + 1)
    throw ConfigError(
        "the held-out split (" + val_src->describe() + ") holds " + std::to_string(val_src->size()) +
        " tokens, fewer than one sequence of model.seq_len + 1 = " + std::to_string(cfg.model.seq_len + 1) +
        " to evaluate; use more held-out data (data.val_path, data.val_fraction), a shorter "
        "model.seq_len, or logging.eval_interval: 0 for no evaluation");

  if (launched()) {
    r.world = collectives::init_process_group(P.backend);
  } else {
    // One process without a launcher: a one-rank group, so checkpoints and the per-step agreement run unchanged.
    r.world = std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0, 1, "gloo");
  }
  r.rank0 = r.world->rank() == 0;
  std::vector<std::pair<std::string, int>> dims;
  const bool hsdp = P.dp > 1 && P.fsdp > 1;
  if (P.dp > 1 || P.fsdp == 1) dims.push_back({"dp", P.dp});
  if (P.fsdp > 1) dims.push_back({"fsdp", P.fsdp});
  if (P.tp > 1) dims.push_back({"tp", P.tp});
  r.mesh = std::make_unique<parallel::DeviceMesh>(r.world, dims);
  if (!hsdp) {
    r.data_group = r.mesh->group(P.fsdp > 1 ? "fsdp" : "dp");
  } else if (P.tp == 1) {
    r.data_group = r.world;
  } else {
    // The dp x fsdp ranks of one tp coordinate (tp varies fastest): new_group is collective over the world.
    for (int t = 0; t < P.tp; ++t) {
      std::vector<int> ranks;
      for (int k = t; k < r.world->size(); k += P.tp) ranks.push_back(k);
      if (auto g = r.world->new_group(ranks)) r.data_group = g;
    }
  }
  if (P.tp > 1) r.tp_group = r.mesh->group("tp");
  const int data_rank = r.data_group->rank(), data_size = r.data_group->size();

  if (r.rank0) {
    std::printf("pretrain: %s, %d rank%s, %s, backend %s\n", cfg.source_file.c_str(), r.world->size(),
                r.world->size() == 1 ? "" : "s", r.mesh->str().c_str(), launched() ? P.backend.c_str() : "none");
    std::printf("%s", cfg.to_yaml().c_str());
    std::fflush(stdout);
  }

  // The model: the same initial weights on every rank (one seed), then split and wrapped.
  Generator init_gen(cfg.training.seed);
  r.model = build_model(cfg.model, init_gen);
  const int64_t n_params = r.model->num_parameters();
  const double flops_per_token = r.model->flops_per_token(cfg.model.seq_len);
  // Initial weights from Hugging Face safetensors (loaded below, once the model is split and wrapped), unless a
  // checkpoint will be loaded over them anyway.
  const std::string& init_from = cfg.model.init_from;
  const bool will_resume =
      !cfg.checkpoint.dir.empty() && cfg.checkpoint.resume != "never" &&
      (cfg.checkpoint.resume != "auto" || !checkpoint::latest_checkpoint(cfg.checkpoint.dir).empty());
  if (!init_from.empty() && will_resume && r.rank0)
    std::printf("model.init_from (%s) not used: the run resumes from a checkpoint\n", init_from.c_str());
  if (!cfg.model.freeze.empty()) {
    auto origin = cfg.origins.find("model.freeze");
    nn::FreezeStats fs;
    try {
      fs = nn::freeze_parameters(*r.model, cfg.model.freeze,
                                 (origin != cfg.origins.end() ? origin->second + ": " : "") + "model.freeze");
    } catch (const InvalidArgument& e) {
      throw ConfigError(e.what());  // a config mistake: exit 2 like the others
    }
    if (r.rank0)
      std::printf("model.freeze: %lld trainable parameters (%lld elements), %lld frozen (%lld elements)\n",
                  static_cast<long long>(fs.trainable_params), static_cast<long long>(fs.trainable_numel),
                  static_cast<long long>(fs.frozen_params), static_cast<long long>(fs.frozen_numel));
  }
  // Under nccl each rank computes on its local GPU (cuda:LOCAL_RANK; cuda:0 for one process without a launcher).
  if (P.backend == "nccl") {
    r.device = Device(DeviceType::kCUDA, launched() ? collectives::rank_info_from_env().local_rank : 0);
    r.model->to(r.device);
    if (r.rank0) std::printf("device: %s per rank (local rank)\n", r.device.str().c_str());
  }
  if (r.tp_group) parallel::tensor_parallelize(*r.model, r.tp_group);
  const auto ac = nn::ActivationCheckpointing::parse(cfg.training.activation_checkpointing);
  nn::apply_activation_checkpointing(*r.model, ac);
  if (r.rank0 && ac.mode != nn::CheckpointMode::kNone) std::printf("activation checkpointing: %s\n", ac.str().c_str());
  const bool bf16 = cfg.training.precision == "bf16";
  if (P.fsdp > 1 || bf16) {
    parallel::FullyShardOptions o;
    o.reshard_after_forward = P.reshard_after_forward;
    o.cpu_offload = P.cpu_offload;
    if (bf16) o.mixed_precision.param_dtype = DType::bf16;
    if (hsdp) o.replicate_group = r.mesh->group("dp");
    r.fsdp = std::make_unique<parallel::FullyShard>(r.model, hsdp ? r.mesh->group("fsdp") : r.data_group, o);
  } else if (data_size > 1) {
    parallel::DDPOptions o;
    o.bucket_cap_bytes = std::max<int64_t>(1, static_cast<int64_t>(P.bucket_mb * (1 << 20)));
    o.first_bucket_cap_bytes = std::min(o.first_bucket_cap_bytes, o.bucket_cap_bytes);
    r.ddp = std::make_unique<parallel::DistributedDataParallel>(r.model, r.data_group, o);
  }
  // Dropout draws: each data-parallel rank its own stream; tp ranks of one replica the same (their replicated
  // activations must get the same masks).
  default_generator().manual_seed(cfg.training.seed + 1 + 1000003ull * static_cast<uint64_t>(data_rank));

  const auto& T = cfg.training;
  auto groups = r.fsdp ? r.fsdp->param_groups(T.lr, T.weight_decay)
                       : nn::weight_decay_groups(r.model->named_parameters(), T.lr, T.weight_decay);
  if (T.optimizer == "sgd") {
    nn::SGDOptions o;
    o.lr = T.lr;
    o.momentum = T.beta1;  // SGD's momentum is training.beta1
    o.weight_decay = T.weight_decay;
    r.opt = std::make_unique<nn::SGD>(groups, o);
  } else {
    nn::AdamWOptions o;
    o.lr = T.lr;
    o.beta1 = T.beta1;
    o.beta2 = T.beta2;
    o.eps = T.eps;
    o.weight_decay = T.weight_decay;
    r.opt = std::make_unique<nn::AdamW>(groups, o);
  }
  if (T.schedule == "constant") {
    r.sched = std::make_unique<nn::ConstantLR>(*r.opt, T.lr);
  } else {
    r.sched = std::make_unique<nn::WarmupCosineLR>(*r.opt, T.lr, T.min_lr, T.warmup_steps, T.steps);
  }

  // Data: this rank's part of every global batch; the held-out split for eval.
  DataLoader loader(train_src, cfg.model.seq_len, T.micro_batch, data_rank, data_size);
  const int64_t accum = T.grad_accum_steps(cfg.model.seq_len, P.dp_world());
  const int64_t tokens_per_step = T.global_batch_tokens;

  // Checkpoints and resume.
  std::unique_ptr<checkpoint::Checkpointer> ck;
  checkpoint::Target target;
  if (r.fsdp) {
    target.fsdp = r.fsdp.get();
  } else {
    target.module = r.model.get();
  }
  target.optimizer = r.opt.get();
  target.scheduler = r.sched.get();
  target.rngs["dropout"] = &default_generator();
  target.coords.dp_rank = data_rank;
  target.coords.dp_size = data_size;
  if (hsdp) {
    target.coords.replica_rank = r.mesh->coordinate("dp");
    target.coords.replica_size = P.dp;
  }
  if (r.tp_group) {
    target.coords.tp_rank = r.tp_group->rank();
    target.coords.tp_size = r.tp_group->size();
  }
  if (!init_from.empty() && !will_resume) {
    // Each rank reads from the file only what it holds: its FSDP shards, its TP split, everything under DDP.
    const auto st = checkpoint::load_hf_weights(init_from, target, r.world);
    if (r.rank0)
      std::printf("initial weights: %s (%s; rank 0 read %lld bytes of tensor data)\n", init_from.c_str(),
                  st.config_checked ? "config.json matches the model" : "no config.json beside it: shapes checked",
                  static_cast<long long>(st.bytes_read));
  }
  int64_t start_step = 0;
  bool resumed = false;
  std::string resumed_from;  // the checkpoint directory, when resumed
  const std::string& ck_dir = cfg.checkpoint.dir;
  if (!ck_dir.empty()) {
    checkpoint::CheckpointOptions co;
    co.keep_last = cfg.checkpoint.keep_last;
    co.async = cfg.checkpoint.async;
    ck = std::make_unique<checkpoint::Checkpointer>(ck_dir, r.world, co);
    const std::string& resume = cfg.checkpoint.resume;
    checkpoint::LoadOptions lo;
    lo.fall_back_to_previous = cfg.checkpoint.fall_back;
    std::string from;
    if (resume == "auto") {
      from = checkpoint::latest_checkpoint(ck_dir);
    } else if (resume != "never") {
      from = lo.dir = resume.find('/') == std::string::npos ? ck_dir + "/" + resume : resume;
    }
    if (!from.empty()) {
      checkpoint::TrainState st = ck->load(target, lo);
      start_step = st.step;
      // A model-only checkpoint (loomckpt import) has no data position: the data starts at its beginning.
      if (!st.data_position.empty()) loader.load_state(checkpoint::data_position_for(st, data_size, data_rank));
      resumed = true;
      resumed_from = from;
      if (r.rank0) {
        std::printf("resumed from step %lld (%s; saved on %d data-parallel rank%s)\n",
                    static_cast<long long>(start_step), from.c_str(), st.saved_dp_size,
                    st.saved_dp_size == 1 ? "" : "s");
        if (!st.config.empty() && st.config != cfg.to_yaml())
          std::printf(
              "note: the config differs from the checkpoint's (kept in its metadata.json) in %s; training "
              "goes on with the config above\n",
              changed_sections(st.config, cfg).c_str());
      }
    }
  }
  if (val_src && r.rank0) {
    const int64_t n = r.eval_count(*val_src);
    std::printf("eval: the first %lld held-out sequences of %lld tokens (%s), over %d data-parallel rank%s\n",
                static_cast<long long>(n), static_cast<long long>(cfg.model.seq_len), val_src->describe().c_str(),
                data_size, data_size == 1 ? "" : "s");
    if (n < cfg.logging.eval_sequences)
      std::printf(
          "note: logging.eval_sequences is %lld but the held-out split holds only %lld sequences of %lld + 1 "
          "tokens; evaluating all of them\n",
          static_cast<long long>(cfg.logging.eval_sequences), static_cast<long long>(n),
          static_cast<long long>(cfg.model.seq_len));
    std::fflush(stdout);
  }
  if (eval_only) {
    const double eval_loss = r.evaluate(val_src);
    if (r.rank0) {
      std::printf("eval loss %.9g at step %lld (%s)\n", eval_loss, static_cast<long long>(start_step),
                  resumed ? resumed_from.c_str() : (init_from.empty() ? "initial weights" : init_from.c_str()));
      std::fflush(stdout);
    }
    return 0;
  }
  if (start_step >= T.steps) {
    if (r.rank0)
      std::printf(
          "all %lld steps are done (the checkpoint in %s is at step %lld); nothing to train. To train "
          "longer: --set training.steps=N with N > %lld\n",
          static_cast<long long>(T.steps), ck_dir.c_str(), static_cast<long long>(start_step),
          static_cast<long long>(start_step));
    return 0;
  }

  // What rank 0 shows and records.
  std::unique_ptr<MetricsFile> metrics;
  std::string metrics_path = cfg.logging.metrics_file;
  if (metrics_path.empty() && !ck_dir.empty()) metrics_path = ck_dir + "/metrics.jsonl";
  if (r.rank0 && !metrics_path.empty())
    metrics = std::make_unique<MetricsFile>(metrics_path, resumed ? std::optional<int64_t>(start_step) : std::nullopt);
  // MFU's denominator: the sum of every rank's measured sgemm rate (this build computes on the CPU; a GPU's peak
  // would come from gpu_peak_flops' table).
  double peak = measure_cpu_peak_flops();
  {
    Tensor t = ops::full({1}, peak, DType::f64);
    r.world->allreduce(t, {collectives::ReduceOp::kSum})->wait();
    peak = t.item();
  }
  const bool tty = r.rank0 && cfg.logging.progress && ::isatty(STDOUT_FILENO);
  if (r.rank0) {
    std::printf("model: %s, %lld parameters (%s), %.3g FLOPs/token; data: %s\n", cfg.model.family.c_str(),
                static_cast<long long>(n_params), format_count(static_cast<double>(n_params)).c_str(), flops_per_token,
                train_src->describe().c_str());
    if (cfg.data.source == "synthetic")
      std::printf("synthetic corpus: entropy floor %.3f nats/token, uniform guess %.3f\n",
                  synthetic_entropy_floor(cfg.data.seed, cfg.model.vocab_size),
                  std::log(static_cast<double>(cfg.model.vocab_size)));
    std::printf(
        "steps %lld..%lld, %lld tokens/step (%lld micro-step%s of %lld x %lld per data-parallel rank), "
        "precision %s, peak %s FLOP/s over %d rank%s (measured sgemm)\n",
        static_cast<long long>(start_step + 1), static_cast<long long>(T.steps),
        static_cast<long long>(tokens_per_step), static_cast<long long>(accum), accum == 1 ? "" : "s",
        static_cast<long long>(T.micro_batch), static_cast<long long>(cfg.model.seq_len), T.precision.c_str(),
        format_count(peak).c_str(), r.world->size(), r.world->size() == 1 ? "" : "s");
    if (bf16 && P.fsdp == 1)
      std::printf(
          "precision bf16: FullyShard mixed precision over the %d data-parallel rank%s (in place of DDP; "
          "bf16 compute, f32 master weights)\n",
          data_size, data_size == 1 ? "" : "s");
    if (metrics) std::printf("metrics: %s\n", metrics->path().c_str());
    if (ck)
      std::printf("checkpoints: %s (every %lld steps, keep %d)\n", ck_dir.c_str(),
                  static_cast<long long>(cfg.checkpoint.interval), cfg.checkpoint.keep_last);
    std::fflush(stdout);
  }

  const int W = r.world->size();
  int64_t last_saved = resumed ? start_step : -1;
  auto save = [&](int64_t step_done) {
    if (!ck || last_saved == step_done) return;
    checkpoint::TrainState st;
    st.step = step_done;
    st.data_position = loader.state();
    st.config = cfg.to_yaml();
    if (tty) std::printf("\r\033[K");  // the checkpoint library logs the save on its own line
    trace::Span span("checkpoint save", trace::kStep);
    ck->save(target, st);
    last_saved = step_done;
  };

  // logging.trace_steps: the timeline of those steps under <run dir>/trace (the checkpoint directory, else the
  // metrics file's).
  const std::string run_dir = !ck_dir.empty()         ? ck_dir
                              : !metrics_path.empty() ? std::filesystem::path(metrics_path).parent_path().string()
                                                      : std::string(".");
  TraceWindow tracer(*r.world, cfg.logging.trace_steps[0], cfg.logging.trace_steps[1],
                     (run_dir.empty() ? std::string(".") : run_dir) + "/trace", r.model.get());
  const auto t_run = Clock::now();
  int stop_signal = 0;
  int64_t step_done = start_step;
  for (int64_t step = start_step; step < T.steps; ++step) {
    tracer.begin_step(step + 1);
    const auto t0 = Clock::now();
    reset_peak_memory_stats(r.device);  // the step's peak: what the step needs, not what an earlier one did
    if (r.fsdp) {
      r.fsdp->zero_grad();
    } else {
      r.opt->zero_grad();
    }
    double loss_sum = 0;
    for (int64_t m = 0; m < accum; ++m) {
      Batch b = [&] {
        trace::Span span("data", trace::kStep);
        return loader.next();
      }();
      auto fwd_bwd = [&] {
        Tensor loss = r.model->loss(ops::to(b.idx, r.device), ops::to(b.targets, r.device));
        loss_sum += loss.item();
        // The mean over the micro-steps: each backward adds 1/accum of its gradient.
        (accum > 1 ? loss / static_cast<double>(accum) : loss).backward();
      };
      if (r.ddp && m + 1 < accum) {
        auto guard = r.ddp->no_sync();  // only the last micro-step all-reduces the accumulated gradients
        fwd_bwd();
      } else {
        fwd_bwd();
      }
    }
    const double gnorm = r.clip();
    const double lr = r.sched->last_lr();
    {
      trace::Span span("optimizer", trace::kStep);
      r.opt->step();
      r.sched->step();
    }
    // This rank's own time for the step. Under DDP the time blocked on the gradient all-reduce is taken out: a fast
    // rank waits there for a slow one, so with it every rank would show the slowest rank's time. (FSDP and TP ranks
    // wait for each other inside every layer, which no counter here separates out: their times converge.)
    double local_time = seconds_since(t0);
    if (r.ddp) local_time -= 1e-9 * static_cast<double>(r.ddp->last_comm_wait_ns());
    const std::optional<trace::ExposedComm> comm = tracer.end_step(step + 1);
    if (r.rank0 && !tracer.merged_path().empty() && step + 1 == cfg.logging.trace_steps[1]) {
      const auto& rep = tracer.report();
      std::printf("%strace of steps %lld..%lld: %s (one track per rank; straggler r%d, late by %.0f ms in all)\n",
                  tty ? "\r\033[K" : "", static_cast<long long>(cfg.logging.trace_steps[0]),
                  static_cast<long long>(cfg.logging.trace_steps[1]), tracer.merged_path().c_str(), rep.straggler,
                  rep.straggler >= 0 ? 1e3 * rep.late_s[static_cast<size_t>(rep.straggler)] : 0.0);
    }

    // This rank's tensor memory on its compute device: in use now, and the most in use at any point of the step.
    const MemoryStats mem = memory_stats(r.device);

    // One small all-gather per step: every rank's step time (so a straggler shows), its stop request, its loss and
    // its peak memory (bytes below 2^53: exact in a double).
    constexpr int kPerRank = 4;
    Tensor mine = from_vector<double>(
        {local_time, static_cast<double>(g_stop_signal), loss_sum / accum, static_cast<double>(mem.peak_bytes)},
        {kPerRank});
    Tensor all = ops::zeros({kPerRank * W}, DType::f64);
    r.world->all_gather(all, mine)->wait();
    auto v = all.to_vector<double>();
    StepMetrics sm;
    step_done = step + 1;
    sm.step = step_done;
    double loss = 0;
    for (int i = 0; i < W; ++i) {
      sm.rank_step_time_s.push_back(v[kPerRank * i]);
      if (v[kPerRank * i + 1] != 0 && stop_signal == 0) stop_signal = static_cast<int>(v[kPerRank * i + 1]);
      loss += v[kPerRank * i + 2] / W;
      sm.rank_peak_mem_bytes.push_back(static_cast<int64_t>(v[kPerRank * i + 3]));
    }
    sm.loss = loss;
    sm.comm = comm;
    sm.lr = lr;
    sm.grad_norm = gnorm;
    const double wall = seconds_since(t0);
    sm.step_time_s = wall;
    sm.tokens_per_s = static_cast<double>(tokens_per_step) / wall;
    sm.mfu = peak > 0 ? flops_per_token * sm.tokens_per_s / peak : 0;
    sm.mem_bytes = mem.allocated_bytes;
    sm.peak_mem_bytes = mem.peak_bytes;
    if (val_src && (step_done % cfg.logging.eval_interval == 0 || step_done == T.steps))
      sm.eval_loss = r.evaluate(val_src);
    const double eta =
        seconds_since(t_run) / static_cast<double>(step_done - start_step) * static_cast<double>(T.steps - step_done);
    if (r.rank0) {
      if (metrics) metrics->write(metrics_json(sm));
      const bool log_line = step_done % cfg.logging.interval == 0 || step_done == start_step + 1 ||
                            step_done == T.steps || sm.eval_loss || stop_signal != 0;
      if (log_line) std::printf("%s%s\n", tty ? "\r\033[K" : "", console_line(sm, T.steps, eta).c_str());
      if (tty) std::printf("\r\033[K%s", progress_bar(step_done, T.steps, sm.loss, eta).c_str());
      std::fflush(stdout);
    }
    if (!std::isfinite(sm.loss)) {
      if (r.rank0)
        std::fprintf(stderr,
                     "pretrain: the loss is %f at step %lld; stopping without a checkpoint (lower "
                     "training.lr, set training.grad_clip, or check the data)\n",
                     sm.loss, static_cast<long long>(step_done));
      return 1;
    }
    if (stop_signal != 0) break;
    if (cfg.checkpoint.interval > 0 && step_done % cfg.checkpoint.interval == 0) save(step_done);
  }
  if (tty) std::printf("\n");
  tracer.finish();  // a run that stopped inside the trace window still writes it
  // The final checkpoint, at the end or at the step every rank agreed to stop at.
  save(step_done);
  if (ck) ck->wait();
  if (r.rank0) {
    if (stop_signal != 0) {
      std::printf("stopped by %s after step %lld of %lld; %s\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM",
                  static_cast<long long>(step_done), static_cast<long long>(T.steps),
                  ck ? ("the same command resumes from " + checkpoint::latest_checkpoint(ck_dir)).c_str()
                     : "no checkpoint.dir, so nothing was saved");
    } else {
      std::printf("done: %lld steps in %s\n", static_cast<long long>(step_done - start_step),
                  format_duration(seconds_since(t_run)).c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse_args(argc, argv);
  // The world size from the launcher's environment, read before any group or tensor exists so a bad layout is
  // reported at once.
  int world = 1, rank = 0;
  try {
    if (launched() && !args.world_size) {  // --validate --world-size N needs no launcher (e.g. in a batch script)
      collectives::RankInfo info = collectives::rank_info_from_env();
      world = info.world_size;
      rank = info.rank;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "pretrain: %s\n", e.what());
    return 2;
  }
  if (args.world_size) world = *args.world_size;
  RecipeConfig cfg;
  try {
    cfg = resolve_layout(load_config(args.config, args.sets), world);
    (void)cfg.training.grad_accum_steps(cfg.model.seq_len, cfg.parallelism.dp_world());
  } catch (const Error& e) {
    // Every rank reports it: a launcher's failure report shows the first rank to exit, whichever it is.
    if (world > 1 && !args.validate) {
      std::fprintf(stderr, "pretrain: rank %d: %s\n", rank, e.what());
    } else {
      std::fprintf(stderr, "pretrain: %s\n", e.what());
    }
    return 2;
  }
  try {
    if (args.validate) return rank == 0 ? run_validate(cfg, world) : 0;
    return run_training(cfg, args.eval_only);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "pretrain: rank %d: %s\n", rank, e.what());
    return 2;
  } catch (const Error& e) {
    std::fprintf(stderr, "pretrain: rank %d: %s\n", rank, e.what());
    return 1;
  }
}
