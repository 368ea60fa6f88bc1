#include "nn/generation.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/autograd.h"
#include "tensor/ops.h"

namespace loom::nn {

void SamplingOptions::validate() const {
  LOOM_CHECK(std::isfinite(temperature) && temperature >= 0, "sampling: temperature must be >= 0 (0: greedy), got ",
             temperature);
  LOOM_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0: no limit), got ", top_k);
  LOOM_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1] (1: no limit), got ", top_p);
}

void GenerateOptions::validate() const {
  LOOM_CHECK(max_new_tokens >= 1, "generate: max_new_tokens must be >= 1, got ", max_new_tokens);
  sampling.validate();
}

namespace {

bool greedy(const SamplingOptions& o) { return o.temperature == 0 || o.top_k == 1; }

/// The candidates of one row with their unnormalised probabilities, most likely first, cut to top_k and top_p.
struct Candidates {
  std::vector<int64_t> ids;
  std::vector<double> weights;  // exp((logit - max) / temperature), > 0
};

Candidates candidates(const float* logits, int64_t V, const SamplingOptions& o) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) {
    LOOM_CHECK(!std::isnan(logits[i]), "sample: logit of token ", i, " is NaN");
    mx = std::max(mx, logits[i]);
  }
  LOOM_CHECK(mx > -std::numeric_limits<float>::infinity(), "sample: every logit is -inf; no token can be drawn");
  Candidates c;
  if (greedy(o)) {
    c.ids.push_back(std::max_element(logits, logits + V) - logits);  // the first maximum: the lowest id
    c.weights.push_back(1.0);
    return c;
  }
  std::vector<int64_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), int64_t{0});
  auto more_likely = [&](int64_t a, int64_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int64_t k = o.top_k > 0 ? std::min(o.top_k, V) : V;
  if (k < V) {
    std::partial_sort(order.begin(), order.begin() + k, order.end(), more_likely);
    order.resize(static_cast<size_t>(k));
  } else {
    std::sort(order.begin(), order.end(), more_likely);
  }
  double total = 0;
  for (int64_t id : order) {
    const double w = std::exp((static_cast<double>(logits[id]) - mx) / o.temperature);
    if (!(w > 0)) break;  // sorted: the rest are as unlikely (underflow or -inf)
    c.ids.push_back(id);
    c.weights.push_back(w);
    total += w;
  }
  if (o.top_p < 1) {
    double cum = 0;
    size_t keep = 0;
    while (keep < c.ids.size()) {
      cum += c.weights[keep++];
      if (cum >= o.top_p * total) break;  // the smallest prefix reaching top_p (at least one token)
    }
    c.ids.resize(keep);
    c.weights.resize(keep);
  }
  return c;
}

}  // namespace

std::vector<int64_t> allowed_tokens(const float* logits, int64_t vocab, const SamplingOptions& opts) {
  opts.validate();
  return candidates(logits, vocab, opts).ids;
}

std::vector<int64_t> sample(const Tensor& logits, const SamplingOptions& opts, Generator& gen) {
  opts.validate();
  LOOM_CHECK(logits.dim() == 2 && logits.size(1) > 0, "sample: expected logits (B, V), got ",
             shape_str(logits.sizes()));
  LOOM_CHECK(is_floating(logits.dtype()), "sample: expected floating logits, got ", dtype_name(logits.dtype()));
  Tensor host = ops::contiguous(ops::to(ops::to(logits, kCPU), DType::f32));
  const int64_t B = host.size(0), V = host.size(1);
  const float* p = host.data<float>();
  std::vector<int64_t> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const Candidates c = candidates(p + b * V, V, opts);
    if (greedy(opts)) {
      out[static_cast<size_t>(b)] = c.ids[0];
      continue;
    }
    // One uniform double per row from the Philox stream.
    const uint64_t block = gen.advance(1);
    const auto r = philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}, gen.seed());
    const double u = uints_to_unit_double(r[0], r[1]);
    const double total = std::accumulate(c.weights.begin(), c.weights.end(), 0.0);
    const double target = u * total;
    double cum = 0;
    int64_t pick = c.ids.back();  // rounding can leave target at the very end: the last candidate
    for (size_t i = 0; i < c.ids.size(); ++i) {
      cum += c.weights[i];
      if (target < cum) {
        pick = c.ids[i];
        break;
      }
    }
    out[static_cast<size_t>(b)] = pick;
  }
  return out;
}

