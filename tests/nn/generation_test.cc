// Generation: the KV-cache path against the plain forward (logits and greedy tokens, batched prompts of different
// lengths, GPT-2 and Llama with grouped-query heads), and the sampler (reproducible from a seed, never outside the
// top-k / top-p set), and the errors for bad arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "autograd/autograd.h"
#include "nn/generation.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "tensor/ops.h"

using namespace loom;
using namespace loom::nn;

namespace {

std::shared_ptr<CausalLM> tiny(const std::string& family, uint64_t seed = 7) {
  Generator gen(seed);
  if (family == "gpt2") {
    GPT2Config c;
    c.vocab_size = 53;
    c.n_positions = 48;
    c.n_embd = 32;
    c.n_layer = 2;
    c.n_head = 4;
    return std::make_shared<GPT2>(c, gen);
  }
  LlamaConfig c;
  c.vocab_size = 53;
  c.max_seq_len = 48;
  c.n_embd = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;  // grouped-query: two query heads per kv head
  c.intermediate_size = 48;
  return std::make_shared<Llama>(c, gen);
}

/// Prompts of lengths 1, 6 and 11 (token ids from a fixed pattern).
std::vector<std::vector<int64_t>> prompts() {
  std::vector<std::vector<int64_t>> p;
  for (int64_t len : {1, 6, 11}) {
    std::vector<int64_t> s;
    for (int64_t t = 0; t < len; ++t) s.push_back((7 * t + 3 * len + 1) % 53);
    p.push_back(s);
  }
  return p;
}

class Generation : public ::testing::TestWithParam<std::string> {};

TEST_P(Generation, CachedLogitsMatchFullForwardStepByStep) {
  auto model = tiny(GetParam());
  model->eval();
  autograd::NoGradGuard ng;
  const auto ps = prompts();
  const int64_t B = static_cast<int64_t>(ps.size());
  InferenceCache cache = model->make_cache(B, 32);
  // Prefill right-padded, then feed a few fixed tokens one at a time; each step's logits against a full forward of
  // each sequence alone.
  std::vector<std::vector<int64_t>> seqs = ps;
  for (int step = 0; step < 6; ++step) {
    Tensor logits;
    if (step == 0) {
      int64_t L = 0;
      for (auto& s : seqs) L = std::max<int64_t>(L, static_cast<int64_t>(s.size()));
      std::vector<int64_t> ids(static_cast<size_t>(B * L), 5), n;
      for (int64_t b = 0; b < B; ++b) {
        std::copy(seqs[b].begin(), seqs[b].end(), ids.begin() + b * L);
        n.push_back(static_cast<int64_t>(seqs[b].size()));
      }
      logits = model->next_token_logits(from_vector<int64_t>(ids, {B, L}), n, &cache);
    } else {
      std::vector<int64_t> last;
      for (auto& s : seqs) last.push_back(s.back());
      logits = model->next_token_logits(from_vector<int64_t>(last, {B, 1}), std::vector<int64_t>(B, 1), &cache);
    }
    ASSERT_EQ(logits.sizes(), (Shape{B, 53}));
    for (int64_t b = 0; b < B; ++b) {
      EXPECT_EQ(cache.lengths[b], static_cast<int64_t>(seqs[b].size()));
      const auto T = static_cast<int64_t>(seqs[b].size());
      Tensor full = (*model)(from_vector<int64_t>(seqs[b], {1, T}));  // (1, T, V): the training forward
      auto want = ops::contiguous(ops::select(ops::select(full, 0, 0), 0, T - 1)).to_vector<float>();
      auto got = ops::contiguous(ops::select(logits, 0, b)).to_vector<float>();
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 2e-5) << GetParam() << " step " << step << " sequence " << b << " token " << i;
    }
    for (int64_t b = 0; b < B; ++b) seqs[b].push_back((11 * step + b) % 53);
  }
}

