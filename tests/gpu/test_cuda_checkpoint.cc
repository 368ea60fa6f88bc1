// Checkpoints of a model and optimizer living on a GPU: save from CUDA tensors,
// load into CUDA tensors (through a host copy), and training continues with the
// same losses as if it had never stopped. Skips without a device.
#include <gtest/gtest.h>

#include <filesystem>

#include "autograd/functions.h"
#include "checkpoint/checkpoint.h"
#include "collectives/process_group.h"
#include "collectives/store.h"
#include "nn/optim.h"
#include "tests/reference/tiny_models.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

struct Trainer {
  std::unique_ptr<nn::CausalLM> model;
  std::unique_ptr<nn::AdamW> opt;
  Trainer(uint64_t seed, Device dev) {
    Generator gen(seed);
    model = testing::make_tiny_model("gpt2", gen);
    model->to(dev);
    nn::AdamWOptions o;
    o.lr = 1e-2;
    opt = std::make_unique<nn::AdamW>(model->parameters(), o);
  }
  double step(const Tensor& idx, const Tensor& targets) {
    opt->zero_grad();
    Tensor loss = model->loss(idx, targets);
    const double l = loss.item();
    loss.backward();
    opt->step();
    return l;
  }
};

TEST(CudaCheckpoint, SaveAndLoadOnTheGpuContinuesBitForBit) {
  if (!cuda_is_available()) GTEST_SKIP() << "no CUDA device on this machine";
  const Device dev(DeviceType::kCUDA, 0);
  Generator data_gen(7);
  Tensor idx = ops::to(ops::randint(0, 61, {2, 16}, data_gen), dev);
  Tensor targets = ops::to(ops::randint(0, 61, {2, 16}, data_gen), dev);

  const fs::path root = fs::temp_directory_path() / ("loom_cuda_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(root);
  auto group = std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0, 1, "gloo");

  Trainer a(1, dev);
  for (int i = 0; i < 3; ++i) a.step(idx, targets);
  {
    checkpoint::Checkpointer ck(root.string(), group);
    checkpoint::Target t;
    t.module = a.model.get();
    t.optimizer = a.opt.get();
    checkpoint::TrainState s;
    s.step = 3;
    ck.save(t, s);
  }
  std::vector<double> straight;
  for (int i = 0; i < 3; ++i) straight.push_back(a.step(idx, targets));

  Trainer b(2, dev);  // other initial weights, overwritten by the load
  {
    checkpoint::Checkpointer ck(root.string(), group);
    checkpoint::Target t;
    t.module = b.model.get();
    t.optimizer = b.opt.get();
    EXPECT_EQ(ck.load(t).step, 3);
  }
  for (const auto& [name, p] : b.model->named_parameters()) EXPECT_TRUE(p.device().is_cuda()) << name;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(b.step(idx, targets), straight[i]) << "step " << 4 + i;
  fs::remove_all(root);
}

}  // namespace
}  // namespace loom
