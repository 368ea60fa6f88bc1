// The tiny GPT-2 and Llama that the reference test compares with PyTorch, shared
// by the tests that run the same models elsewhere (CUDA, checkpoints on a GPU).
#pragma once

#include <memory>
#include <string>

#include "nn/gpt2.h"
#include "nn/llama.h"

namespace loom::testing {

/// family "gpt2": 2 layers, 32 wide, 4 heads, vocab 61, 16 positions; otherwise a Llama
/// of the same size with 2 kv heads (grouped-query), MLP 48, rope theta 1e4.
inline std::unique_ptr<nn::CausalLM> make_tiny_model(const std::string& family, Generator& gen) {
  if (family == "gpt2") {
    nn::GPT2Config c;
    c.vocab_size = 61;
    c.n_positions = 16;
    c.n_embd = 32;
    c.n_layer = 2;
    c.n_head = 4;
    return std::make_unique<nn::GPT2>(c, gen);
  }
  nn::LlamaConfig c;
  c.vocab_size = 61;
  c.max_seq_len = 16;
  c.n_embd = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.intermediate_size = 48;
  c.rope_theta = 10000.0;
  return std::make_unique<nn::Llama>(c, gen);
}

}  // namespace loom::testing