std::vector<std::vector<int64_t>> generate(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opts, const TokenCallback& on_step) {
  opts.validate();
  const int64_t B = static_cast<int64_t>(prompts.size());
  LOOM_CHECK(B > 0, "generate: no prompts");
  const int64_t V = model.vocab_size();
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<size_t>(b)];
    LOOM_CHECK(!p.empty(), "generate: prompt ", b, " is empty (start it with a token such as end-of-text)");
    for (int64_t t : p)
      LOOM_CHECK(t >= 0 && t < V, "generate: prompt ", b, " holds token ", t, ", outside the model's vocabulary of ",
                 V);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  const int64_t context = model.max_positions();
  LOOM_CHECK(longest + opts.max_new_tokens <= context, "generate: the longest prompt (", longest,
             " tokens) plus max_new_tokens (", opts.max_new_tokens, ") exceeds the model's context of ", context,
             " positions; shorten the prompt or generate fewer tokens");
  Device device = kCPU;
  for (const auto& t : model.parameters()) {
    device = t.device();
    break;
  }
  const bool was_training = model.is_training();
  model.eval();
  autograd::NoGradGuard no_grad;
  Generator gen(opts.seed);

  // Right-padded (B, L) ids of the given rows, with pad tokens 0 (never attended to: they come after the real ones).
  auto batch = [&](const std::vector<std::vector<int64_t>>& rows, int64_t from) {
    int64_t L = 0;
    for (const auto& r : rows) L = std::max<int64_t>(L, static_cast<int64_t>(r.size()) - from);
    std::vector<int64_t> ids(static_cast<size_t>(B * L), 0);
    std::vector<int64_t> n(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      const auto& r = rows[static_cast<size_t>(b)];
      n[static_cast<size_t>(b)] = static_cast<int64_t>(r.size()) - from;
      std::copy(r.begin() + from, r.end(), ids.begin() + b * L);
    }
    return std::make_pair(ops::to(from_vector<int64_t>(ids, {B, L}), device), n);
  };

  std::vector<std::vector<int64_t>> seqs = prompts, out(static_cast<size_t>(B));
  std::vector<bool> running(static_cast<size_t>(B), true);
  std::optional<InferenceCache> cache;
  if (opts.use_cache) cache.emplace(model.make_cache(B, longest + opts.max_new_tokens));
  try {
    for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
      Tensor logits;
      if (!opts.use_cache) {
        auto [idx, n] = batch(seqs, 0);
        logits = model.next_token_logits(idx, n);
      } else if (step == 0) {
        auto [idx, n] = batch(seqs, 0);  // prefill: every prompt token
        logits = model.next_token_logits(idx, n, &*cache);
      } else {
        std::vector<int64_t> last(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b) last[static_cast<size_t>(b)] = seqs[static_cast<size_t>(b)].back();
        logits = model.next_token_logits(ops::to(from_vector<int64_t>(last, {B, 1}), device),
                                         std::vector<int64_t>(static_cast<size_t>(B), 1), &*cache);
      }
      if (opts.gather_logits) logits = opts.gather_logits(logits);
      if (opts.on_logits) opts.on_logits(logits);
      const std::vector<int64_t> tok = sample(logits, opts.sampling, gen);
      const std::vector<bool> ran = running;
      for (int64_t b = 0; b < B; ++b) {
        const auto i = static_cast<size_t>(b);
        seqs[i].push_back(tok[i]);  // stopped sequences too: the batch keeps one shape
        if (!running[i]) continue;
        out[i].push_back(tok[i]);
        if (opts.stop_token && tok[i] == *opts.stop_token) running[i] = false;
      }
      if (on_step) on_step(tok, ran);
      if (std::none_of(running.begin(), running.end(), [](bool r) { return r; })) break;
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  return out;
}

}  // namespace loom::nn
