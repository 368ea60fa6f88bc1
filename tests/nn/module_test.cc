// Module: names, counts, state_dict, modes, dtype conversion, hooks, summary.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "test_util.h"

namespace loom::nn {
namespace {

using testing::tiny_gpt2;
using testing::tiny_llama;

std::vector<std::string> names_of(const NamedTensors& nt) {
  std::vector<std::string> out;
  for (auto& kv : nt) out.push_back(kv.first);
  return out;
}

std::vector<std::string> expected_gpt2_names(int layers) {
  std::vector<std::string> n{"transformer.wte.weight", "transformer.wpe.weight"};
  for (int i = 0; i < layers; ++i) {
    std::string p = "transformer.h." + std::to_string(i) + ".";
    for (const char* s : {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                          "mlp.c_proj.weight", "mlp.c_proj.bias"})
      n.push_back(p + s);
  }
  n.push_back("transformer.ln_f.weight");
  n.push_back("transformer.ln_f.bias");
  return n;
}

std::vector<std::string> expected_llama_names(int layers) {
  std::vector<std::string> n{"model.embed_tokens.weight"};
  for (int i = 0; i < layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* s : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                          "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                          "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"})
      n.push_back(p + s);
  }
  n.push_back("model.norm.weight");
  n.push_back("lm_head.weight");
  return n;
}

// Names and order follow the Hugging Face modules' registration order (transformers' GPT2LMHeadModel
// and LlamaForCausalLM), so state_dict() lists keys as model.state_dict() does in Python.
TEST(ModuleNames, GPT2NamedParametersMatchHuggingFaceWithTiedHeadOnce) {
  GPT2 m(tiny_gpt2());
  EXPECT_EQ(names_of(m.named_parameters()), expected_gpt2_names(2));
  auto sd = m.state_dict();
  auto keys = sd.keys();
  auto expected = expected_gpt2_names(2);
  expected.push_back("lm_head.weight");
  EXPECT_EQ(keys, expected);
  EXPECT_TRUE(m.lm_head->weight.is_same(m.transformer->wte->weight));
}

TEST(ModuleNames, LlamaNamedParametersMatchHuggingFace) {
  Llama m(tiny_llama());
  auto want = expected_llama_names(2);
  EXPECT_EQ(names_of(m.named_parameters()), want);
  EXPECT_EQ(m.state_dict().size(), want.size());  // rope tables are non-persistent buffers
}

TEST(ModuleNames, ParameterAutogradMetaCarriesDottedName) {
  GPT2 g(tiny_gpt2());
  EXPECT_EQ(autograd::meta(g.transformer->wte->weight)->name, "transformer.wte.weight");
  EXPECT_EQ(autograd::meta(g.transformer->blocks[1]->attn->c_attn->bias)->name, "transformer.h.1.attn.c_attn.bias");
  Llama l(tiny_llama());
  EXPECT_EQ(autograd::meta(l.lm_head->weight)->name, "lm_head.weight");
  EXPECT_EQ(autograd::meta(l.model->blocks[0]->attn->k_proj->weight)->name, "model.layers.0.self_attn.k_proj.weight");
}

TEST(ModuleCounts, GPT2ParameterCountMatchesClosedForm) {
  auto c = tiny_gpt2();
  GPT2 m(c);
  const int64_t V = c.vocab_size, P = c.n_positions, C = c.n_embd, L = c.n_layer;
  const int64_t per_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C);
  EXPECT_EQ(m.num_parameters(), V * C + P * C + L * per_block + 2 * C);
  const int64_t T = 8;
  EXPECT_DOUBLE_EQ(m.flops_per_token(T), 6.0 * (m.num_parameters() - P * C) + 12.0 * L * C * T);
}

TEST(ModuleCounts, LlamaParameterCountMatchesClosedForm) {
  auto c = tiny_llama();
  Llama m(c);
  const int64_t V = c.vocab_size, C = c.n_embd, L = c.n_layer, D = C / c.n_head, Hkv = c.n_kv_head,
                I = c.intermediate_size;
  const int64_t per_block = C + C * C + 2 * C * Hkv * D + C * C + C + 3 * C * I;
  EXPECT_EQ(m.num_parameters(), V * C + L * per_block + C + V * C);
  c.tie_word_embeddings = true;
  Llama tied(c);
  EXPECT_EQ(tied.num_parameters(), V * C + L * per_block + C);
}

TEST(ModuleStateDict, RoundTripReproducesOutputs) {
  GPT2 a(tiny_gpt2());
  Generator other(1234);
  GPT2 b(tiny_gpt2(), other);
  Tensor idx = from_vector<int64_t>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
  NoGradGuard ng;
  auto la = a(idx).to_vector<float>();
  auto lb0 = b(idx).to_vector<float>();
  EXPECT_NE(la, lb0);
  b.load_state_dict(a.state_dict());
  EXPECT_EQ(b(idx).to_vector<float>(), la);
  // Values are copied in place: b still owns its own tensors.
  EXPECT_FALSE(b.transformer->wte->weight.is_same(a.transformer->wte->weight));
  EXPECT_TRUE(b.lm_head->weight.is_same(b.transformer->wte->weight));
}

TEST(ModuleStateDict, StrictLoadListsMissingAndUnexpectedKeys) {
  Llama m(tiny_llama());
  StateDict full = m.state_dict();
  StateDict sd;
  for (auto& [k, v] : full)
    if (k != "model.norm.weight" && k != "lm_head.weight") sd.insert(k, v);
  sd.insert("model.bogus.weight", ops::zeros({3}));
  try {
    m.load_state_dict(sd);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.bogus.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected"), std::string::npos) << msg;
  }
  // Non-strict loads the matching keys.
  sd.insert("model.layers.0.input_layernorm.weight", ops::full({32}, 2.0));
  m.load_state_dict(sd, /*strict=*/false);
  EXPECT_EQ(m.model->blocks[0]->norm_1->named_parameters()[0].second.to_vector<float>()[5], 2.0f);
}

TEST(ModuleStateDict, ShapeMismatchNamesKeyAndBothShapes) {
  Linear l(3, 4);
  StateDict sd = l.state_dict();
  sd.insert("weight", ops::zeros({4, 5}));
  try {
    l.load_state_dict(sd);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("'weight'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 5]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4, 3]"), std::string::npos) << msg;
  }
}

