#include "trainer/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "nn/dropout.h"
#include "tensor/error.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace loom::trainer {

using nlohmann::json;

// ---------------------------------------------------------------- factories

OptimizerFactory adamw(nn::AdamWOptions opts) {
  return [opts](const ParamGroupsFn& groups) {
    return std::make_unique<nn::AdamW>(groups(opts.lr, opts.weight_decay), opts);
  };
}

OptimizerFactory sgd(nn::SGDOptions opts) {
  return [opts](const ParamGroupsFn& groups) {
    return std::make_unique<nn::SGD>(groups(opts.lr, opts.weight_decay), opts);
  };
}

ScheduleFactory warmup_cosine(double max_lr, double min_lr, int64_t warmup_steps) {
  return [=](nn::Optimizer& opt, int64_t total_steps) -> std::unique_ptr<nn::LRScheduler> {
    return std::make_unique<nn::WarmupCosineLR>(opt, max_lr, min_lr, std::min(warmup_steps, total_steps),
                                                std::max<int64_t>(total_steps, 1));
  };
}

LossFn cross_entropy_loss() {
  return [](const Tensor& outputs, const Tensor& targets) { return loom::cross_entropy(outputs, targets); };
}

// ---------------------------------------------------------------- Trainer

namespace {
/// JSON has no infinities or NaN: those go as strings ("inf", "-inf", "nan").
json number_to_json(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}
double json_to_number(const json& j) {
  if (j.is_number()) return j.get<double>();
  const std::string s = j.get<std::string>();
  if (s == "inf") return INFINITY;
  if (s == "-inf") return -INFINITY;
  return NAN;
}
}  // namespace

Trainer::Trainer(std::shared_ptr<nn::Module> model, std::function<Tensor(const Tensor&)> forward, Strategy strategy)
    : model_(std::move(model)), forward_(std::move(forward)), strategy_(std::move(strategy)) {
  LOOM_CHECK(model_ != nullptr && forward_, "Trainer: model and forward must be given");
  if (strategy_.kind == StrategyKind::kSingleDevice) {
    // Training stays on this process; the one-rank group backs checkpoints and keeps the code path uniform.
    group_ = std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0, 1, "gloo");
  } else {
    group_ = strategy_.group ? strategy_.group : world_group();
  }
  if (strategy_.kind == StrategyKind::kMirrored) {
    ddp_ = std::make_unique<parallel::DistributedDataParallel>(model_, group_, strategy_.ddp);
  } else if (strategy_.kind == StrategyKind::kFullyShard) {
    std::vector<std::shared_ptr<nn::Module>> units;
    for (auto& c : model_->children())
      if (c->num_parameters() > 0) units.push_back(c);
    fsdp_ = std::make_unique<parallel::FullyShard>(model_, units, group_, strategy_.fsdp);
  }
}

Trainer::~Trainer() = default;

ParamGroupsFn Trainer::param_groups_fn() {
  return [this](double lr, double wd) {
    return fsdp_ ? fsdp_->param_groups(lr, wd) : nn::weight_decay_groups(model_->named_parameters(), lr, wd);
  };
}

void Trainer::compile(CompileOptions opts) {
  LOOM_CHECK(static_cast<bool>(opts.optimizer), "Trainer::compile: an optimizer is required (e.g. trainer::adamw({}))");
  LOOM_CHECK(opts.clip_grad_norm >= 0, "Trainer::compile: clip_grad_norm must be >= 0, got ", opts.clip_grad_norm);
  if (!opts.loss) opts.loss = cross_entropy_loss();
  compile_ = std::move(opts);
  opt_ = compile_.optimizer(param_groups_fn());
  LOOM_CHECK(opt_ != nullptr && !opt_->param_groups().empty(), "Trainer::compile: the optimizer factory returned none");
  base_lr_ = opt_->param_groups()[0].lr;
  sched_.reset();
  lr_scale_ = 1;
}

double Trainer::learning_rate() const {
  LOOM_CHECK(opt_ != nullptr, "Trainer::learning_rate: call compile() first");
  return opt_->param_groups()[0].lr;
}

void Trainer::apply_lr() {
  if (!opt_) return;
  opt_->set_lr((sched_ ? sched_->last_lr() : base_lr_) * lr_scale_);
}

