#include "tests/parallel/tp_reference.h"

#include <cmath>
#include <limits>
#include <map>
#include <tuple>

#include "autograd/functions.h"
#include "nn/attention.h"
#include "nn/clip_grad.h"
#include "nn/mlp.h"

namespace loom::ptest {

namespace {

using Grads = std::vector<Tensor>;

Generator& scratch() {
  static Generator gen(0);
  return gen;
}

/// W aliases of x, one per replayed rank; backward adds their gradients in rank order (copy_to_tp's all-reduce).
std::vector<Tensor> copy_to_ranks(const Tensor& x, int W) {
  if (W == 1) return {x};  // copy_to_tp is the identity on one rank
  std::vector<Tensor> outs;
  for (int r = 0; r < W; ++r) outs.push_back(loom::detach(x));
  autograd::record("ReplayCopyToTp", {x}, outs, [W](const Grads& g) {
    Tensor acc = ops::contiguous(g[0]);
    for (int r = 1; r < W; ++r) acc = ops::add(acc, ops::contiguous(g[r]));
    return Grads{acc};
  });
  return outs;
}

/// The parts added in rank order (reduce_from_tp's all-reduce); backward hands every part the gradient.
Tensor sum_over_ranks(const std::vector<Tensor>& parts) {
  if (parts.size() == 1) return parts[0];
  Tensor acc = ops::contiguous(parts[0]);
  for (size_t r = 1; r < parts.size(); ++r) acc = ops::add(acc, ops::contiguous(parts[r]));
  const size_t n = parts.size();
  autograd::record("ReplayReduceFromTp", parts, {acc}, [n](const Grads& g) { return Grads(n, g[0]); });
  return acc;
}

struct Segment {
  int64_t local_start, global_start, length;
};

/// Rank r's rows of `parts` consecutive parts, each split evenly over W (as ColumnParallelLinear does).
std::vector<Segment> rank_segments(const std::vector<int64_t>& parts, int r, int W) {
  std::vector<Segment> segs;
  int64_t global = 0, local = 0;
  for (int64_t p : parts) {
    segs.push_back({local, global + r * (p / W), p / W});
    local += p / W;
    global += p;
  }
  return segs;
}

/// A column-parallel layer's W ranks on one rank: each rank's rows of the weight (and bias) as its own contiguous
/// matrix, its own product with its copy of x, the outputs put back in global column order.
class ReplayColumn : public nn::Linear {
 public:
  ReplayColumn(const nn::Linear& full, int W, std::vector<int64_t> parts)
      : nn::Linear(full.in_features, full.out_features,
                   nn::LinearOptions{full.bias.defined(), 0.0, full.weight.dtype()}, scratch()),
        W_(W) {
    tie_weight(full.weight);
    if (full.bias.defined()) bias = register_parameter("bias", full.bias);
    if (parts.empty()) parts = {out_features};
    for (int r = 0; r < W; ++r) segs_.push_back(rank_segments(parts, r, W));
  }
  Tensor forward(const Tensor& x) override {
    std::vector<Tensor> xs = copy_to_ranks(x, W_);
    std::vector<Tensor> ys;
    for (int r = 0; r < W_; ++r)
      ys.push_back(loom::linear(xs[r], rows(weight, segs_[r]), bias.defined() ? rows(bias, segs_[r]) : Tensor()));
    const int64_t d = x.dim() - 1;
    std::vector<Tensor> pieces;
    for (size_t p = 0; p < segs_[0].size(); ++p)
      for (int r = 0; r < W_; ++r)
        pieces.push_back(loom::narrow(ys[r], d, segs_[r][p].local_start, segs_[r][p].length));
    return pieces.size() == 1 ? pieces[0] : loom::cat(pieces, d);
  }

