// The pretraining recipe's configuration: one YAML file (yaml-cpp) with the
// sections model, data, training, parallelism, checkpoint and logging, plus
// `--set section.key=value` overrides. Parsing is strict: an unknown key (with
// a "did you mean"), a wrong type, a value out of range, a missing required key
// or a layout that does not fit the world size is a ConfigError naming the
// file, line and key, raised before any rank allocates memory.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace loom::recipes {

struct ModelConfig {
  std::string family;             // required: "gpt2" or "llama"
  int64_t n_layer = 0;            // required, >= 1
  int64_t n_embd = 0;             // required, >= 1, divisible by n_head
  int64_t n_head = 0;             // required, >= 1
  int64_t n_kv_head = 0;          // 0: n_head (llama only may differ; must divide n_head)
  int64_t vocab_size = 0;         // required, >= 2
  int64_t seq_len = 0;            // required, >= 1 (GPT-2: n_positions; Llama: max_seq_len)
  int64_t intermediate_size = 0;  // llama MLP hidden; 0: the Llama rule (8/3 n_embd rounded up to a multiple of 256)
  double dropout = 0.0;           // [0, 1)
  bool tie_embeddings = true;     // when absent: true for gpt2, false for llama (Hugging Face's defaults)
  double rope_theta = 10000.0;    // llama (gpt2 accepts only the default: it has learned positions)
  double norm_eps = 0.0;          // LayerNorm / RMSNorm epsilon; 0: the family's (gpt2 1e-5, llama 1e-6)
  /// A safetensors file with Hugging Face names and layouts (e.g. GPT-2's model.safetensors, or `loomckpt export`'s
  /// output) whose weights start the run instead of the random init; ignored when the run resumes from a checkpoint.
  std::string init_from;
  /// Globs of parameter names to freeze (requires_grad false: no gradient, no optimizer state, no gradient traffic),
  /// e.g. ["transformer.wte.*", "transformer.h.[0-5].*"]; `*` also matches dots. Applied after init_from, before the
  /// model is split and wrapped; a glob that matches nothing, or globs that freeze everything, are errors.
  std::vector<std::string> freeze;
  // After parse_config, n_kv_head and intermediate_size hold their resolved values (never 0):
  // n_kv_head = n_head unless set; intermediate_size = 4 n_embd for gpt2, the Llama rule for llama.
  bool operator==(const ModelConfig&) const = default;
};

struct DataConfig {
  std::string source = "synthetic";  // "synthetic" | "text" | "llmc" | "nanogpt"
  std::string train_path;            // required unless synthetic (file or glob of shards)
  std::string val_path;              // empty: hold out the last val_fraction of the training tokens
  double val_fraction = 0.05;        // (0, 0.5]
  uint64_t seed = 1234;              // synthetic corpus and shuffling
  bool operator==(const DataConfig&) const = default;
};

struct TrainingConfig {
  int64_t global_batch_tokens = 0;  // required: tokens per optimizer step over all data-parallel ranks
  int64_t micro_batch = 0;          // required: sequences per rank per forward/backward
  int64_t steps = 0;                // required, >= 1
  std::string optimizer = "adamw";  // "adamw" | "sgd"
  double lr = 3e-4, min_lr = 3e-5, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";  // "cosine" | "constant"
  double grad_clip = 1.0;           // 0: no clipping
  std::string precision = "f32";    // "f32" | "bf16" (bf16 compute, f32 master weights)
  uint64_t seed = 1337;
  /// What each transformer block keeps for backward: "none" | "full" | "selective" | "selective:K"
  /// (nn::ActivationCheckpointing::parse).
  std::string activation_checkpointing = "none";
  /// Derived: global_batch_tokens / (seq_len * micro_batch * dp_world); must divide exactly.
  /// Throws ConfigError naming the numbers (and what would fit) when it does not.
  int64_t grad_accum_steps(int64_t seq_len, int64_t dp_world) const;
  bool operator==(const TrainingConfig&) const = default;
};

struct ParallelismConfig {
  int dp = 0;                    // 0: whatever is left of the world after fsdp and tp
  int fsdp = 1;                  // > 1: FullyShard over this many ranks
  int tp = 1;                    // tensor-parallel ranks (divide heads, kv heads, vocab, MLP hidden)
  std::string backend = "gloo";  // "gloo" | "mpi" | "nccl"
  double bucket_mb = 25.0;       // DDP bucket cap
  bool reshard_after_forward = true;
  bool cpu_offload = false;  // FSDP only (needs fsdp > 1)
  /// The data-parallel world: ranks that see different data (dp * fsdp; tp ranks share data).
  int64_t dp_world() const { return static_cast<int64_t>(dp) * fsdp; }
  bool operator==(const ParallelismConfig&) const = default;
};

struct CheckpointConfig {
  std::string dir;       // empty: no checkpoints
  int64_t interval = 0;  // steps between saves; 0: only at the end / on SIGTERM
  int keep_last = 3;     // >= 1
  bool async = false;
  std::string resume = "auto";  // "auto" (latest if any), "never", or a step_NNNNNNNN directory
  bool fall_back = false;       // on a damaged latest, resume from the previous complete one
  bool operator==(const CheckpointConfig&) const = default;
};

