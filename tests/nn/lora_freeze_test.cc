// Frozen parameters in nn: LoRALinear (a frozen Linear beside trainable low-rank adapters), freeze_parameters by glob
// (tied names, errors that name the key, index and counts and change nothing), and optimizers that skip parameters
// without a gradient (no state, no weight decay), as PyTorch's do.
#include <gtest/gtest.h>

#include "autograd/functions.h"
#include "nn/freeze.h"
#include "nn/gpt2.h"
#include "nn/init.h"
#include "nn/lora.h"
#include "nn/optim.h"
#include "tensor/ops.h"

namespace loom::nn {
namespace {

double max_abs_diff(const Tensor& a, const Tensor& b) { return ops::max(ops::abs(ops::sub(a, b))).item(); }

TEST(LoRALinear, WrapsTheFrozenBaseAndAddsTheScaledLowRankUpdate) {
  Generator gen(7);
  Linear base(6, 5, LinearOptions{}, gen);
  init::normal_(base.bias, 0.0, 0.1, gen);
  LoRAOptions o;
  o.rank = 2;
  o.alpha = 6.0;
  o.zero_init_b = false;
  LoRALinear lora(base, o, gen);
  EXPECT_TRUE(lora.weight.is_same(base.weight));
  EXPECT_TRUE(lora.bias.is_same(base.bias));
  EXPECT_FALSE(lora.weight.requires_grad());
  EXPECT_FALSE(lora.bias.requires_grad());
  EXPECT_TRUE(lora.lora_A->weight.requires_grad());
  EXPECT_TRUE(lora.lora_B->weight.requires_grad());
  EXPECT_EQ(lora.lora_A->weight.sizes(), (Shape{2, 6}));
  EXPECT_EQ(lora.lora_B->weight.sizes(), (Shape{5, 2}));
  EXPECT_DOUBLE_EQ(lora.scaling(), 3.0);
  std::vector<std::string> names;
  for (const auto& [n, p] : lora.named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "lora_A.weight", "lora_B.weight"}));

  Tensor x = ops::randn({3, 6}, gen);
  Tensor y = lora(x);
  Tensor want =
      ops::add(base.forward(x), ops::mul(ops::matmul(ops::matmul(x, ops::transpose(lora.lora_A->weight, 0, 1)),
                                                     ops::transpose(lora.lora_B->weight, 0, 1)),
                                         3.0));
  EXPECT_LE(max_abs_diff(y, want), 1e-5);
  loom::sum(y).backward();
  EXPECT_FALSE(lora.weight.grad().defined()) << "the frozen weight got a gradient";
  EXPECT_FALSE(lora.bias.grad().defined());
  EXPECT_TRUE(lora.lora_A->weight.grad().defined());
  EXPECT_TRUE(lora.lora_B->weight.grad().defined());

  // PEFT's default: B starts at zero, so the layer computes what the base did.
  LoRALinear fresh(base, LoRAOptions{4, 16.0}, gen);
  EXPECT_EQ(max_abs_diff(fresh(x), base.forward(x)), 0.0);
  EXPECT_THROW(LoRALinear(base, LoRAOptions{6, 16.0}, gen), InvalidArgument);  // rank above min(in, out) = 5
  EXPECT_THROW(LoRALinear(base, LoRAOptions{2, 0.0}, gen), InvalidArgument);
}

std::shared_ptr<GPT2> tiny_gpt2() {
  GPT2Config c;
  c.vocab_size = 32;
  c.n_positions = 8;
  c.n_embd = 16;
  c.n_layer = 2;
  c.n_head = 2;
  Generator gen(3);
  return std::make_shared<GPT2>(c, gen);
}

