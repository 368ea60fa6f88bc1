// Callbacks for fit(), with Keras's semantics: hooks at train/epoch/batch begin and end that read (and may change)
// the logs, and the standard ones: EarlyStopping, ReduceLROnPlateau, ModelCheckpoint (loom's sharded checkpoints,
// resumable), ProgressBar (rank 0), CSVLogger and JsonlLogger (rank 0), LambdaCallback.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace loom::trainer {

class Trainer;

/// Name -> value: "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", …
using Logs = std::map<std::string, double>;
/// What a callback saves in a checkpoint to continue as if never interrupted.
using CallbackState = std::map<std::string, double>;

/// What fit() returns: per epoch (0-based numbers in `epoch`) the value of every log key.
struct History {
  std::vector<int64_t> epoch;
  std::map<std::string, std::vector<double>> history;
  /// Values of `key` by epoch; throws InvalidArgument listing the keys when absent.
  const std::vector<double>& operator[](const std::string& key) const;
  bool operator==(const History& o) const { return epoch == o.epoch && history == o.history; }
  /// One JSON object {"epoch": [...], "loss": [...], ...} with every double written exactly (17 digits).
  std::string to_json() const;
  static History from_json(const std::string& text);
};

class Callback {
 public:
  virtual ~Callback() = default;
  virtual void on_train_begin(Logs& /*logs*/) {}
  virtual void on_train_end(Logs& /*logs*/) {}
  virtual void on_epoch_begin(int64_t /*epoch*/, Logs& /*logs*/) {}
  /// logs hold the epoch's training and validation values; callbacks run in list order and see earlier ones' changes.
  virtual void on_epoch_end(int64_t /*epoch*/, Logs& /*logs*/) {}
  /// batch counts from 0 in every epoch.
  virtual void on_batch_begin(int64_t /*batch*/, Logs& /*logs*/) {}
  /// logs hold this rank's running "loss" and metrics of the epoch so far (not reduced across ranks: no collective
  /// per step).
  virtual void on_batch_end(int64_t /*batch*/, Logs& /*logs*/) {}
  /// The state a checkpoint keeps (counters, best values), restored before training resumes.
  virtual CallbackState state() const { return {}; }
  virtual void load_state(const CallbackState& /*state*/) {}
  /// Set by fit() before on_train_begin.
  void set_trainer(Trainer* t) { trainer_ = t; }

 protected:
  Trainer* trainer_ = nullptr;
};

enum class Mode { kAuto, kMin, kMax };

/// Stops training when `monitor` stopped improving (Keras 3): an epoch improves when it beats the best by more than
/// min_delta; after `patience` epochs without improvement training stops. With restore_best_weights the weights of the
/// best epoch (bit for bit) are put back when training ends. Mode kAuto: max for names containing "acc", else min.
class EarlyStopping : public Callback {
 public:
  struct Options {
    std::string monitor = "val_loss";
    double min_delta = 0;
    int patience = 0;
    Mode mode = Mode::kAuto;
    bool restore_best_weights = false;
    /// Print "Epoch N: early stopping" on rank 0.
    bool verbose = false;
  };
  explicit EarlyStopping(Options o);
  void on_train_begin(Logs& logs) override;
  void on_epoch_end(int64_t epoch, Logs& logs) override;
  void on_train_end(Logs& logs) override;
  CallbackState state() const override;
  void load_state(const CallbackState& s) override;
  /// The epoch training stopped at (0 when it did not stop early) and the best epoch.
  int64_t stopped_epoch() const { return stopped_epoch_; }
  int64_t best_epoch() const { return best_epoch_; }
  double best() const { return best_; }

 private:
  bool improved(double current, double reference) const;
  Options o_;
  bool maximize_ = false;
  int wait_ = 0;
  int64_t stopped_epoch_ = 0, best_epoch_ = 0;
  double best_ = 0;
  std::vector<Tensor> best_weights_;
};

/// Multiplies the learning rate by `factor` when `monitor` did not improve (by more than min_delta) for `patience`
/// epochs, never below min_lr, then waits `cooldown` epochs before counting again (Keras's ReduceLROnPlateau). Under a
/// schedule the reduction scales the schedule from then on.
class ReduceLROnPlateau : public Callback {
 public:
  struct Options {
    std::string monitor = "val_loss";
    double factor = 0.1;
    int patience = 10;
    Mode mode = Mode::kAuto;
    double min_delta = 1e-4;
    int cooldown = 0;
    double min_lr = 0;
    bool verbose = false;
  };
  explicit ReduceLROnPlateau(Options o);
  void on_train_begin(Logs& logs) override;
  void on_epoch_end(int64_t epoch, Logs& logs) override;
  CallbackState state() const override;
  void load_state(const CallbackState& s) override;

