#include "tests/parallel/harness.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <sstream>

#include "autograd/functions.h"
#include "collectives/init.h"
#include "nn/clip_grad.h"
#include "tensor/random.h"

namespace loom::ptest {

namespace {
std::shared_ptr<collectives::ProcessGroup> g_world;
}

std::shared_ptr<collectives::ProcessGroup> world() {
  if (g_world) return g_world;
  const char* backend_env = std::getenv("LOOM_TEST_BACKEND");
  const std::string backend = backend_env && *backend_env ? backend_env : "gloo";
  const bool launched = std::getenv("RANK") || std::getenv("OMPI_COMM_WORLD_RANK");
  if (launched) {
    g_world = collectives::init_process_group(backend);
  } else {
    auto store = std::make_shared<collectives::HashStore>();
    g_world = std::make_shared<collectives::ProcessGroup>(store, 0, 1, "gloo");
  }
  return g_world;
}

void shutdown_world() { g_world.reset(); }

const char* family_name(Family f) { return f == Family::kGPT2 ? "gpt2" : "llama"; }

nn::GPT2Config tiny_gpt2_config() {
  nn::GPT2Config c;
  c.vocab_size = kVocab;
  c.n_positions = kSeq;
  c.n_embd = 64;
  c.n_layer = kLayers;
  c.n_head = 4;
  return c;
}

nn::LlamaConfig tiny_llama_config() {
  nn::LlamaConfig c;
  c.vocab_size = kVocab;
  c.max_seq_len = kSeq;
  c.n_embd = 64;
  c.n_layer = kLayers;
  c.n_head = 8;
  c.n_kv_head = 4;
  c.intermediate_size = 128;
  return c;
}

std::shared_ptr<nn::CausalLM> tiny_model(Family f, DType dtype) {
  Generator gen(f == Family::kGPT2 ? 1234 : 4321);
  if (f == Family::kGPT2) {
    auto c = tiny_gpt2_config();
    c.dtype = dtype;
    return std::make_shared<nn::GPT2>(c, gen);
  }
  auto c = tiny_llama_config();
  c.dtype = dtype;
  return std::make_shared<nn::Llama>(c, gen);
}

Batch global_batch(int step, int64_t batch) {
  // A learnable stream: each row counts up by a row-specific stride mod vocab,
  // with a little noise, so the loss falls over a few steps.
  Generator gen(777 + static_cast<uint64_t>(step));
  Tensor noise = ops::randint(0, 4, {batch, kSeq + 1}, gen);
  const int64_t* nz = noise.data<int64_t>();
  Tensor idx = ops::zeros({batch, kSeq}, DType::i64), tgt = ops::zeros({batch, kSeq}, DType::i64);
  int64_t* pi = idx.data<int64_t>();
  int64_t* pt = tgt.data<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = (step * 13 + b * 7) % kVocab, stride = 1 + (b % 3);
    std::vector<int64_t> seq(kSeq + 1);
    for (int64_t t = 0; t <= kSeq; ++t) seq[t] = (start + t * stride + (nz[b * (kSeq + 1) + t] == 0 ? 1 : 0)) % kVocab;
    for (int64_t t = 0; t < kSeq; ++t) {
      pi[b * kSeq + t] = seq[t];
      pt[b * kSeq + t] = seq[t + 1];
    }
  }
  return {idx, tgt};
}

Batch rows(const Batch& b, int part, int parts) {
  const int64_t B = b.idx.size(0);
  LOOM_CHECK(B % parts == 0, "rows: batch ", B, " does not divide into ", parts, " parts");
  const int64_t n = B / parts;
  return {ops::contiguous(ops::slice(b.idx, 0, part * n, (part + 1) * n)),
          ops::contiguous(ops::slice(b.targets, 0, part * n, (part + 1) * n))};
}

const Reference& single_rank_reference(Family f, const TrainConfig& cfg, int blocks) {
  static std::map<std::string, Reference> cache;
  std::ostringstream key;
  key << family_name(f) << "/" << cfg.steps << "/" << cfg.lr << "/" << cfg.weight_decay << "/" << cfg.clip_norm << "/"
      << blocks;
  auto it = cache.find(key.str());
  if (it != cache.end()) return it->second;
  Reference ref;
  auto model = tiny_model(f);
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  for (int step = 0; step < cfg.steps; ++step) {
    Batch b = global_batch(step);
    opt.zero_grad();
    double loss_sum = 0;
    for (int r = 0; r < blocks; ++r) {
      Batch part = blocks == 1 ? b : rows(b, r, blocks);
      Tensor loss = model->loss(part.idx, part.targets);
      loss_sum += loss.item<double>();
      (blocks == 1 ? loss : loom::mul(loss, 1.0 / blocks)).backward();
    }
    ref.losses.push_back(loss_sum / blocks);
    ref.grad_norms.push_back(nn::clip_grad_norm_(model->parameters(), cfg.clip_norm));
    opt.step();
  }
  for (const auto& [name, t] : model->state_dict()) ref.params.insert(name, ops::clone(t));
  return cache.emplace(key.str(), std::move(ref)).first->second;
}

