// The per-op profiler (tensor/profiler.h) over one tiny GPT-2 training step (forward,
// backward, AdamW): the table has the ops of each phase, its self times fit in the step's
// wall time, and profiling changes no numbers. In tests/nn because the step needs nn/.
#include <gtest/gtest.h>

#include <chrono>

#include "nn/optim.h"
#include "tensor/profiler.h"
#include "test_util.h"

namespace loom::nn {
namespace {

using profiler::OpStat;

const OpStat* find(const std::vector<OpStat>& stats, const std::string& phase, const std::string& name) {
  for (const auto& s : stats)
    if (s.phase == phase && s.name == name) return &s;
  return nullptr;
}

/// A tiny GPT-2 and its AdamW, seeded so two instances are identical.
struct TinyStep {
  explicit TinyStep(uint64_t seed)
      : gen(seed),
        model(testing::tiny_gpt2(/*vocab=*/64, /*layers=*/2), gen),
        opt(weight_decay_groups(model.named_parameters(), 1e-3, 0.1), AdamWOptions{1e-3, 0.9, 0.95, 1e-8, 0.1}) {}
  /// One step on a fixed batch; returns the loss.
  double step() {
    const Tensor x = ops::randint(0, 64, {2, 12}, data_gen);
    const Tensor y = ops::randint(0, 64, {2, 12}, data_gen);
    opt.zero_grad();
    Tensor loss = model.loss(x, y);
    loss.backward();
    opt.step();
    return loss.item();
  }
  Generator gen;
  Generator data_gen{5};
  GPT2 model;
  AdamW opt;
};

TEST(Profiler, GPT2TrainingStepTableHasEveryPhase) {
  TinyStep run(3);
  run.step();  // warm-up: the optimizer state exists from here on
  profiler::start();
  const auto t0 = std::chrono::steady_clock::now();
  run.step();
  const double wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const auto stats = profiler::stop();
  SCOPED_TRACE(profiler::format_table(stats, wall_ms));

  for (const auto& s : stats) {
    EXPECT_TRUE(s.phase == "forward" || s.phase == "backward" || s.phase == "optimizer") << s.phase;
    EXPECT_GT(s.calls, 0) << s.name;
    EXPECT_LE(s.self_ms, s.total_ms + 1e-9) << s.phase << " " << s.name;
  }
  // Forward: the model's ops; 2 layers x 4 linears (+ the tied lm_head).
  const OpStat* linear = find(stats, "forward", "linear");
  ASSERT_NE(linear, nullptr);
  EXPECT_GE(linear->calls, 8);
  for (const char* name : {"attention", "layer_norm", "embedding", "cross_entropy", "alloc"})
    EXPECT_NE(find(stats, "forward", name), nullptr) << name;
  // Backward: the engine's nodes by name, and the ops they run.
  for (const char* name : {"LinearBackward", "attention_backward", "embedding_backward", "alloc", "free"})
    EXPECT_NE(find(stats, "backward", name), nullptr) << name;
  EXPECT_TRUE(find(stats, "backward", "matmul") || find(stats, "backward", "gemm_")) << "no matmul in backward";
  EXPECT_EQ(find(stats, "forward", "LinearBackward"), nullptr);
  // Optimizer: one AdamW step, one zero_grad.
  const OpStat* adamw = find(stats, "optimizer", "adamw");
  ASSERT_NE(adamw, nullptr);
  EXPECT_EQ(adamw->calls, 1);
  ASSERT_NE(find(stats, "optimizer", "zero_grad"), nullptr);
  EXPECT_EQ(find(stats, "optimizer", "zero_grad")->calls, 1);
  // Self times partition the time inside scopes, all of it inside the step.
  double self_sum = 0;
  for (const auto& s : stats) self_sum += s.self_ms;
  EXPECT_GT(self_sum, 0.0);
  EXPECT_LE(self_sum, wall_ms);
  EXPECT_LE(adamw->total_ms, wall_ms);
}

TEST(Profiler, ProfilingChangesNoNumbers) {
  TinyStep plain(3), profiled(3);
  for (int s = 0; s < 2; ++s) {
    const double a = plain.step();
    profiler::start();
    const double b = profiled.step();
    EXPECT_FALSE(profiler::stop().empty());
    EXPECT_EQ(a, b) << "step " << s;
  }
  const auto pa = plain.model.named_parameters(), pb = profiled.model.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_EQ(pa[i].second.to_vector<float>(), pb[i].second.to_vector<float>()) << pa[i].first;
}

}  // namespace
}  // namespace loom::nn