void Trainer::set_learning_rate(double lr) {
  LOOM_CHECK(opt_ != nullptr, "Trainer::set_learning_rate: call compile() first");
  const double base = sched_ ? sched_->last_lr() : base_lr_;
  if (base > 0) {
    lr_scale_ = lr / base;
    apply_lr();
  } else {
    opt_->set_lr(lr);
  }
}

std::vector<Tensor> Trainer::get_weights() const {
  std::vector<Tensor> out;
  for (auto& p : fsdp_ ? fsdp_->parameters() : model_->parameters()) out.push_back(ops::clone(p));
  for (auto& b : model_->buffers()) out.push_back(ops::clone(b));
  return out;
}

void Trainer::set_weights(const std::vector<Tensor>& weights) {
  std::vector<Tensor> dst = fsdp_ ? fsdp_->parameters() : model_->parameters();
  for (auto& b : model_->buffers()) dst.push_back(b);
  LOOM_CHECK(weights.size() == dst.size(), "Trainer::set_weights: ", weights.size(), " tensors given, the model has ",
             dst.size(), " (use get_weights())");
  autograd::NoGradGuard no_grad;
  for (size_t i = 0; i < dst.size(); ++i) {
    LOOM_CHECK(weights[i].sizes() == dst[i].sizes(), "Trainer::set_weights: tensor ", i, " has shape ",
               shape_str(weights[i].sizes()), ", the model's ", shape_str(dst[i].sizes()));
    ops::copy_(dst[i], weights[i]);
    dst[i].bump_version();
  }
}

checkpoint::Target Trainer::target() {
  checkpoint::Target t;
  if (fsdp_) {
    t.fsdp = fsdp_.get();
  } else {
    t.module = model_.get();
  }
  t.optimizer = opt_.get();
  t.rngs["default"] = &default_generator();
  t.coords.dp_rank = rank();
  t.coords.dp_size = world_size();
  return t;
}

std::string Trainer::save_checkpoint(const std::string& root, int keep_last) {
  LOOM_CHECK(opt_ != nullptr, "Trainer::save_checkpoint: call compile() first");
  auto& ck = checkpointers_[root];
  if (!ck) {
    checkpoint::CheckpointOptions o;
    o.keep_last = keep_last;
    ck = std::make_unique<checkpoint::Checkpointer>(root, group_, o);
  }
  json state;
  state["epoch"] = epoch_;
  state["step"] = step_;
  state["lr_scale"] = lr_scale_;
  state["history"] = json::parse(history_.to_json());
  json cbs = json::object();
  for (size_t i = 0; i < callbacks_.size(); ++i) {
    auto s = callbacks_[i]->state();
    json cj = json::object();
    for (auto& [k, v] : s) cj[k] = number_to_json(v);
    if (!s.empty()) cbs[std::to_string(i)] = cj;
  }
  state["callbacks"] = cbs;
  checkpoint::TrainState ts;
  ts.step = epoch_;  // directories are named by epochs completed: step_00000003 holds the state after epoch 3
  ts.config = state.dump();
  return ck->save(target(), ts);
}

bool Trainer::load_checkpoint(const std::string& root) {
  LOOM_CHECK(opt_ != nullptr, "Trainer::load_checkpoint: call compile() first");
  if (checkpoint::latest_checkpoint(root).empty()) return false;
  auto& ck = checkpointers_[root];
  if (!ck) ck = std::make_unique<checkpoint::Checkpointer>(root, group_);
  checkpoint::TrainState ts = ck->load(target());
  json state;
  try {
    state = json::parse(ts.config);
    epoch_ = state.at("epoch").get<int64_t>();
    step_ = state.at("step").get<int64_t>();
    lr_scale_ = state.at("lr_scale").get<double>();
    history_ = History::from_json(state.at("history").dump());
    loaded_callback_states_.clear();
    for (auto& [k, v] : state.at("callbacks").items())
      for (auto& [name, value] : v.items()) loaded_callback_states_[k][name] = json_to_number(value);
  } catch (const json::exception& e) {
    throw IoError("Trainer::load_checkpoint: " + root + ": the checkpoint's trainer state is not from Trainer (" +
                  e.what() + ")");
  }
  resumed_ = true;
  if (sched_) sched_->load_state_dict({step_});
  apply_lr();
  return true;
}

std::string Trainer::summary(const Shape& input_shape) { return model_->summary(input_shape, forward_); }