TEST(ModuleMode, TrainEvalPropagatesToEveryDescendant) {
  GPT2 m(tiny_gpt2());
  EXPECT_TRUE(m.is_training());
  m.eval();
  for (auto& [n, mod] : m.named_modules()) EXPECT_FALSE(mod->is_training()) << n;
  m.train();
  for (auto& [n, mod] : m.named_modules()) EXPECT_TRUE(mod->is_training()) << n;
  // named_modules lists each module once, root first.
  auto mods = m.named_modules();
  EXPECT_EQ(mods[0].first, "");
  EXPECT_EQ(mods[1].first, "transformer");
}

TEST(ModuleMode, DropoutIsIdentityInEvalAndDropsInTrain) {
  Dropout d(0.5);
  Tensor x = ops::ones({1000});
  d.eval();
  EXPECT_EQ(d(x).to_vector<float>(), x.to_vector<float>());
  d.train();
  auto y = d(x).to_vector<float>();
  int zeros = 0, twos = 0;
  for (float v : y) {
    zeros += v == 0.0f;
    twos += v == 2.0f;
  }
  EXPECT_EQ(zeros + twos, 1000);
  EXPECT_GT(zeros, 400);
  EXPECT_LT(zeros, 600);
}

TEST(ModuleDtype, LlamaToF64ConvertsRopeTablesAndRuns) {
  Llama m(tiny_llama());
  m.to(DType::f64);
  for (auto& [n, b] : m.named_buffers()) EXPECT_EQ(b.dtype(), DType::f64) << n;
  Tensor loss = m.loss(from_vector<int64_t>({1, 2, 3, 4}, {1, 4}), from_vector<int64_t>({2, 3, 4, 5}, {1, 4}));
  EXPECT_EQ(loss.dtype(), DType::f64);
  EXPECT_TRUE(std::isfinite(loss.item()));
}

TEST(ModuleDtype, ToF64ConvertsInPlaceKeepingRequiresGradAndTies) {
  GPT2 m(tiny_gpt2());
  auto before = m.transformer->wte->weight.to_vector<float>();
  Tensor handle = m.transformer->blocks[0]->attn->c_attn->weight;  // a handle held outside the module
  m.to(DType::f64);
  for (auto& [n, p] : m.named_parameters()) {
    EXPECT_EQ(p.dtype(), DType::f64) << n;
    EXPECT_TRUE(p.requires_grad()) << n;
  }
  EXPECT_EQ(handle.dtype(), DType::f64);
  EXPECT_TRUE(m.lm_head->weight.is_same(m.transformer->wte->weight));
  auto after = m.transformer->wte->weight.to_vector<double>();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i], static_cast<double>(before[i]));
  Tensor idx = from_vector<int64_t>({1, 2, 3, 4}, {1, 4});
  Tensor loss = m.loss(idx, from_vector<int64_t>({2, 3, 4, 5}, {1, 4}));
  EXPECT_EQ(loss.dtype(), DType::f64);
  loss.backward();
  EXPECT_EQ(m.transformer->wte->weight.grad().dtype(), DType::f64);
  EXPECT_THROW(m.to(DType::i64), InvalidArgument);
}

TEST(ModuleGrad, ZeroGradClearsOrZeroes) {
  Linear l(3, 2);
  Tensor x = ops::ones({4, 3});
  loom::sum(l(x)).backward();
  ASSERT_TRUE(l.weight.grad().defined());
  l.zero_grad(/*set_to_none=*/false);
  for (float v : l.weight.grad().to_vector<float>()) EXPECT_EQ(v, 0.0f);
  l.zero_grad();
  EXPECT_FALSE(l.weight.grad().defined());
}

