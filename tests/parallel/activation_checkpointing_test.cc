// Activation checkpointing under every wrapper: GPT-2 and Llama with dropout, trained for two AdamW steps under DDP,
// FullyShard, tensor parallelism and FSDP x TP with none / full / selective / selective:2, give the same losses, the
// same gradients and the same parameters bit for bit (each layout against itself without checkpointing, in the same
// process). The recompute re-gathers a FullyShard unit and reissues the TP collectives, in the same order on every
// rank. On one rank every layout degenerates to a one-rank group and still runs the same code.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/activation_checkpointing.h"
#include "nn/transformer.h"
#include "parallel/ddp.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "parallel/tensor_parallel.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::Family;
using ptest::world;

enum class Layout { kDDP, kFSDP, kTP, kFsdpTp };

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::kDDP:
      return "DDP";
    case Layout::kFSDP:
      return "FSDP";
    case Layout::kTP:
      return "TP";
    case Layout::kFsdpTp:
      return "FSDPxTP";
  }
  return "?";
}

/// The harness's tiny model with dropout 0.1 (GPT-2: embedding, attention and residual; Llama: attention).
std::shared_ptr<nn::CausalLM> dropout_model(Family f, Generator& gen) {
  if (f == Family::kGPT2) {
    auto c = ptest::tiny_gpt2_config();
    c.dropout = 0.1;
    return std::make_shared<nn::GPT2>(c, gen);
  }
  auto c = ptest::tiny_llama_config();
  c.dropout = 0.1;
  return std::make_shared<nn::Llama>(c, gen);
}

struct Trace {
  std::vector<double> losses;
  std::vector<Tensor> grads;  // per step, every gradient the optimizer sees (copied)
  nn::StateDict params;
};

