// Moving model weights between loom checkpoints and single safetensors files with Hugging Face names and layouts:
// export streams a checkpoint slice by slice (memory bounded by a chunk size, never the whole model), import loads such
// a file (or one of Hugging Face's GPT-2 / Llama files) as a model's initial weights. GPT-2's attention and MLP
// projections are Conv1D modules in Hugging Face, storing weight as (in, out): they are transposed both ways.
#pragma once

#include <cstdint>
#include <string>

#include "nn/module.h"

namespace loom::checkpoint {

/// True for the parameters Hugging Face's GPT-2 stores transposed (Conv1D): *.attn.c_attn.weight,
/// *.attn.c_proj.weight, *.mlp.c_fc.weight, *.mlp.c_proj.weight.
bool is_hf_conv1d_weight(const std::string& name);

struct ExportStats {
  int64_t tensors = 0;
  int64_t bytes = 0;            // tensor data written
  int64_t max_chunk_bytes = 0;  // the largest slice held in memory at once
};

/// Writes the model tensors of the checkpoint directory dir (complete, checksums verified on every block read) to out
/// as safetensors with Hugging Face names ("model/" dropped) and layouts, reading at most about chunk_bytes of a tensor
/// at a time (one row or column more when a single one is larger). The file appears at out by a rename once whole.
/// Throws IoError naming the file and tensor on any read or write failure.
ExportStats export_safetensors(const std::string& dir, const std::string& out, int64_t chunk_bytes = 64 << 20);

/// Loads Hugging Face weights (a safetensors file, an index of shards, or a model directory; see load_hf_weights, which
/// this calls for a single-rank module) into module's parameters and persistent buffers. Throws as load_hf_weights.
void import_safetensors(const std::string& path, nn::Module& module);

}  // namespace loom::checkpoint