struct LoggingConfig {
  int64_t interval = 10;      // steps between console lines (metrics file gets every step)
  std::string metrics_file;   // JSONL; empty: <checkpoint.dir>/metrics.jsonl or none
  int64_t eval_interval = 0;  // 0: no eval
  /// Held-out sequences per evaluation, over all ranks: the first eval_sequences sequences of the val split, split
  /// across the data-parallel ranks, so the same weights give the same eval loss on every layout.
  int64_t eval_sequences = 64;
  bool progress = true;  // a progress bar when stdout is a terminal
  /// [from, to]: record the timeline of steps from..to (1-based, inclusive) on every rank and write it as Chrome trace
  /// JSON under <run dir>/trace/; [0, 0] (null): off.
  std::array<int64_t, 2> trace_steps{0, 0};
  /// Every sample_interval steps (0: never) rank 0 prints sample_tokens tokens sampled from the model (temperature 1,
  /// top-k 50, every rank runs the forwards) after sample_prompt, encoded and decoded with sample_tokenizer (a file
  /// data::Tokenizer reads). Without a tokenizer the prompt must be empty and token ids are printed; an empty prompt
  /// starts from the end-of-text token (without a tokenizer: GPT-2's 50256 when the vocabulary has it, else 0).
  int64_t sample_interval = 0;
  std::string sample_prompt;
  std::string sample_tokenizer;
  int64_t sample_tokens = 64;
  bool operator==(const LoggingConfig&) const = default;
};

struct RecipeConfig {
  ModelConfig model;
  DataConfig data;
  TrainingConfig training;
  ParallelismConfig parallelism;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  std::string source_file;  // the YAML file it came from
  /// Where each value came from, "section.key" -> "<file>:<line>" or "--set section.key=value"; a section's own
  /// line under "section". Errors found later (resolve_layout) cite it. Not part of the config's value.
  std::map<std::string, std::string> origins;
  /// The resolved config (every key, defaults filled in) as YAML text; stored in checkpoints and printed at start.
  /// parse_config(to_yaml()) gives back an equal config (operator==).
  std::string to_yaml() const;
  /// Equal when every section is equal (source_file and origins are not compared).
  bool operator==(const RecipeConfig& o) const;
};

/// Parses `path`, applies `overrides` ("section.key=value", YAML-typed values)
/// and validates every value. Throws ConfigError "<file>:<line>: <section.key>: <what is wrong>"
/// (for overrides: "--set section.key=value: ..."), with "did you mean 'x'?" for unknown keys.
RecipeConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
/// Parses YAML text (same rules; `name` is used as the file name in errors).
RecipeConfig parse_config(const std::string& yaml_text, const std::string& name,
                          const std::vector<std::string>& overrides = {});
/// Checks the layout against the world size: dp * fsdp * tp == world (dp 0 filled in), tp divides
/// n_head, n_kv_head, vocab_size and the MLP hidden size, and the global batch splits into whole
/// micro-batches. Returns the config with dp filled in. Throws ConfigError naming the keys.
RecipeConfig resolve_layout(RecipeConfig cfg, int world_size);

/// Llama's MLP hidden size for a width: 8/3 n_embd rounded up to a multiple of 256 (Hugging Face / Meta's rule).
int64_t llama_intermediate(int64_t n_embd);

/// The model's number of parameters, exactly as nn::GPT2 / nn::Llama count them (num_parameters();
/// tied embeddings once). Zero n_kv_head / intermediate_size take their resolved defaults.
int64_t parameter_count(const ModelConfig& model);

/// Estimated peak bytes of device memory per rank during a training step (tensor memory: what
/// tensor/storage.h counts and pretrain logs as peak_mem_bytes), split by what is live at the peak (see config.cc for
/// the model): params: this rank's f32 master parameters (its shard under FullyShard) plus the full parameters
/// FullyShard has gathered at that moment; grads: gradients live then (FullyShard: the f32 shard plus full-size ones
/// not yet reduce-scattered); optimizer: AdamW's two f32 moments (SGD: its momentum buffer); activations: the saved
/// activations and logits (training.activation_checkpointing decides what a block keeps); buffers: DDP's gradient
/// buckets and FullyShard's reduce-scatter inputs; transient: backward's temporaries at the peak (activation
/// gradients, the logits' gradient). total: their sum. Under cpu_offload the shards of params, grads and optimizer
/// state live in host memory: counted in host_offloaded, not in total.
struct MemoryEstimate {
  int64_t params = 0, grads = 0, optimizer = 0, activations = 0, buffers = 0, transient = 0, total = 0;
  int64_t host_offloaded = 0;
};
/// Resolves the layout for `world_size` (throws ConfigError as resolve_layout) and estimates memory per rank.
/// `on_cuda` picks the attention's memory model (CPU, and CUDA's flash kernel for head dims 32/64/96/128 without
/// dropout: no T x T matrices kept; other CUDA cases: composed ops keep them); left out, backend "nccl" means CUDA.
MemoryEstimate estimate_memory_per_rank(const RecipeConfig& cfg, int world_size,
                                        std::optional<bool> on_cuda = std::nullopt);

/// Estimated bytes one rank sends per optimizer step over each group of its layout (ring algorithms: an all-gather or
/// reduce-scatter of N bytes over n ranks sends N (n-1)/n, an all-reduce 2 N (n-1)/n; padding left out). shard: the
/// FullyShard group (forward all-gather, backward re-gather of the blocks when reshard_after_forward, gradient
/// reduce-scatter, each on every micro-step); replica: hybrid sharding's all-reduce of the gradient shard across the
/// dp replicas (every micro-step); dp: DDP's gradient all-reduce (once per step). Tensor-parallel activation
/// all-reduces are not estimated. Resolves the layout (throws ConfigError as resolve_layout).
struct TrafficEstimate {
  int64_t shard = 0, replica = 0, dp = 0;
  int shard_ranks = 1, replica_ranks = 1, dp_ranks = 1;
};
TrafficEstimate estimate_traffic_per_rank(const RecipeConfig& cfg, int world_size);

}  // namespace loom::recipes