 private:
  static Tensor rows(const Tensor& t, const std::vector<Segment>& segs) {
    std::vector<Tensor> pieces;
    for (const auto& s : segs) pieces.push_back(loom::narrow(t, 0, s.global_start, s.length));
    return loom::contiguous(pieces.size() == 1 ? pieces[0] : loom::cat(pieces, 0));
  }
  int W_;
  std::vector<std::vector<Segment>> segs_;
};

/// A row-parallel layer's W ranks on one rank: rank r's input columns times its weight columns, the partial products
/// added in rank order, then the bias.
class ReplayRow : public nn::Linear {
 public:
  ReplayRow(const nn::Linear& full, int W)
      : nn::Linear(full.in_features, full.out_features,
                   nn::LinearOptions{full.bias.defined(), 0.0, full.weight.dtype()}, scratch()),
        W_(W) {
    tie_weight(full.weight);
    if (full.bias.defined()) bias = register_parameter("bias", full.bias);
  }
  Tensor forward(const Tensor& x) override {
    const int64_t d = x.dim() - 1, k = in_features / W_;
    std::vector<Tensor> parts;
    for (int r = 0; r < W_; ++r)
      parts.push_back(loom::linear(loom::contiguous(loom::narrow(x, d, r * k, k)),
                                   loom::contiguous(loom::narrow(weight, 1, r * k, k))));
    Tensor y = sum_over_ranks(parts);
    return bias.defined() ? loom::add(y, bias) : y;
  }

 private:
  int W_;
};

/// vocab_parallel_cross_entropy's arithmetic over W column blocks of the logits (N, V), on one rank.
Tensor replay_vocab_cross_entropy(const Tensor& logits, const Tensor& targets, int W) {
  if (W == 1) return loom::cross_entropy(logits, targets);
  constexpr int64_t kIgnore = -100;
  const int64_t N = logits.size(0), Vl = logits.size(1) / W;
  std::vector<Tensor> blocks, xs;
  for (int r = 0; r < W; ++r) {
    blocks.push_back(loom::contiguous(loom::narrow(logits, 1, r * Vl, Vl)));
    xs.push_back(ops::contiguous(blocks.back()));
  }
  const std::vector<int64_t> tg = targets.to_vector<int64_t>();
  int64_t count = 0;
  for (int64_t t : tg) count += t != kIgnore;
  std::vector<float> m(N, -std::numeric_limits<float>::infinity());
  for (int r = 0; r < W; ++r)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < Vl; ++j) m[i] = std::max(m[i], xs[r].data<float>()[i * Vl + j]);
  std::vector<double> st(2 * N, 0.0);  // sums of exponentials, then target logits, added over ranks in rank order
  for (int r = 0; r < W; ++r) {
    const float* xp = xs[r].data<float>();
    for (int64_t i = 0; i < N; ++i) {
      double s = 0, t = 0;
      for (int64_t j = 0; j < Vl; ++j) s += std::exp(static_cast<double>(xp[i * Vl + j]) - m[i]);
      const int64_t c = tg[i] - r * Vl;
      if (tg[i] != kIgnore && c >= 0 && c < Vl) t = xp[i * Vl + c];
      st[i] = r == 0 ? s : st[i] + s;
      st[N + i] = r == 0 ? t : st[N + i] + t;
    }
  }
  auto lse = std::make_shared<std::vector<double>>(N);
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    (*lse)[i] = static_cast<double>(m[i]) + std::log(st[i]);
    if (tg[i] != kIgnore) total += (*lse)[i] - st[N + i];
  }
  Tensor loss = ops::full({}, total / static_cast<double>(count), DType::f32);
  autograd::record("ReplayVocabParallelCrossEntropy", blocks, {loss}, [xs, tg, lse, count, N, Vl, W](const Grads& g) {
    const double gl = g[0].item() / static_cast<double>(count);
    Grads out;
    for (int r = 0; r < W; ++r) {
      Tensor dx = zeros({N, Vl}, DType::f32);
      float* dp = dx.data<float>();
      const float* xq = xs[r].data<float>();
      for (int64_t i = 0; i < N; ++i) {
        if (tg[i] == kIgnore) continue;
        for (int64_t j = 0; j < Vl; ++j)
          dp[i * Vl + j] = static_cast<float>(gl * std::exp(static_cast<double>(xq[i * Vl + j]) - (*lse)[i]));
        const int64_t c = tg[i] - r * Vl;
        if (c >= 0 && c < Vl) dp[i * Vl + c] -= static_cast<float>(gl);
      }
      out.push_back(dx);
    }
    return out;
  });
  return loss;
}