Trace train(Family f, Layout layout, const std::string& spec) {
  const int W = world()->size();
  Generator gen(1234);
  auto model = dropout_model(f, gen);
  model->train();
  std::shared_ptr<collectives::ProcessGroup> data_group = world(), tp_group;
  int data_rank = world()->rank(), data_size = W;
  std::optional<DeviceMesh> mesh;
  if (layout == Layout::kTP) {
    tp_group = world();
    data_rank = 0;
    data_size = 1;
  } else if (layout == Layout::kFsdpTp) {
    const int fsdp_size = W >= 2 ? 2 : 1;
    mesh.emplace(world(), std::vector<std::pair<std::string, int>>{{"fsdp", fsdp_size}, {"tp", W / fsdp_size}});
    data_group = mesh->group("fsdp");
    tp_group = mesh->group("tp");
    data_rank = mesh->coordinate("fsdp");
    data_size = fsdp_size;
  }
  if (tp_group) tensor_parallelize(*model, tp_group);
  nn::apply_activation_checkpointing(*model, nn::ActivationCheckpointing::parse(spec));
  std::unique_ptr<FullyShard> fsdp;
  std::unique_ptr<DistributedDataParallel> ddp;
  if (layout == Layout::kFSDP || layout == Layout::kFsdpTp) {
    fsdp = std::make_unique<FullyShard>(model, data_group);
  } else if (layout == Layout::kDDP) {
    ddp = std::make_unique<DistributedDataParallel>(model, data_group);
  }
  auto groups = fsdp ? fsdp->param_groups(1e-2, 0.1) : nn::weight_decay_groups(model->named_parameters(), 1e-2, 0.1);
  nn::AdamW opt(groups, nn::AdamWOptions{});
  // Dropout: each data-parallel rank its own stream, tp ranks of one replica the same (as pretrain seeds it).
  gen.manual_seed(77 + 1000003ull * static_cast<uint64_t>(data_rank));
  manual_seed(78 + 1000003ull * static_cast<uint64_t>(data_rank));  // attention dropout draws from the default one
  Trace out;
  for (int step = 0; step < 2; ++step) {
    ptest::Batch b = ptest::rows(ptest::global_batch(step), data_rank, data_size);
    opt.zero_grad();
    Tensor loss = model->loss(b.idx, b.targets);
    loss.backward();
    out.losses.push_back(loss.item<double>());
    for (const auto& g : groups)
      for (const auto& p : g.params) out.grads.push_back(p.grad().defined() ? ops::clone(p.grad()) : Tensor());
    opt.step();
  }
  out.params = fsdp ? fsdp->full_state_dict(/*rank0_only=*/false) : model->state_dict();
  return out;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  if (a.dtype() != b.dtype() || a.sizes() != b.sizes()) return false;
  Tensor ac = ops::contiguous(a), bc = ops::contiguous(b);
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

void expect_bit_identical(Layout layout) {
  for (Family f : ptest::families()) {
    const Trace none = train(f, layout, "none");
    for (const char* spec : {"full", "selective", "selective:2"}) {
      SCOPED_TRACE(std::string(ptest::family_name(f)) + " " + layout_name(layout) + " " + spec + " on rank " +
                   std::to_string(world()->rank()) + " of " + std::to_string(world()->size()));
      const Trace got = train(f, layout, spec);
      ASSERT_EQ(got.losses.size(), none.losses.size());
      for (size_t i = 0; i < none.losses.size(); ++i) EXPECT_EQ(got.losses[i], none.losses[i]) << "loss " << i;
      ASSERT_EQ(got.grads.size(), none.grads.size());
      size_t differ = 0, missing = 0;
      for (size_t i = 0; i < none.grads.size(); ++i) {
        missing += got.grads[i].defined() ? 0 : 1;
        differ += same_bits(got.grads[i], none.grads[i]) ? 0 : 1;
      }
      EXPECT_EQ(missing, 0u) << "gradients missing with checkpointing";
      EXPECT_EQ(differ, 0u) << differ << " of " << none.grads.size() << " gradients differ";
      for (const auto& [name, t] : none.params) {
        ASSERT_TRUE(got.params.contains(name)) << name;
        EXPECT_TRUE(same_bits(got.params.at(name), t)) << "parameter " << name << " after two steps";
      }
    }
  }
}

/// Two checkpointed blocks and no other parameter: every gradient hook fires inside a recompute's backward.
struct TwoBlocks : nn::Module {
  explicit TwoBlocks(Generator& gen) : nn::Module("TwoBlocks") {
    nn::BlockOptions o;
    o.attn.n_embd = o.mlp.n_embd = 16;
    o.attn.n_head = 2;
    o.attn.max_seq_len = 8;
    a = register_module("a", std::make_shared<nn::TransformerBlock>(o, gen));
    b = register_module("b", std::make_shared<nn::TransformerBlock>(o, gen));
  }
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return (*b)((*a)(in)); });
  }
  std::shared_ptr<nn::TransformerBlock> a, b;
};

TEST(ActivationCheckpointingParallel, DdpWaitsForEveryRecomputeBeforeItFinishes) {
  // DDP queues its end-of-backward callback from the first gradient hook, here inside block b's recompute: it must run
  // when the whole backward ends, not when that recompute's inner pass does (block a's gradients would be missing).
  auto grads = [&](bool ckpt) {
    Generator gen(3);
    auto m = std::make_shared<TwoBlocks>(gen);
    if (ckpt) {
      nn::checkpoint_module(*m, "a", nn::CheckpointMode::kFull);
      nn::checkpoint_module(*m, "b", nn::CheckpointMode::kFull);
    }
    DistributedDataParallel ddp(m, world());
    Generator data(4 + static_cast<uint64_t>(world()->rank()));
    Tensor x = ops::rand({2, 8, 16}, data);
    sum((*m)(x)).backward();
    std::vector<Tensor> out;
    for (const auto& p : m->parameters()) out.push_back(ops::clone(p.grad()));
    return out;
  };
  const auto want = grads(false), got = grads(true);
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(same_bits(got[i], want[i])) << "gradient " << i;
}

TEST(ActivationCheckpointingParallel, DdpBitIdentical) { expect_bit_identical(Layout::kDDP); }
TEST(ActivationCheckpointingParallel, FullyShardBitIdentical) { expect_bit_identical(Layout::kFSDP); }
TEST(ActivationCheckpointingParallel, TensorParallelBitIdentical) { expect_bit_identical(Layout::kTP); }
TEST(ActivationCheckpointingParallel, FsdpTpBitIdentical) { expect_bit_identical(Layout::kFsdpTp); }

}  // namespace
}  // namespace loom::parallel
