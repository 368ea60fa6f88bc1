// TransformerBlock's fused paths (attention residual add + ln_2 / post_attention_layernorm,
// GPT-2's c_fc + tanh GELU) against the same block forced onto the unfused modules by a
// hook on each fused submodule: on CPU the output and every parameter gradient must match
// bit for bit, and the fused path must actually be the one taken.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>

#include "autograd/autocast.h"
#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "nn/transformer.h"

namespace loom {
namespace {

nn::BlockOptions options(nn::BlockStyle style) {
  nn::BlockOptions o;
  o.style = style;
  o.attn.n_embd = o.mlp.n_embd = 16;
  o.attn.n_head = 4;
  o.attn.max_seq_len = 8;
  if (style == nn::BlockStyle::kLlama) {
    o.attn.n_kv_head = 2;
    o.attn.bias = o.mlp.bias = false;
    o.attn.fused_qkv = false;
    o.attn.rope = true;
    o.norm_eps = 1e-6;
  }
  return o;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.sizes() != b.sizes()) return false;
  Tensor ac = ops::contiguous(a), bc = ops::contiguous(b);
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

/// Runs forward + backward of a block built from seed 5, fused unless `unfused`
/// (a no-op forward hook on each fused submodule forces the module path).
struct Run {
  Tensor out;
  nn::NamedTensors grads;
  std::set<std::string> nodes;  // names of the graph's nodes
};

/// Names of every node reachable from t's grad_fn.
std::set<std::string> graph_nodes(const Tensor& t) {
  std::set<std::string> names;
  std::set<const autograd::Node*> seen;
  std::vector<std::shared_ptr<autograd::Node>> stack{autograd::grad_fn(t)};
  while (!stack.empty()) {
    auto n = stack.back();
    stack.pop_back();
    if (!n || !seen.insert(n.get()).second) continue;
    names.insert(n->name());
    for (const auto& e : n->next_edges) stack.push_back(e.fn);
  }
  return names;
}

Run run(nn::BlockStyle style, bool unfused, bool autocast) {
  Generator gen(5);
  nn::TransformerBlock block(options(style), gen);
  if (unfused) {
    block.norm_2->register_forward_hook([](nn::Module&) {});
    if (style == nn::BlockStyle::kGPT2) {
      std::static_pointer_cast<nn::GeluMLP>(block.mlp)->c_fc->register_forward_hook([](nn::Module&) {});
    }
  }
  Generator data(6);
  Tensor x = ops::rand({2, 8, 16}, data, DType::f32).set_requires_grad();
  Tensor gy = ops::rand({2, 8, 16}, data, DType::f32);
  Run r;
  {
    AutocastGuard ag(DType::bf16, autocast);
    r.out = block(x);
  }
  r.nodes = graph_nodes(r.out);
  sum(mul(r.out, gy)).backward();
  for (const auto& [name, p] : block.named_parameters()) r.grads.emplace_back(name, p.grad());
  r.grads.emplace_back("input", x.grad());
  return r;
}

void check(nn::BlockStyle style, bool autocast) {
  Run f = run(style, false, autocast), u = run(style, true, autocast);
  const bool gpt2 = style == nn::BlockStyle::kGPT2;
  const std::string add_norm = gpt2 ? "AddLayerNormBackward" : "AddRmsNormBackward";
  EXPECT_EQ(f.nodes.count(add_norm), 1u) << "the fused residual add + norm was not taken";
  EXPECT_EQ(u.nodes.count(add_norm), 0u);
  EXPECT_EQ(f.nodes.count("LinearGeluBackward"), gpt2 ? 1u : 0u);
  EXPECT_EQ(u.nodes.count("LinearGeluBackward"), 0u);
  EXPECT_TRUE(same_bits(f.out, u.out)) << "block output";
  ASSERT_EQ(f.grads.size(), u.grads.size());
  for (size_t i = 0; i < f.grads.size(); ++i) {
    ASSERT_TRUE(f.grads[i].second.defined()) << f.grads[i].first;
    EXPECT_TRUE(same_bits(f.grads[i].second, u.grads[i].second)) << "gradient of " << f.grads[i].first;
  }
}

TEST(FusedBlock, Gpt2BlockMatchesUnfusedModulesBitForBit) {
  check(nn::BlockStyle::kGPT2, false);
  check(nn::BlockStyle::kGPT2, true);
}

TEST(FusedBlock, LlamaBlockMatchesUnfusedModulesBitForBit) {
  check(nn::BlockStyle::kLlama, false);
  check(nn::BlockStyle::kLlama, true);
}

}  // namespace
}  // namespace loom
