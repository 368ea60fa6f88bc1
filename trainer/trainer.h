// Trainer: Keras's compile / fit / evaluate / predict over loom's modules, under a Strategy (single device, mirrored
// = DDP, fully sharded). The same program runs on 1 or N ranks: the global batch is split across the ranks, each
// rank's loss is weighted so the averaged gradient is that of the whole global batch, dropout draws the masks one rank
// would (nn::DropoutRowShard), and every reported number (loss, metrics, validation) is summed across ranks, so every
// rank logs the same values.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "data/dataset.h"
#include "nn/lr_scheduler.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "parallel/ddp.h"
#include "parallel/fully_shard.h"
#include "trainer/callbacks.h"
#include "trainer/metrics.h"
#include "trainer/strategy.h"

namespace loom::trainer {

/// outputs (B, ...) and targets (B) -> the batch's mean loss (0-dim).
using LossFn = std::function<Tensor(const Tensor& outputs, const Tensor& targets)>;
/// The parameter groups of the model as the strategy holds it: (lr, weight_decay) -> weight decay on >= 2-D
/// parameters, none on the rest (nn::weight_decay_groups; FullyShard::param_groups under fully_sharded).
using ParamGroupsFn = std::function<std::vector<nn::ParamGroup>(double lr, double weight_decay)>;
/// Builds the optimizer over the groups the strategy hands it.
using OptimizerFactory = std::function<std::unique_ptr<nn::Optimizer>(const ParamGroupsFn& groups)>;
/// Builds a per-step schedule once fit() knows the number of steps (epochs x steps per epoch).
using ScheduleFactory = std::function<std::unique_ptr<nn::LRScheduler>(nn::Optimizer& opt, int64_t total_steps)>;

/// torch.optim.AdamW over the decay / no-decay groups.
OptimizerFactory adamw(nn::AdamWOptions opts);
/// torch.optim.SGD over the decay / no-decay groups.
OptimizerFactory sgd(nn::SGDOptions opts);
/// Linear warmup over warmup_steps, then cosine from max_lr to min_lr at the last step of fit.
ScheduleFactory warmup_cosine(double max_lr, double min_lr, int64_t warmup_steps = 0);
/// loom::cross_entropy: outputs (B, C) logits, targets (B) class indices.
LossFn cross_entropy_loss();

struct CompileOptions {
  OptimizerFactory optimizer;  // required
  LossFn loss;                 // empty: cross_entropy_loss()
  ScheduleFactory schedule;    // empty: the optimizer's lr throughout
  std::vector<std::shared_ptr<Metric>> metrics;
  /// Clip the total gradient norm (of the whole model, across ranks) to this; 0: no clipping.
  double clip_grad_norm = 0;
};

struct FitOptions {
  /// Rows per optimizer step over all ranks (split across them; at least the number of ranks).
  int64_t batch_size = 32;
  /// Rows per validation / evaluation batch over all ranks; 0: batch_size.
  int64_t validation_batch_size = 0;
  bool shuffle = true;
  /// The order of epoch e is a function of (seed, e) alone: the same on every rank and after a resume.
  uint64_t seed = 0;
  /// 1: a ProgressBar on rank 0 is added to the callbacks; 0: none.
  int verbose = 1;
};

class Trainer {
 public:
  /// model's forward is (*model)(x). Wraps the model as the strategy says: collective (DDP broadcasts rank 0's
  /// weights; FullyShard shards them), so every rank constructs its Trainer in the same order.
  template <typename M>
  explicit Trainer(std::shared_ptr<M> model, Strategy strategy = Strategy::from_env())
      : Trainer(
            std::static_pointer_cast<nn::Module>(model), [m = model.get()](const Tensor& x) { return (*m)(x); },
            std::move(strategy)) {}
  /// A model whose forward is `forward` (it must call the model through its operator() under fully_sharded, so the
  /// hooks gather the parameters).
  Trainer(std::shared_ptr<nn::Module> model, std::function<Tensor(const Tensor&)> forward, Strategy strategy);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Sets optimizer, loss, schedule, metrics and clipping (Keras's compile). Throws InvalidArgument without optimizer.
  void compile(CompileOptions opts);
  /// Trains for `epochs` epochs (from the epoch a resumed checkpoint reached) and returns the history of every epoch.
  /// Collective. validation_data may be null. Throws InvalidArgument before compile().
  History fit(const data::InMemoryDataset& train, int64_t epochs,
              const data::InMemoryDataset* validation_data = nullptr,
              std::vector<std::shared_ptr<Callback>> callbacks = {}, const FitOptions& opts = {});
  /// Loss and metrics over `data` (eval mode), summed across ranks: {"loss": …, "accuracy": …}. Collective.
  Logs evaluate(const data::InMemoryDataset& data, int64_t batch_size = 64);
  /// The model's outputs for every row of `data`, in order, (N, ...) on every rank (each rank runs every row).
  Tensor predict(const data::InMemoryDataset& data, int64_t batch_size = 64);
  /// Keras's model.summary() for inputs of shape input_shape (dim 0 is the batch).
  std::string summary(const Shape& input_shape);

  // ------------------------------------------------------------ for callbacks
  /// Set by a callback to end fit() after the current epoch.
  bool stop_training = false;
  /// The learning rate the optimizer uses now (its first group's).
  double learning_rate() const;
  /// Sets the learning rate now; under a schedule, scales the schedule from now on by lr / its current value.
  void set_learning_rate(double lr);
  /// Copies of the tensors training changes on this rank (parameters or FSDP shards, and buffers), for set_weights.
  std::vector<Tensor> get_weights() const;
  /// Copies `weights` (from get_weights) back in place, bit for bit.
  void set_weights(const std::vector<Tensor>& weights);
  /// Saves a checkpoint of the whole training state under root (collective); returns its directory.
  std::string save_checkpoint(const std::string& root, int keep_last = 0);
  /// Loads the latest checkpoint under root (collective); fit() then continues after its epoch. Returns false when
  /// root holds none.
  bool load_checkpoint(const std::string& root);
  /// Runs fn after every callback's on_epoch_end of this epoch (ModelCheckpoint saves there, so the state it saves
  /// includes every callback's update).
  void after_epoch_end(std::function<void()> fn) { after_epoch_.push_back(std::move(fn)); }

  int rank() const { return group_->rank(); }
  int world_size() const { return group_->size(); }
  int64_t epoch() const { return epoch_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t global_step() const { return step_; }
  int64_t epochs() const { return epochs_; }
  const History& history() const { return history_; }
  nn::Module& model() { return *model_; }
  nn::Optimizer& optimizer() { return *opt_; }
  const Strategy& strategy() const { return strategy_; }
  std::shared_ptr<collectives::ProcessGroup> group() const { return group_; }

 private:
  ParamGroupsFn param_groups_fn();
  /// One step on this rank's part of a global batch; returns the mean loss of its rows.
  void train_step(const data::InMemoryDataset& train, const data::Shard& shard, std::vector<Metric*>& metrics);
  /// Sums every metric's (total, count) over the ranks, in place.
  void reduce_metrics(const std::vector<Metric*>& metrics);
  checkpoint::Target target();
  void apply_lr();

  std::shared_ptr<nn::Module> model_;
  std::function<Tensor(const Tensor&)> forward_;
  Strategy strategy_;
  std::shared_ptr<collectives::ProcessGroup> group_;
  std::unique_ptr<parallel::DistributedDataParallel> ddp_;
  std::unique_ptr<parallel::FullyShard> fsdp_;
  CompileOptions compile_;
  std::unique_ptr<nn::Optimizer> opt_;
  std::unique_ptr<nn::LRScheduler> sched_;
  double base_lr_ = 0;   // the optimizer's lr at compile (without a schedule)
  double lr_scale_ = 1;  // ReduceLROnPlateau's factor on the schedule
  int64_t epoch_ = 0;    // epochs completed
  int64_t epochs_ = 0;   // of the current fit
  int64_t step_ = 0;     // optimizer steps taken
  int64_t steps_per_epoch_ = 0;
  History history_;
  std::vector<std::shared_ptr<Callback>> callbacks_;
  std::map<std::string, CallbackState> loaded_callback_states_;
  bool resumed_ = false;  // load_checkpoint ran since the last fit began
  std::vector<std::function<void()>> after_epoch_;
  std::map<std::string, std::unique_ptr<checkpoint::Checkpointer>> checkpointers_;
  MeanLoss train_loss_;
};

}  // namespace loom::trainer