void Trainer::reduce_metrics(const std::vector<Metric*>& metrics) {
  if (world_size() == 1) return;
  std::vector<double> v;
  for (auto* m : metrics) v.push_back(m->total), v.push_back(m->count);
  Tensor t = from_vector(v, {static_cast<int64_t>(v.size())});
  collectives::AllreduceOptions o;
  o.rank_ordered = true;  // the same bits on every rank
  group_->allreduce(t, o)->wait();
  auto r = t.to_vector<double>();
  for (size_t i = 0; i < metrics.size(); ++i) metrics[i]->total = r[2 * i], metrics[i]->count = r[2 * i + 1];
}

void Trainer::train_step(const data::InMemoryDataset& train, const data::Shard& shard, std::vector<Metric*>& metrics) {
  data::Batch batch = train.gather(shard.indices);
  Tensor out;
  {
    // Dropout draws the mask bits of these rows of the global batch, as one rank training on it would.
    std::optional<nn::DropoutRowShard> rows;
    if (world_size() > 1) rows.emplace(shard.row_begin, shard.global_rows);
    out = forward_(batch.x);
  }
  Tensor loss = compile_.loss(out, batch.y);
  LOOM_CHECK(loss.numel() == 1, "Trainer: the loss function must return one value, got shape ",
             shape_str(loss.sizes()));
  // Gradients are averaged over the ranks: weight this rank's mean by its share of the global batch, so the average
  // is the mean over the whole global batch even when the ranks' parts differ in size.
  Tensor objective = loss;
  const double local_n = static_cast<double>(shard.indices.size());
  const double w = local_n * world_size() / static_cast<double>(shard.global_rows);
  if (w != 1.0) objective = loom::mul(loss, w);
  if (fsdp_) {
    fsdp_->zero_grad();
  } else {
    opt_->zero_grad();
  }
  objective.backward();
  if (compile_.clip_grad_norm > 0) {
    if (fsdp_) {
      fsdp_->clip_grad_norm_(compile_.clip_grad_norm);
    } else {
      nn::clip_grad_norm_(model_->parameters(), compile_.clip_grad_norm);  // DDP: the same averaged grads everywhere
    }
  }
  if (fsdp_) {
    fsdp_->step(*opt_);
  } else if (ddp_) {
    ddp_->step(*opt_);
  } else {
    opt_->step();
  }
  ++step_;
  if (sched_) sched_->step();
  apply_lr();
  const double lv = loss.item();
  Tensor o = loom::detach(out);
  for (auto* m : metrics) m->update(o, batch.y, lv);
}