TEST(ModuleHooks, ForwardPreHookFiresBeforeForwardAndCanBeRemoved) {
  Linear l(3, 2);
  int calls = 0;
  bool weight_seen_zero = false;
  auto h = l.register_forward_pre_hook([&](Module& m) {
    ++calls;
    // A hook may change parameters before they are used (FSDP all-gathers here).
    auto& lin = static_cast<Linear&>(m);
    ops::zero_(lin.weight);
    weight_seen_zero = true;
  });
  Tensor y = l(ops::ones({1, 3}));
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(weight_seen_zero);
  for (float v : y.to_vector<float>()) EXPECT_EQ(v, 0.0f);  // bias is zero, weight zeroed by the hook
  l.remove_hook(h);
  l(ops::ones({1, 3}));
  EXPECT_EQ(calls, 1);
}

TEST(ModuleHooks, BackwardPreHookFiresOnceBeforeModuleParametersAreFinal) {
  Linear first(3, 4), second(4, 2);
  std::vector<std::string> events;
  bool grad_defined_at_hook = true;
  first.register_backward_pre_hook([&](Module&) {
    events.push_back("first.pre");
    grad_defined_at_hook = first.weight.grad().defined();
  });
  second.register_backward_pre_hook([&](Module&) { events.push_back("second.pre"); });
  autograd::register_post_accumulate_grad_hook(first.weight, [&](const Tensor&) { events.push_back("first.weight"); });
  autograd::register_post_accumulate_grad_hook(second.weight,
                                               [&](const Tensor&) { events.push_back("second.weight"); });
  Tensor x = ops::ones({5, 3});
  Tensor h1 = first(x);
  Tensor out = second(loom::relu(h1) + h1);  // h1 is used twice: its hook must still fire once
  loom::sum(out).backward();
  EXPECT_FALSE(grad_defined_at_hook);
  auto pos = [&](const std::string& e) { return std::find(events.begin(), events.end(), e) - events.begin(); };
  ASSERT_EQ(std::count(events.begin(), events.end(), "first.pre"), 1);
  ASSERT_EQ(std::count(events.begin(), events.end(), "second.pre"), 1);
  EXPECT_LT(pos("second.pre"), pos("second.weight"));
  EXPECT_LT(pos("first.pre"), pos("first.weight"));
  EXPECT_LT(pos("second.pre"), pos("first.pre"));
}

TEST(ModuleHooks, BackwardPreHookNotAttachedUnderNoGrad) {
  Linear l(3, 2);
  int calls = 0;
  l.register_backward_pre_hook([&](Module&) { ++calls; });
  {
    NoGradGuard ng;
    Tensor y = l(ops::ones({1, 3}));
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_EQ(calls, 0);
}

TEST(ModuleSummary, PrintsNestedLayersLikePyTorchAndTotals) {
  GPT2 m(tiny_gpt2(16, 1));
  std::string s = m.summary();
  for (const char* line : {"GPT2LMHeadModel(", "  (transformer): GPT2Model(", "    (wte): Embedding(16, 32)",
                           "    (wpe): Embedding(16, 32)", "    (h): ModuleList(", "      (0): GPT2Block(",
                           "        (ln_1): LayerNorm((32,), eps=1e-05, elementwise_affine=True)",
                           "          (c_attn): Linear(in_features=32, out_features=96, bias=True)",
                           "          (c_fc): Linear(in_features=32, out_features=128, bias=True)",
                           "          (act): GELU(approximate='tanh')",
                           "  (lm_head): Linear(in_features=32, out_features=16, bias=False)"}) {
    EXPECT_NE(s.find(std::string(line) + "\n"), std::string::npos) << "missing line: " << line << "\n" << s;
  }
  EXPECT_NE(s.find("Total parameters: " + std::to_string(m.num_parameters())), std::string::npos) << s;
  EXPECT_EQ(format_float(1e-6), "1e-06");
  EXPECT_EQ(format_float(0.1), "0.1");
  EXPECT_EQ(format_float(1.0), "1.0");
}

TEST(ModuleRegistration, RejectsDottedNamesAndDuplicateKinds) {
  Module m("Custom");
  EXPECT_THROW(m.register_parameter("a.b", ops::zeros({2})), InvalidArgument);
  m.register_parameter("w", ops::zeros({2}));
  EXPECT_THROW(m.register_buffer("w", ops::zeros({2})), InvalidArgument);
  m.register_buffer("running", ops::zeros({3}), /*persistent=*/false);
  EXPECT_EQ(m.state_dict().size(), 1u);
  EXPECT_EQ(m.named_buffers().size(), 1u);
}

TEST(ModuleHooks, ForwardHookFiresAfterForwardWithOutputReady) {
  Linear l(3, 2);
  std::vector<std::string> events;
  l.register_forward_pre_hook([&](Module&) { events.push_back("pre"); });
  auto h = l.register_forward_hook([&](Module&) { events.push_back("post"); });
  l(ops::ones({1, 3}));
  ASSERT_EQ(events, (std::vector<std::string>{"pre", "post"}));
  l.remove_hook(h);
  l(ops::ones({1, 3}));
  EXPECT_EQ(events.size(), 3u);
}

}  // namespace
}  // namespace loom::nn