TEST_P(Generation, GreedyWithCacheEqualsWithoutTokenForToken) {
  auto model = tiny(GetParam());
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.sampling.temperature = 0;
  o.use_cache = true;
  const auto cached = generate(*model, prompts(), o);
  o.use_cache = false;
  const auto plain = generate(*model, prompts(), o);
  ASSERT_EQ(cached.size(), 3u);
  for (size_t b = 0; b < 3; ++b) {
    EXPECT_EQ(cached[b].size(), 20u);
    EXPECT_EQ(cached[b], plain[b]) << GetParam() << " sequence " << b;
    // Batched with other lengths == alone.
    const auto alone = generate(*model, {prompts()[b]}, o);
    EXPECT_EQ(cached[b], alone[0]) << GetParam() << " sequence " << b << " alone";
  }
  // Not all sequences the same (the test would be weak if the model always said one token).
  std::set<int64_t> distinct;
  for (auto& s : cached) distinct.insert(s.begin(), s.end());
  EXPECT_GT(distinct.size(), 3u);
  EXPECT_TRUE(model->is_training()) << "generate restores the module's mode";
}

TEST_P(Generation, SamplingWithCacheEqualsWithoutAndIsReproducible) {
  auto model = tiny(GetParam());
  GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling.temperature = 0.9;
  o.sampling.top_k = 10;
  o.sampling.top_p = 0.9;
  o.seed = 42;
  const auto a = generate(*model, prompts(), o);
  const auto b = generate(*model, prompts(), o);
  EXPECT_EQ(a, b);
  o.use_cache = false;
  EXPECT_EQ(a, generate(*model, prompts(), o));
  o.use_cache = true;
  o.seed = 43;
  EXPECT_NE(a, generate(*model, prompts(), o));
}

TEST_P(Generation, StopTokenEndsASequenceAndTheLoop) {
  auto model = tiny(GetParam());
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.sampling.temperature = 0;
  const auto free_run = generate(*model, {prompts()[1]}, o);
  o.stop_token = free_run[0][3];  // the 4th token: output ends at its first occurrence
  int steps = 0;
  const auto stopped =
      generate(*model, {prompts()[1]}, o, [&](const std::vector<int64_t>&, const std::vector<bool>&) { ++steps; });
  const auto first = std::find(free_run[0].begin(), free_run[0].end(), *o.stop_token) - free_run[0].begin();
  ASSERT_EQ(static_cast<int64_t>(stopped[0].size()), first + 1);
  EXPECT_EQ(steps, first + 1);
  EXPECT_EQ(stopped[0].back(), *o.stop_token);
}

INSTANTIATE_TEST_SUITE_P(Models, Generation, ::testing::Values("gpt2", "llama"));