History Trainer::fit(const data::InMemoryDataset& train, int64_t epochs, const data::InMemoryDataset* validation_data,
                     std::vector<std::shared_ptr<Callback>> callbacks, const FitOptions& opts) {
  LOOM_CHECK(opt_ != nullptr, "Trainer::fit: call compile() first");
  LOOM_CHECK(epochs >= 0, "Trainer::fit: epochs must be >= 0, got ", epochs);
  LOOM_CHECK(train.size() > 0, "Trainer::fit: the training data is empty");
  data::EpochPlan plan;
  plan.global_batch = opts.batch_size;
  plan.shuffle = opts.shuffle;
  plan.seed = opts.seed;
  plan.rank = rank();
  plan.world_size = world_size();
  steps_per_epoch_ = static_cast<int64_t>(data::epoch_shards(train.size(), 0, plan).size());
  LOOM_CHECK(steps_per_epoch_ > 0, "Trainer::fit: ", train.size(), " training rows give no batch of ", opts.batch_size,
             " over ", world_size(), " ranks");
  epochs_ = epochs;
  if (compile_.schedule) sched_ = compile_.schedule(*opt_, epochs * steps_per_epoch_);

  callbacks_ = std::move(callbacks);
  if (opts.verbose > 0) callbacks_.push_back(std::make_shared<ProgressBar>());
  for (auto& cb : callbacks_) cb->set_trainer(this);
  stop_training = false;

  Logs logs;
  for (auto& cb : callbacks_) cb->on_train_begin(logs);  // ModelCheckpoint may resume here
  if (!resumed_) {
    epoch_ = 0;
    step_ = 0;
    lr_scale_ = 1;
    history_ = History{};
  }
  resumed_ = false;
  for (size_t i = 0; i < callbacks_.size(); ++i)
    if (auto it = loaded_callback_states_.find(std::to_string(i)); it != loaded_callback_states_.end())
      callbacks_[i]->load_state(it->second);
  loaded_callback_states_.clear();
  if (sched_) sched_->load_state_dict({step_});
  apply_lr();

  std::vector<Metric*> metrics{&train_loss_};
  for (auto& m : compile_.metrics) metrics.push_back(m.get());
  const int64_t val_bs = opts.validation_batch_size > 0 ? opts.validation_batch_size : opts.batch_size;
  for (int64_t e = epoch_; e < epochs && !stop_training; ++e) {
    logs.clear();
    for (auto& cb : callbacks_) cb->on_epoch_begin(e, logs);
    const auto shards = data::epoch_shards(train.size(), e, plan);
    for (auto* m : metrics) m->reset();
    model_->train();
    for (size_t b = 0; b < shards.size(); ++b) {
      Logs blogs;
      for (auto& cb : callbacks_) cb->on_batch_begin(static_cast<int64_t>(b), blogs);
      train_step(train, shards[b], metrics);
      for (auto* m : metrics) blogs[m->name()] = m->result();
      for (auto& cb : callbacks_) cb->on_batch_end(static_cast<int64_t>(b), blogs);
    }
    reduce_metrics(metrics);
    for (auto* m : metrics) logs[m->name()] = m->result();
    if (validation_data) {
      for (auto& [k, v] : evaluate(*validation_data, val_bs)) logs["val_" + k] = v;
    }
    logs["learning_rate"] = learning_rate();
    epoch_ = e + 1;
    after_epoch_.clear();
    for (auto& cb : callbacks_) cb->on_epoch_end(e, logs);
    history_.epoch.push_back(e);
    for (auto& [k, v] : logs) history_.history[k].push_back(v);
    for (auto& fn : after_epoch_) fn();
    after_epoch_.clear();
  }
  for (auto& cb : callbacks_) cb->on_train_end(logs);
  return history_;
}

Logs Trainer::evaluate(const data::InMemoryDataset& data, int64_t batch_size) {
  LOOM_CHECK(compile_.loss || opt_, "Trainer::evaluate: call compile() first");
  LOOM_CHECK(data.size() > 0, "Trainer::evaluate: the data is empty");
  data::EpochPlan plan;
  plan.global_batch = std::max<int64_t>(batch_size, world_size());
  plan.shuffle = false;
  plan.rank = rank();
  plan.world_size = world_size();
  const auto shards = data::epoch_shards(data.size(), 0, plan, /*for_training=*/false);
  MeanLoss loss_metric;
  std::vector<std::unique_ptr<Metric>> owned;
  std::vector<Metric*> metrics{&loss_metric};
  for (auto& m : compile_.metrics) {
    m->reset();
    metrics.push_back(m.get());
  }
  const bool was_training = model_->is_training();
  model_->eval();
  {
    autograd::NoGradGuard no_grad;
    for (const auto& s : shards) {
      if (s.indices.empty()) {
        // Under fully_sharded every rank must run every forward (its all-gathers): run one row, count nothing.
        if (fsdp_) forward_(data.gather({0}).x);
        continue;
      }
      data::Batch b = data.gather(s.indices);
      Tensor out = forward_(b.x);
      const double lv = compile_.loss(out, b.y).item();
      for (auto* m : metrics) m->update(out, b.y, lv);
    }
  }
  model_->train(was_training);
  reduce_metrics(metrics);
  Logs logs;
  for (auto* m : metrics) logs[m->name()] = m->result();
  return logs;
}

Tensor Trainer::predict(const data::InMemoryDataset& data, int64_t batch_size) {
  LOOM_CHECK(batch_size > 0, "Trainer::predict: batch_size must be positive, got ", batch_size);
  const bool was_training = model_->is_training();
  model_->eval();
  std::vector<Tensor> outs;
  {
    autograd::NoGradGuard no_grad;
    for (int64_t i = 0; i < data.size(); i += batch_size) {
      std::vector<int64_t> idx;
      for (int64_t j = i; j < std::min(data.size(), i + batch_size); ++j) idx.push_back(j);
      outs.push_back(forward_(data.gather(idx).x));
    }
  }
  model_->train(was_training);
  LOOM_CHECK(!outs.empty(), "Trainer::predict: the data is empty");
  return ops::cat(outs, 0);
}

}  // namespace loom::trainer
