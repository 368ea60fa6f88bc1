// Starting a model from Hugging Face weights: a GPT-2 or Llama model directory as transformers writes it (config.json
// beside model.safetensors, or beside model.safetensors.index.json and its shards), a single safetensors file, or an
// index file. Only the safetensors headers are read up front; each rank then reads (pread) just the byte ranges of the
// pieces it holds under its layout (FSDP shards, TP splits, whole tensors for DDP), converting bf16/f16/f64 to the
// model's dtype and transposing GPT-2's Conv1D weights ((in, out) in the file, (out, in) in loom) as it copies.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "checkpoint/checkpoint.h"
#include "collectives/process_group.h"
#include "nn/causal_lm.h"

namespace loom::checkpoint {

/// Where one tensor's bytes lie in a Hugging Face weights directory.
struct HfTensor {
  std::string file;  // the safetensors file holding it
  DType dtype = DType::f32;
  Shape shape;          // as stored (GPT-2's Conv1D weights (in, out))
  uint64_t offset = 0;  // absolute byte offset of its data in file
};

/// The tensors of a Hugging Face model's weights (headers only) and its config.json.
class HfWeights {
 public:
  /// path: a directory (model.safetensors.index.json or model.safetensors in it), an index file
  /// (*.safetensors.index.json) or one safetensors file; config.json is looked for in the same directory. Reads only
  /// the index and the safetensors headers. Throws IoError naming the file and what is wrong (missing, truncated,
  /// malformed header or index, a tensor the index maps to a shard that lacks it).
  static HfWeights open(const std::string& path);

  /// What was given, as given.
  const std::string& path() const { return path_; }
  /// config.json beside the weights, "" when there is none.
  const std::string& config_path() const { return config_path_; }
  /// Every tensor by the name the file gives it.
  const std::map<std::string, HfTensor>& tensors() const { return tensors_; }
  /// Sum of the tensors' data bytes (what reading everything would cost).
  int64_t total_bytes() const;

 private:
  std::string path_, config_path_;
  std::map<std::string, HfTensor> tensors_;
};

/// Compares a Hugging Face config.json with the model that will take its weights: model_type, sizes (n_embd /
/// hidden_size, n_layer / num_hidden_layers, heads, kv heads, vocab_size, n_positions or max_position_embeddings,
/// intermediate_size), rope_theta, tie_word_embeddings and the norm epsilon; settings loom's models cannot reproduce
/// (rope_scaling, attention or MLP biases in Llama, an activation other than GPT-2's gelu_new or Llama's silu) are
/// errors too. Throws ConfigError "<config.json>: <key> is <file value>, the model's <what> is <value>" for the first
/// key that differs, naming what to set; InvalidArgument for a model that is neither nn::GPT2 nor nn::Llama.
void check_hf_config(const std::string& config_path, const nn::CausalLM& model);

/// A GPT-2 or Llama model (f32, on the CPU, randomly initialised from gen) with the shapes a Hugging Face config.json
/// gives (model_type "gpt2" or "llama"); check_hf_config then passes for it. Throws ConfigError naming the file and
/// key for an unknown model_type or a missing size.
std::shared_ptr<nn::CausalLM> build_hf_model(const std::string& config_path, Generator& gen);

struct HfLoadStats {
  int64_t tensors = 0;     // pieces of tensors filled on this rank
  int64_t bytes_read = 0;  // tensor data this rank read from the files
  bool config_checked = false;
};

/// Fills this rank's part of the target's model (parameters and persistent buffers; optimizer, scheduler and RNGs are
/// left alone) from Hugging Face weights at path (see HfWeights::open), after check_hf_config when config.json is
/// there. Names follow Hugging Face's: GPT-2 files without the "transformer." prefix (the hub's original checkpoints)
/// are accepted, as are attention-mask buffers (*.attn.bias, *.attn.masked_bias), rotary inv_freq buffers and a
/// lm_head.weight the model ties to its embedding. Each rank reads only the bytes of the pieces it holds (plus at
/// most a row at each end of a piece). With group, collective: a failure on any rank is raised on every rank of the
/// group (so none goes on alone into training). Throws ConfigError for a config.json mismatch, InvalidArgument listing
/// missing and unexpected tensors or naming a tensor and both shapes, IoError for a read failure.
HfLoadStats load_hf_weights(const std::string& path, const Target& target,
                            const std::shared_ptr<collectives::ProcessGroup>& group = nullptr);

/// Tensor data bytes read through load_hf_weights by this process since it started (every rank counts its own).
int64_t hf_bytes_read_total();

}  // namespace loom::checkpoint