TEST(GenerationArgs, BadArgumentsAreClearErrors) {
  auto model = tiny("gpt2");
  GenerateOptions o;
  o.max_new_tokens = 10;
  auto message = [&](const std::vector<std::vector<int64_t>>& p, const GenerateOptions& opts) -> std::string {
    try {
      generate(*model, p, opts);
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message({{}}, o).find("prompt 0 is empty"), std::string::npos);
  EXPECT_NE(message({{1, 2, 99}}, o).find("token 99, outside the model's vocabulary of 53"), std::string::npos);
  EXPECT_NE(message({std::vector<int64_t>(40, 1)}, o).find("exceeds the model's context of 48"), std::string::npos);
  GenerateOptions bad = o;
  bad.sampling.temperature = -1;
  EXPECT_NE(message({{1}}, bad).find("temperature must be >= 0"), std::string::npos);
  bad = o;
  bad.sampling.top_p = 0;
  EXPECT_NE(message({{1}}, bad).find("top_p must be in (0, 1]"), std::string::npos);
  bad = o;
  bad.sampling.top_k = -2;
  EXPECT_NE(message({{1}}, bad).find("top_k must be >= 0"), std::string::npos);
  bad = o;
  bad.max_new_tokens = 0;
  EXPECT_NE(message({{1}}, bad).find("max_new_tokens must be >= 1"), std::string::npos);
  EXPECT_THROW(model->make_cache(1, 49), InvalidArgument);
  InferenceCache cache = model->make_cache(1, 4);
  autograd::NoGradGuard ng;
  EXPECT_THROW(model->next_token_logits(from_vector<int64_t>({1, 2, 3, 4, 5}, {1, 5}), {5}, &cache), InvalidArgument);
}

// ---- the sampler on its own ----------------------------------------------------------------------------------------

Tensor random_logits(int64_t B, int64_t V, uint64_t seed) {
  Generator g(seed);
  return ops::mul(ops::randn({B, V}, g), 3.0);
}

TEST(Sampler, TopKAndTopPSetsAreTheMostLikelyTokens) {
  const Tensor logits = random_logits(1, 200, 3);
  auto l = logits.to_vector<float>();
  std::vector<int64_t> order(200);
  for (int64_t i = 0; i < 200; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return l[a] > l[b]; });
  SamplingOptions o;
  o.top_k = 7;
  auto k = allowed_tokens(l.data(), 200, o);
  EXPECT_EQ(k, std::vector<int64_t>(order.begin(), order.begin() + 7));
  // top_p: the shortest prefix of the sorted probabilities reaching p.
  o = {};
  o.top_p = 0.8;
  o.temperature = 1.5;
  auto p = allowed_tokens(l.data(), 200, o);
  std::vector<double> prob(200);
  double z = 0;
  for (int i = 0; i < 200; ++i) z += prob[i] = std::exp(l[i] / 1.5);
  double mass = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(p[i], order[i]);
    mass += prob[p[i]] / z;
  }
  EXPECT_GE(mass, 0.8 - 1e-9);
  EXPECT_LT(mass - prob[p.back()] / z, 0.8);
  EXPECT_GT(p.size(), 1u);
  EXPECT_LT(p.size(), 200u);
  // Greedy: the argmax alone.
  o = {};
  o.temperature = 0;
  EXPECT_EQ(allowed_tokens(l.data(), 200, o), std::vector<int64_t>{order[0]});
}

TEST(Sampler, DrawsStayInsideTheAllowedSetAndRepeatFromASeed) {
  const int64_t B = 16, V = 300;
  const Tensor logits = random_logits(B, V, 11);
  auto l = logits.to_vector<float>();
  for (auto opts : {SamplingOptions{1.0, 5, 1.0}, SamplingOptions{0.7, 0, 0.5}, SamplingOptions{1.3, 40, 0.9},
                    SamplingOptions{1.0, 0, 1.0}}) {
    Generator g1(99), g2(99);
    std::set<std::pair<int64_t, int64_t>> seen;  // (row, token)
    for (int round = 0; round < 50; ++round) {
      auto a = sample(logits, opts, g1);
      auto b = sample(logits, opts, g2);
      ASSERT_EQ(a, b) << "same seed, same draws";
      for (int64_t r = 0; r < B; ++r) {
        auto allowed = allowed_tokens(l.data() + r * V, V, opts);
        ASSERT_NE(std::find(allowed.begin(), allowed.end(), a[r]), allowed.end())
            << "token " << a[r] << " of row " << r << " is outside the allowed set (top_k " << opts.top_k << ", top_p "
            << opts.top_p << ")";
        seen.insert({r, a[r]});
      }
    }
    EXPECT_GT(seen.size(), static_cast<size_t>(B)) << "sampling that never varies is not sampling";
  }
  // -inf logits are never drawn, NaN is an error.
  Tensor masked = ops::full({1, 4}, -std::numeric_limits<double>::infinity());
  ops::fill_(ops::narrow(masked, 1, 2, 1), 0.0);
  Generator g(1);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample(masked, {}, g)[0], 2);
  Tensor nan = ops::full({1, 4}, std::nan(""));
  EXPECT_THROW(sample(nan, {}, g), InvalidArgument);
}

}  // namespace
