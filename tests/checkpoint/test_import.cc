// import_safetensors with the key layout of the hub's original GPT-2 file
// (saved from the bare GPT2Model: no "transformer." prefix, no lm_head, Conv1D
// weights stored (in, out), causal-mask buffers included).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "checkpoint/export.h"
#include "checkpoint/safetensors.h"
#include "nn/gpt2.h"
#include "tensor/ops.h"

namespace loom {
namespace {

nn::GPT2Config tiny() {
  nn::GPT2Config c;
  c.vocab_size = 32;
  c.n_positions = 8;
  c.n_embd = 16;
  c.n_layer = 2;
  c.n_head = 2;
  return c;
}

bool is_conv1d(const std::string& n) {
  for (const char* s : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"})
    if (n.size() > std::string(s).size() && n.compare(n.size() - std::string(s).size(), std::string::npos, s) == 0)
      return true;
  return false;
}

TEST(ImportSafetensors, ReadsTheHubsBareGpt2ModelLayout) {
  Generator g1(1), g2(2);
  nn::GPT2 src(tiny(), g1), dst(tiny(), g2);
  checkpoint::NamedTensors file;
  for (const auto& [name, t] : src.state_dict()) {
    if (name == "lm_head.weight") continue;  // tied to wte; the hub file has no head
    std::string bare = name.substr(std::string("transformer.").size());
    file.emplace_back(bare, is_conv1d(name) ? ops::contiguous(ops::transpose(t, 0, 1)) : t);
    if (name.find(".attn.c_attn.weight") != std::string::npos) {  // the causal-mask buffer HF stores per block
      std::string block = bare.substr(0, bare.find(".attn."));
      file.emplace_back(block + ".attn.bias", ops::ones({1, 1, 8, 8}));
    }
  }
  const std::string path = (std::filesystem::temp_directory_path() / "loom_hub_gpt2.safetensors").string();
  checkpoint::save_safetensors(path, file);
  checkpoint::import_safetensors(path, dst);
  for (const auto& [name, t] : src.state_dict()) {
    auto a = t.to_vector<float>(), b = dst.state_dict().at(name).to_vector<float>();
    EXPECT_EQ(a, b) << name;
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace loom