void expect_state_bit_equal(const nn::StateDict& got, const nn::StateDict& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    const Tensor& t = got.at(name);
    ASSERT_EQ(t.numel(), w.numel()) << name;
    const float* a = t.data<float>();
    const float* b = w.data<float>();
    int64_t differ = 0;
    for (int64_t i = 0; i < w.numel(); ++i) differ += a[i] != b[i];
    EXPECT_EQ(differ, 0) << name << ": elements that differ (bit for bit)";
  }
}

void expect_state_near(const nn::StateDict& got, const nn::StateDict& want, double rtol) {
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.contains(name)) << "missing tensor " << name;
    Tensor g = ops::to(ops::contiguous(got.at(name)), DType::f64);
    Tensor wv = ops::to(ops::contiguous(w), DType::f64);
    ASSERT_EQ(g.sizes(), wv.sizes()) << name;
    const double* pg = g.data<double>();
    const double* pw = wv.data<double>();
    const int64_t n = wv.numel();
    double mean_abs = 0;
    for (int64_t i = 0; i < n; ++i) mean_abs += std::abs(pw[i]);
    mean_abs /= std::max<int64_t>(n, 1);
    double worst = 0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i < n; ++i) {
      double excess = std::abs(pg[i] - pw[i]) / (std::abs(pw[i]) + mean_abs + 1e-30);
      if (excess > worst) {
        worst = excess;
        worst_i = i;
      }
    }
    EXPECT_LE(worst, rtol) << name << ": element " << worst_i << " is " << pg[worst_i] << ", single-rank has "
                           << pw[worst_i];
  }
}

void expect_values_near(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], rtol * std::abs(want[i])) << what << " at step " << i;
}

double adamw_step_bound(int t) {
  const nn::AdamWOptions o;
  const double r = o.beta1 * o.beta1 / o.beta2;
  double geometric = 0;
  for (int k = 0; k < t; ++k) geometric += std::pow(r, k);
  return (1 - o.beta1) / (1 - std::pow(o.beta1, t)) * std::sqrt((1 - std::pow(o.beta2, t)) / (1 - o.beta2)) *
         std::sqrt(geometric);
}

namespace {
// GPT-2's key biases (c_attn.bias, elements [C, 2C) of 3C): q · b_k is the same for every key of a query, so softmax
// ignores it and their exact gradient is 0.
bool is_key_bias(const std::string& name, int64_t numel, int64_t i) {
  const std::string suffix = "attn.c_attn.bias";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         i >= numel / 3 && i < 2 * numel / 3;
}
}  // namespace

void expect_state_near_reordered(const nn::StateDict& got, const nn::StateDict& want, const TrainConfig& cfg) {
  double step_bound = 0;  // the most two AdamW runs from the same start can differ in one element
  for (int t = 1; t <= cfg.steps; ++t) step_bound += 2 * cfg.lr * adamw_step_bound(t);
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.contains(name)) << "missing tensor " << name;
    Tensor g = ops::to(ops::contiguous(got.at(name)), DType::f64);
    Tensor wv = ops::to(ops::contiguous(w), DType::f64);
    ASSERT_EQ(g.sizes(), wv.sizes()) << name;
    const double* pg = g.data<double>();
    const double* pw = wv.data<double>();
    const int64_t n = wv.numel();
    double diff2 = 0, ref2 = 0, worst = 0;
    int64_t worst_i = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = std::abs(pg[i] - pw[i]);
      if (d > worst) {
        worst = d;
        worst_i = i;
      }
      if (is_key_bias(name, n, i)) continue;
      diff2 += d * d;
      ref2 += pw[i] * pw[i];
    }
    EXPECT_LE(worst, step_bound) << name << ": element " << worst_i << " is " << pg[worst_i] << ", single-rank has "
                                 << pw[worst_i] << " — farther apart than any two AdamW runs of " << cfg.steps
                                 << " steps at lr " << cfg.lr << " can be";
    const double rel = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
    EXPECT_LE(rel, 1e-4) << name << ": relative L2 difference " << rel
                         << " from single-rank training (GPT-2 key biases left out)";
  }
}

void expect_matches_single_rank(const std::function<Run(bool rank_ordered)>& train, bool already_rank_ordered,
                                const Reference& whole, const Reference& params_ref) {
  Run got = train(already_rank_ordered);
  expect_values_near(got.losses, whole.losses, 1e-5, "loss");
  expect_values_near(got.grad_norms, whole.grad_norms, 1e-5, "grad norm");
  if (world()->size() > 2 && !already_rank_ordered) {
    {
      SCOPED_TRACE("default reduction (the backend's ring)");
      expect_state_near_reordered(got.params, params_ref.params);
    }
    got = train(true);
    expect_values_near(got.losses, whole.losses, 1e-5, "loss (rank-ordered reduction)");
    expect_values_near(got.grad_norms, whole.grad_norms, 1e-5, "grad norm (rank-ordered reduction)");
  }
  expect_state_near(got.params, params_ref.params, 1e-5);
}

double group_mean(collectives::ProcessGroup& g, double v) {
  Tensor t = ops::full({1}, v, DType::f64);
  g.allreduce(t, {collectives::ReduceOp::kAvg})->wait();
  return t.item<double>();
}

}  // namespace loom::ptest
