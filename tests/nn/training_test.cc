// End-to-end training behaviour: gradient accumulation equals one big batch,
// and a tiny GPT-2 / Llama learn a repeating token pattern.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "nn/lr_scheduler.h"
#include "nn/optim.h"
#include "test_util.h"

namespace loom::nn {
namespace {

/// Rows of the pattern (s + t) % vocab for start offsets s: inputs (B, T) and targets shifted by one.
std::pair<Tensor, Tensor> pattern_batch(const std::vector<int64_t>& starts, int64_t T, int64_t vocab) {
  std::vector<int64_t> x, y;
  for (int64_t s : starts)
    for (int64_t t = 0; t < T; ++t) {
      x.push_back((s + t) % vocab);
      y.push_back((s + t + 1) % vocab);
    }
  const int64_t B = static_cast<int64_t>(starts.size());
  return {from_vector<int64_t>(x, {B, T}), from_vector<int64_t>(y, {B, T})};
}

TEST(Training, GradientAccumulationEqualsOneBigBatch) {
  Generator g1(7), g2(7);
  GPT2 big(testing::tiny_gpt2(), g1), acc(testing::tiny_gpt2(), g2);
  auto [x, y] = pattern_batch({0, 3, 5, 9}, 8, 16);
  big.loss(x, y).backward();
  for (int64_t mb = 0; mb < 2; ++mb) {
    Tensor xs = ops::contiguous(ops::narrow(x, 0, 2 * mb, 2)), ys = ops::contiguous(ops::narrow(y, 0, 2 * mb, 2));
    loom::mul(acc.loss(xs, ys), 0.5).backward();  // grads add up across backward calls
  }
  auto pb = big.named_parameters(), pa = acc.named_parameters();
  ASSERT_EQ(pb.size(), pa.size());
  for (size_t i = 0; i < pb.size(); ++i) {
    auto gb = pb[i].second.grad().to_vector<float>();
    auto ga = pa[i].second.grad().to_vector<float>();
    ASSERT_EQ(gb.size(), ga.size()) << pb[i].first;
    double max_abs = 0, max_diff = 0;
    for (size_t k = 0; k < gb.size(); ++k) {
      max_abs = std::max(max_abs, static_cast<double>(std::fabs(gb[k])));
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(gb[k] - ga[k])));
    }
    EXPECT_LE(max_diff, 1e-5 * std::max(1.0, max_abs)) << pb[i].first;
  }
}

template <typename Model>
std::pair<double, double> train_pattern(Model& m, int steps, double lr) {
  AdamW opt(weight_decay_groups(m.named_parameters(), lr, 0.0), AdamWOptions{lr, 0.9, 0.95, 1e-8, 0.0});
  WarmupCosineLR sched(opt, lr, lr / 10, 5, steps);
  Generator gen(11);
  double first = 0, last = 0;
  const int64_t V = m.vocab_size();
  for (int s = 0; s < steps; ++s) {
    auto starts_t = ops::randint(0, V, {8}, gen).template to_vector<int64_t>();
    auto [x, y] = pattern_batch(starts_t, 12, V);
    opt.zero_grad();
    Tensor loss = m.loss(x, y);
    loss.backward();
    clip_grad_norm_(m.parameters(), 1.0);
    opt.step();
    sched.step();
    if (s == 0) first = loss.item();
    last = loss.item();
  }
  return {first, last};
}

TEST(Training, TinyGPT2LearnsRepeatingPattern) {
  Generator gen(3);
  GPT2 m(testing::tiny_gpt2(8), gen);
  auto [first, last] = train_pattern(m, 60, 1e-2);
  EXPECT_NEAR(first, std::log(8.0), 0.3);  // starts near uniform
  EXPECT_LT(last, 0.1) << "first loss " << first;
}

TEST(Training, TinyLlamaLearnsRepeatingPattern) {
  Generator gen(3);
  Llama m(testing::tiny_llama(), gen);
  auto [first, last] = train_pattern(m, 60, 1e-2);
  EXPECT_NEAR(first, std::log(16.0), 0.3);
  EXPECT_LT(last, 0.1) << "first loss " << first;
}

}  // namespace
}  // namespace loom::nn
