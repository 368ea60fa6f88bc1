// Building the recipes' models: a GPT-2 or Llama from a recipe config's model section, from a Hugging Face
// config.json, or whole with its trained weights from a loom checkpoint directory or a safetensors file (what
// `generate` loads).
#pragma once

#include <memory>
#include <string>

#include "nn/causal_lm.h"
#include "recipes/config.h"
#include "tensor/random.h"

namespace loom::recipes {

/// Builds the config's model on the CPU from gen (the same draws on every rank given the same seed).
std::shared_ptr<nn::CausalLM> build_model(const ModelConfig& m, Generator& gen);

/// The model section equivalent to a Hugging Face config.json (model_type "gpt2": n_embd, n_layer, n_head,
/// vocab_size, n_positions, tie_word_embeddings; "llama": hidden_size, num_hidden_layers, num_attention_heads,
/// num_key_value_heads, intermediate_size, vocab_size, max_position_embeddings, rope_theta, tie_word_embeddings).
/// Throws ConfigError naming the file and key when one is missing or of the wrong type, or the model type is neither.
ModelConfig model_config_from_hf_json(const std::string& path);

/// A model with its weights, and where they came from.
struct LoadedModel {
  std::shared_ptr<nn::CausalLM> model;
  ModelConfig config;
  std::string description;  // "checkpoint runs/x/step_00000100 (step 100)", "safetensors m.safetensors"
};

/// Loads a loom checkpoint: dir is a step directory (with metadata.json) or a run directory (its latest checkpoint).
/// The model is built from the recipe config stored in the checkpoint's metadata. Throws IoError / ConfigError naming
/// the directory and what is missing.
LoadedModel load_checkpoint_model(const std::string& dir);

/// Loads a safetensors file with Hugging Face names (loomckpt export's, or Hugging Face's own GPT-2 / Llama files)
/// with its config: config_path (a config.json, or a loom recipe YAML) or, when empty, config.json beside the file.
LoadedModel load_safetensors_model(const std::string& path, const std::string& config_path = "");

}  // namespace loom::recipes