TEST(FreezeParameters, FreezesByGlobIncludingTiedNamesAndCounts) {
  auto m = tiny_gpt2();
  const int64_t total = m->num_parameters();
  // lm_head.weight is tied to transformer.wte.weight: either name freezes the one tensor.
  FreezeStats s = freeze_parameters(*m, {"lm_head.weight", "transformer.h.*.attn.*"}, "model.freeze");
  EXPECT_FALSE(m->transformer->wte->weight.requires_grad());
  for (const auto& [n, p] : m->named_parameters()) {
    const bool frozen = n == "transformer.wte.weight" || n.find(".attn.") != std::string::npos;
    EXPECT_EQ(p.requires_grad(), !frozen) << n;
  }
  EXPECT_EQ(s.frozen_params, 1 + 2 * 4);  // wte; c_attn and c_proj weight and bias of 2 blocks
  EXPECT_EQ(s.trainable_numel + s.frozen_numel, total);
  EXPECT_EQ(s.frozen_numel, 32 * 16 + 2 * (16 * 48 + 48 + 16 * 16 + 16));
  const FreezeStats again = freeze_stats(*m);
  EXPECT_EQ(again.frozen_numel, s.frozen_numel);
  EXPECT_EQ(again.trainable_params, s.trainable_params);
}

TEST(FreezeParameters, BadGlobsNameKeyIndexAndCountsAndChangeNothing) {
  auto m = tiny_gpt2();
  const int64_t n = static_cast<int64_t>(m->named_parameters().size());
  try {
    freeze_parameters(*m, {"transformer.wte.*", "transformer.h.*.mlp.x"}, "model.freeze");
    ADD_FAILURE() << "a glob that matches nothing must fail";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(
        std::string(e.what()).find("model.freeze[1] 'transformer.h.*.mlp.x' matches none of the " + std::to_string(n) +
                                   " parameters; names look like transformer.h.0.mlp.c_fc.weight"),
        std::string::npos)
        << e.what();
  }
  EXPECT_EQ(freeze_stats(*m).frozen_params, 0) << "the first glob was applied before the error";
  try {
    freeze_parameters(*m, {"transformer.*", "lm_head.*"}, "model.freeze");
    ADD_FAILURE() << "freezing everything must fail";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("model.freeze freezes all " + std::to_string(n) + " trainable parameters (" +
                                         std::to_string(m->num_parameters()) + " elements); nothing would train"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(freeze_stats(*m).frozen_params, 0);
}

TEST(OptimizersWithFrozenParameters, SkipThemWithoutStateOrWeightDecay) {
  for (bool adamw : {true, false}) {
    SCOPED_TRACE(adamw ? "AdamW" : "SGD");
    Generator gen(11);
    Linear frozen(4, 3, LinearOptions{}, gen), trained(4, 3, LinearOptions{}, gen);
    frozen.weight.set_requires_grad(false);
    frozen.bias.set_requires_grad(false);
    const Tensor before = ops::clone(frozen.weight);
    std::vector<ParamGroup> groups = {{{frozen.weight, trained.weight}, 1e-2, 0.1},
                                      {{frozen.bias, trained.bias}, 1e-2, 0.0}};
    std::unique_ptr<Optimizer> opt;
    if (adamw) {
      opt = std::make_unique<AdamW>(groups, AdamWOptions{});
    } else {
      SGDOptions so;
      so.momentum = 0.9;
      so.weight_decay = 0.1;
      opt = std::make_unique<SGD>(groups, so);
    }
    for (int step = 0; step < 3; ++step) {
      opt->zero_grad();
      Tensor x = ops::randn({2, 4}, gen);
      loom::sum(loom::add(frozen(x), trained(x))).backward();
      opt->step();
    }
    EXPECT_EQ(max_abs_diff(frozen.weight, before), 0.0) << "a frozen weight moved (weight decay?)";
    const OptimizerState st = opt->state_dict();
    for (int64_t i : {0, 2})
      EXPECT_TRUE(!st.state.count(i) || st.state.at(i).tensors.empty()) << "state for frozen " << i;
    for (int64_t i : {1, 3}) EXPECT_FALSE(st.state.at(i).tensors.empty()) << "no state for trainable " << i;
    opt->load_state_dict(st);  // a state without entries for the frozen ones loads back
  }
}

}  // namespace
}  // namespace loom::nn