void replay_attention(nn::CausalSelfAttention& a, int W) {
  const int64_t H = a.n_head(), Hkv = a.n_kv_head(), D = a.head_dim();
  if (a.c_attn) {
    a.c_attn = a.register_module(
        "c_attn", std::make_shared<ReplayColumn>(*a.c_attn, W, std::vector<int64_t>{H * D, Hkv * D, Hkv * D}));
    a.c_proj = a.register_module("c_proj", std::make_shared<ReplayRow>(*a.c_proj, W));
  } else {
    a.q_proj = a.register_module("q_proj", std::make_shared<ReplayColumn>(*a.q_proj, W, std::vector<int64_t>{}));
    a.k_proj = a.register_module("k_proj", std::make_shared<ReplayColumn>(*a.k_proj, W, std::vector<int64_t>{}));
    a.v_proj = a.register_module("v_proj", std::make_shared<ReplayColumn>(*a.v_proj, W, std::vector<int64_t>{}));
    a.o_proj = a.register_module("o_proj", std::make_shared<ReplayRow>(*a.o_proj, W));
  }
}

void replay_mlp(nn::Module& mlp, int W) {
  if (auto* m = dynamic_cast<nn::GeluMLP*>(&mlp)) {
    m->c_fc = m->register_module("c_fc", std::make_shared<ReplayColumn>(*m->c_fc, W, std::vector<int64_t>{}));
    m->c_proj = m->register_module("c_proj", std::make_shared<ReplayRow>(*m->c_proj, W));
  } else {
    auto& s = dynamic_cast<nn::SwiGLUMLP&>(mlp);
    s.gate_proj =
        s.register_module("gate_proj", std::make_shared<ReplayColumn>(*s.gate_proj, W, std::vector<int64_t>{}));
    s.up_proj = s.register_module("up_proj", std::make_shared<ReplayColumn>(*s.up_proj, W, std::vector<int64_t>{}));
    s.down_proj = s.register_module("down_proj", std::make_shared<ReplayRow>(*s.down_proj, W));
  }
}

}  // namespace

std::shared_ptr<nn::CausalLM> tp_replay_model(Family f, int W) {
  auto model = tiny_model(f);
  if (auto* g = dynamic_cast<nn::GPT2*>(model.get())) {
    for (auto& block : g->transformer->blocks) {
      replay_attention(*block->attn, W);
      replay_mlp(*block->mlp, W);
    }
    g->lm_head = g->register_module("lm_head", std::make_shared<ReplayColumn>(*g->lm_head, W, std::vector<int64_t>{}));
    g->register_module("transformer", g->transformer);
  } else {
    auto& l = dynamic_cast<nn::Llama&>(*model);
    for (auto& block : l.model->blocks) {
      replay_attention(*block->attn, W);
      replay_mlp(*block->mlp, W);
    }
    l.lm_head = l.register_module("lm_head", std::make_shared<ReplayColumn>(*l.lm_head, W, std::vector<int64_t>{}));
    l.register_module("model", l.model);
  }
  model->set_loss_function(
      [W](const Tensor& logits, const Tensor& targets) { return replay_vocab_cross_entropy(logits, targets, W); });
  return model;
}

const Reference& tp_order_reference(Family f, int W, int parts, const TrainConfig& cfg) {
  static std::map<std::tuple<int, int, int>, Reference> cache;
  auto key = std::make_tuple(static_cast<int>(f), W, parts);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  Reference ref;
  auto model = tp_replay_model(f, W);
  nn::AdamW opt(nn::weight_decay_groups(model->named_parameters(), cfg.lr, cfg.weight_decay), nn::AdamWOptions{});
  for (int step = 0; step < cfg.steps; ++step) {
    Batch b = global_batch(step);
    opt.zero_grad();
    double loss_sum = 0;
    for (int p = 0; p < parts; ++p) {
      Batch part = rows(b, p, parts);
      Tensor loss = model->loss(part.idx, part.targets);
      loss_sum += loss.item<double>();
      (parts == 1 ? loss : loom::mul(loss, 1.0 / parts)).backward();
    }
    ref.losses.push_back(loss_sum / parts);
    ref.grad_norms.push_back(nn::clip_grad_norm_(model->parameters(), cfg.clip_norm));
    opt.step();
  }
  for (const auto& [name, t] : model->state_dict()) ref.params.insert(name, ops::clone(t));
  return cache.emplace(key, std::move(ref)).first->second;
}

}  // namespace loom::ptest
