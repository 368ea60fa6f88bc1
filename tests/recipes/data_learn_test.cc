// The synthetic corpus is learnable: a tiny GPT-2 fed by the DataLoader brings
// its loss from log(V) well down towards the corpus's stated entropy floor
// within a few seconds of CPU, the promise the tiny CPU recipe rests on.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "nn/clip_grad.h"
#include "nn/gpt2.h"
#include "nn/optim.h"
#include "recipes/data.h"

using namespace loom;
using namespace loom::recipes;

TEST(SyntheticData, TinyGpt2LossFallsClearly) {
  const int64_t V = 256, T = 64, B = 16;
  DataConfig dc;
  DataLoader loader(open_tokens(dc, "train", V), T, B, 0, 1);
  nn::GPT2Config cfg;
  cfg.vocab_size = V;
  cfg.n_positions = T;
  cfg.n_embd = 64;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  Generator gen(1337);
  nn::GPT2 model(cfg, gen);
  nn::AdamWOptions opts;
  opts.beta2 = 0.95;
  nn::AdamW opt(nn::weight_decay_groups(model.named_parameters(), 1e-2, 0.1), opts);
  const double uniform = std::log(static_cast<double>(V)), floor = synthetic_entropy_floor(dc.seed, V);
  double first = 0, smoothed = 0;
  const int steps = 150;
  auto t0 = std::chrono::steady_clock::now();
  for (int step = 0; step < steps; ++step) {
    Batch b = loader.next();
    opt.zero_grad();
    Tensor loss = model.loss(b.idx, b.targets);
    loss.backward();
    nn::clip_grad_norm_(model.parameters(), 1.0);
    opt.step();
    const double l = loss.item();
    if (step == 0) first = smoothed = l;
    smoothed = 0.9 * smoothed + 0.1 * l;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "tiny GPT-2 on synthetic V=%lld: loss %.3f -> %.3f (smoothed) in %d steps, %.1f s; floor %.3f, uniform %.3f\n",
      static_cast<long long>(V), first, smoothed, steps, secs, floor, uniform);
  EXPECT_NEAR(first, uniform, 0.3);   // starts at a uniform guess
  EXPECT_LT(smoothed, first - 2.0);   // and falls clearly
  EXPECT_GT(smoothed, floor - 0.05);  // never below what the corpus allows
}