 private:
  Options o_;
  bool maximize_ = false;
  double best_ = 0;
  int wait_ = 0, cooldown_counter_ = 0;
};

/// Saves loom's sharded checkpoints (checkpoint/: one HDF5 file per rank + metadata) under `root` at the end of an
/// epoch: every epoch, or with save_best_only only when `monitor` improved. A checkpoint holds the model, optimizer,
/// schedule, RNG states, epoch, history and the callbacks' states, so with resume (the default) a fit() that finds a
/// checkpoint under root continues after its epoch and returns the same history as an uninterrupted fit. Collective:
/// every rank saves its shard.
class ModelCheckpoint : public Callback {
 public:
  struct Options {
    std::string monitor = "val_loss";
    bool save_best_only = false;
    Mode mode = Mode::kAuto;
    /// Keep the newest keep_last checkpoints (0: all).
    int keep_last = 2;
    /// Load the latest checkpoint under root, when there is one, at the start of fit().
    bool resume = true;
    bool verbose = false;
  };
  ModelCheckpoint(std::string root, Options o);
  explicit ModelCheckpoint(std::string root) : ModelCheckpoint(std::move(root), Options{}) {}
  void on_train_begin(Logs& logs) override;
  void on_epoch_end(int64_t epoch, Logs& logs) override;
  CallbackState state() const override;
  void load_state(const CallbackState& s) override;
  /// The directory of the last checkpoint this callback wrote ("" before the first).
  const std::string& last_saved() const { return last_saved_; }

 private:
  std::string root_;
  Options o_;
  bool maximize_ = false;
  double best_ = 0;
  std::string last_saved_;
};

/// Keras's progress bar on rank 0: "Epoch 3/10" then "45/45 [======] - 2s 40ms/step - loss: 0.1 - accuracy: 0.9"
/// redrawn in place on a terminal (ETA while running), written once per epoch otherwise.
class ProgressBar : public Callback {
 public:
  explicit ProgressBar(FILE* out = stdout) : out_(out) {}
  void on_epoch_begin(int64_t epoch, Logs& logs) override;
  void on_batch_end(int64_t batch, Logs& logs) override;
  void on_epoch_end(int64_t epoch, Logs& logs) override;

 private:
  void draw(int64_t done, const Logs& logs, bool final);
  FILE* out_;
  bool tty_ = false;
  double start_s_ = 0;
  int64_t done_ = 0;
};

/// Rank 0 writes one row per epoch to a CSV file: "epoch" then the log keys in sorted order (Keras's CSVLogger). With
/// append, rows are added to an existing file (a resumed fit continues it).
class CSVLogger : public Callback {
 public:
  explicit CSVLogger(std::string path, bool append = false) : path_(std::move(path)), append_(append) {}
  void on_train_begin(Logs& logs) override;
  void on_epoch_end(int64_t epoch, Logs& logs) override;

 private:
  std::string path_;
  bool append_;
  std::vector<std::string> keys_;
};

/// Rank 0 appends one JSON object per epoch ({"epoch": 0, "loss": ..., ...}) to a JSONL file.
class JsonlLogger : public Callback {
 public:
  explicit JsonlLogger(std::string path, bool append = false) : path_(std::move(path)), append_(append) {}
  void on_train_begin(Logs& logs) override;
  void on_epoch_end(int64_t epoch, Logs& logs) override;

 private:
  std::string path_;
  bool append_;
};

/// A callback from functions (any may be empty), as keras.callbacks.LambdaCallback.
class LambdaCallback : public Callback {
 public:
  std::function<void(Logs&)> train_begin, train_end;
  std::function<void(int64_t, Logs&)> epoch_begin, epoch_end, batch_begin, batch_end;
  void on_train_begin(Logs& l) override {
    if (train_begin) train_begin(l);
  }
  void on_train_end(Logs& l) override {
    if (train_end) train_end(l);
  }
  void on_epoch_begin(int64_t e, Logs& l) override {
    if (epoch_begin) epoch_begin(e, l);
  }
  void on_epoch_end(int64_t e, Logs& l) override {
    if (epoch_end) epoch_end(e, l);
  }
  void on_batch_begin(int64_t b, Logs& l) override {
    if (batch_begin) batch_begin(b, l);
  }
  void on_batch_end(int64_t b, Logs& l) override {
    if (batch_end) batch_end(b, l);
  }
};

}  // namespace loom::trainer
