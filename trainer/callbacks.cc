#include "trainer/callbacks.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>

#include "tensor/error.h"
#include "tensor/logging.h"
#include "trainer/trainer.h"

namespace loom::trainer {

using nlohmann::json;

// ---------------------------------------------------------------- History

const std::vector<double>& History::operator[](const std::string& key) const {
  auto it = history.find(key);
  if (it == history.end()) {
    std::string keys;
    for (auto& [k, v] : history) keys += (keys.empty() ? "" : ", ") + k;
    LOOM_THROW(InvalidArgument, "History: no key '", key, "' (keys: ", keys, ")");
  }
  return it->second;
}

std::string History::to_json() const {
  json j = json::object();
  j["epoch"] = epoch;
  for (auto& [k, v] : history) {
    json a = json::array();
    for (double x : v) a.push_back(std::isfinite(x) ? json(x) : json(std::isnan(x) ? "nan" : x > 0 ? "inf" : "-inf"));
    j[k] = a;
  }
  return j.dump();
}

History History::from_json(const std::string& text) {
  History h;
  json j = json::parse(text);
  for (auto& [k, v] : j.items()) {
    if (k == "epoch") {
      h.epoch = v.get<std::vector<int64_t>>();
    } else {
      auto& out = h.history[k];
      for (auto& x : v) {
        if (x.is_number()) {
          out.push_back(x.get<double>());
        } else {
          const std::string s = x.get<std::string>();
          out.push_back(s == "inf" ? INFINITY : s == "-inf" ? -INFINITY : NAN);
        }
      }
    }
  }
  return h;
}

namespace {
bool maximize_for(Mode mode, const std::string& monitor) {
  if (mode == Mode::kMax) return true;
  if (mode == Mode::kMin) return false;
  return monitor.find("acc") != std::string::npos;
}
/// The monitored value, or nullopt with a warning on rank 0 naming the keys there are.
std::optional<double> monitored(const char* who, const std::string& monitor, const Logs& logs, const Trainer* t) {
  auto it = logs.find(monitor);
  if (it != logs.end()) return it->second;
  if (!t || t->rank() == 0) {
    std::string keys;
    for (auto& [k, v] : logs) keys += (keys.empty() ? "" : ", ") + k;
    LOOM_WARN(who, ": the monitored value '", monitor, "' is not in the logs (available: ", keys,
              "); pass validation data for val_ keys");
  }
  return std::nullopt;
}
}  // namespace

// ---------------------------------------------------------------- EarlyStopping

EarlyStopping::EarlyStopping(Options o) : o_(std::move(o)) {
  LOOM_CHECK(o_.patience >= 0, "EarlyStopping: patience must be >= 0, got ", o_.patience);
  o_.min_delta = std::fabs(o_.min_delta);
}

bool EarlyStopping::improved(double current, double reference) const {
  return maximize_ ? current - o_.min_delta > reference : current + o_.min_delta < reference;
}

void EarlyStopping::on_train_begin(Logs&) {
  maximize_ = maximize_for(o_.mode, o_.monitor);
  wait_ = 0;
  stopped_epoch_ = 0;
  best_epoch_ = 0;
  best_ = maximize_ ? -INFINITY : INFINITY;
  best_weights_.clear();
}

void EarlyStopping::on_epoch_end(int64_t epoch, Logs& logs) {
  auto current = monitored("EarlyStopping", o_.monitor, logs, trainer_);
  if (!current) return;
  if (o_.restore_best_weights && best_weights_.empty()) best_weights_ = trainer_->get_weights();
  ++wait_;
  if (improved(*current, best_)) {
    best_ = *current;
    best_epoch_ = epoch;
    if (o_.restore_best_weights) best_weights_ = trainer_->get_weights();
    wait_ = 0;
    return;
  }
  if (wait_ >= o_.patience && epoch > 0) {
    stopped_epoch_ = epoch;
    trainer_->stop_training = true;
  }
}

void EarlyStopping::on_train_end(Logs&) {
  if (stopped_epoch_ > 0 && o_.verbose && trainer_->rank() == 0)
    std::printf("Epoch %lld: early stopping\n", static_cast<long long>(stopped_epoch_ + 1));
  if (o_.restore_best_weights && !best_weights_.empty()) {
    if (o_.verbose && trainer_->rank() == 0)
      std::printf("Restoring model weights from the end of the best epoch: %lld.\n",
                  static_cast<long long>(best_epoch_ + 1));
    trainer_->set_weights(best_weights_);
  }
  std::fflush(stdout);
}

CallbackState EarlyStopping::state() const {
  return {{"wait", wait_}, {"best", best_}, {"best_epoch", static_cast<double>(best_epoch_)}};
}

void EarlyStopping::load_state(const CallbackState& s) {
  // The best weights themselves are not in the checkpoint: after a resume, restore_best_weights restores the best
  // weights seen since the resume (the checkpoint holds the weights of its own epoch).
  wait_ = static_cast<int>(s.at("wait"));
  best_ = s.at("best");
  best_epoch_ = static_cast<int64_t>(s.at("best_epoch"));
}

// ---------------------------------------------------------------- ReduceLROnPlateau

ReduceLROnPlateau::ReduceLROnPlateau(Options o) : o_(std::move(o)) {
  LOOM_CHECK(o_.factor < 1.0 && o_.factor >= 0, "ReduceLROnPlateau: factor must be in [0, 1), got ", o_.factor);
  LOOM_CHECK(o_.patience >= 0 && o_.cooldown >= 0 && o_.min_lr >= 0,
             "ReduceLROnPlateau: patience, cooldown and min_lr must be >= 0");
}

void ReduceLROnPlateau::on_train_begin(Logs&) {
  maximize_ = maximize_for(o_.mode, o_.monitor);
  best_ = maximize_ ? -INFINITY : INFINITY;
  wait_ = 0;
  cooldown_counter_ = 0;
}

void ReduceLROnPlateau::on_epoch_end(int64_t epoch, Logs& logs) {
  auto current = monitored("ReduceLROnPlateau", o_.monitor, logs, trainer_);
  if (!current) return;
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    wait_ = 0;
  }
  const bool better = maximize_ ? *current > best_ + o_.min_delta : *current < best_ - o_.min_delta;
  if (better) {
    best_ = *current;
    wait_ = 0;
  } else if (cooldown_counter_ == 0) {
    if (++wait_ >= o_.patience) {
      const double old_lr = trainer_->learning_rate();
      if (old_lr > o_.min_lr) {
        const double new_lr = std::max(old_lr * o_.factor, o_.min_lr);
        trainer_->set_learning_rate(new_lr);
        if (o_.verbose && trainer_->rank() == 0)
          std::printf("Epoch %lld: ReduceLROnPlateau reducing learning rate to %g.\n",
                      static_cast<long long>(epoch + 1), new_lr);
        cooldown_counter_ = o_.cooldown;
        wait_ = 0;
      }
    }
  }
}

CallbackState ReduceLROnPlateau::state() const {
  return {{"best", best_}, {"wait", wait_}, {"cooldown_counter", cooldown_counter_}};
}

void ReduceLROnPlateau::load_state(const CallbackState& s) {
  best_ = s.at("best");
  wait_ = static_cast<int>(s.at("wait"));
  cooldown_counter_ = static_cast<int>(s.at("cooldown_counter"));
}

// ---------------------------------------------------------------- ModelCheckpoint

ModelCheckpoint::ModelCheckpoint(std::string root, Options o) : root_(std::move(root)), o_(std::move(o)) {
  LOOM_CHECK(!root_.empty(), "ModelCheckpoint: the checkpoint directory must not be empty");
}

void ModelCheckpoint::on_train_begin(Logs&) {
  maximize_ = maximize_for(o_.mode, o_.monitor);
  best_ = maximize_ ? -INFINITY : INFINITY;
  if (o_.resume && trainer_->load_checkpoint(root_) && trainer_->rank() == 0 && o_.verbose)
    std::printf("ModelCheckpoint: resumed from %s after epoch %lld\n", root_.c_str(),
                static_cast<long long>(trainer_->epoch()));
}

void ModelCheckpoint::on_epoch_end(int64_t epoch, Logs& logs) {
  if (o_.save_best_only) {
    auto current = monitored("ModelCheckpoint", o_.monitor, logs, trainer_);
    if (!current) return;
    if (!(maximize_ ? *current > best_ : *current < best_)) return;
    best_ = *current;
  }
  trainer_->after_epoch_end([this, epoch] {
    last_saved_ = trainer_->save_checkpoint(root_, o_.keep_last);
    if (o_.verbose && trainer_->rank() == 0)
      std::printf("Epoch %lld: saved %s\n", static_cast<long long>(epoch + 1), last_saved_.c_str());
  });
}

CallbackState ModelCheckpoint::state() const { return {{"best", best_}}; }

void ModelCheckpoint::load_state(const CallbackState& s) { best_ = s.at("best"); }

// ---------------------------------------------------------------- ProgressBar

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

void ProgressBar::on_epoch_begin(int64_t epoch, Logs&) {
  if (trainer_->rank() != 0) return;
  tty_ = isatty(fileno(out_)) != 0;
  start_s_ = now_s();
  done_ = 0;
  std::fprintf(out_, "Epoch %lld/%lld\n", static_cast<long long>(epoch + 1),
               static_cast<long long>(trainer_->epochs()));
  std::fflush(out_);
}

void ProgressBar::on_batch_end(int64_t batch, Logs& logs) {
  if (trainer_->rank() != 0) return;
  done_ = batch + 1;
  if (tty_) draw(done_, logs, false);
}

void ProgressBar::on_epoch_end(int64_t, Logs& logs) {
  if (trainer_->rank() != 0) return;
  draw(trainer_->steps_per_epoch(), logs, true);
}

void ProgressBar::draw(int64_t done, const Logs& logs, bool final) {
  const int64_t total = std::max<int64_t>(trainer_->steps_per_epoch(), 1);
  const int width = 30;
  const int filled = static_cast<int>(width * done / total);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < width) bar += '>' + std::string(static_cast<size_t>(width - filled - 1), '.');
  const double elapsed = now_s() - start_s_;
  char head[128];
  if (final) {
    std::snprintf(head, sizeof head, "%lld/%lld [%s] - %.0fs %.0fms/step", static_cast<long long>(done),
                  static_cast<long long>(total), bar.c_str(), elapsed, 1000.0 * elapsed / std::max<int64_t>(done, 1));
  } else {
    const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total - done) : 0;
    std::snprintf(head, sizeof head, "%lld/%lld [%s] - ETA: %.0fs", static_cast<long long>(done),
                  static_cast<long long>(total), bar.c_str(), eta);
  }
  std::string line = head;
  for (auto& [k, v] : logs) {
    char item[96];
    std::snprintf(item, sizeof item, " - %s: %.4g", k.c_str(), v);
    line += item;
  }
  std::fprintf(out_, "%s%s%s", tty_ ? "\r" : "", line.c_str(), final ? "\n" : "");
  std::fflush(out_);
}

// ---------------------------------------------------------------- loggers

void CSVLogger::on_train_begin(Logs&) {
  keys_.clear();
  if (trainer_->rank() == 0 && !append_) std::ofstream(path_, std::ios::trunc);
}

void CSVLogger::on_epoch_end(int64_t epoch, Logs& logs) {
  if (trainer_->rank() != 0) return;
  std::ifstream probe(path_);
  const bool empty = !probe || probe.peek() == std::ifstream::traits_type::eof();
  if (keys_.empty())
    for (auto& [k, v] : logs) keys_.push_back(k);
  std::ofstream f(path_, std::ios::app);
  if (!f) throw IoError("CSVLogger: cannot write " + path_);
  if (empty) {
    f << "epoch";
    for (auto& k : keys_) f << "," << k;
    f << "\n";
  }
  f << epoch;
  char buf[64];
  for (auto& k : keys_) {
    auto it = logs.find(k);
    if (it == logs.end()) {
      f << ",";
      continue;
    }
    std::snprintf(buf, sizeof buf, ",%.17g", it->second);
    f << buf;
  }
  f << "\n";
}

void JsonlLogger::on_train_begin(Logs&) {
  if (trainer_->rank() == 0 && !append_) std::ofstream(path_, std::ios::trunc);
}

void JsonlLogger::on_epoch_end(int64_t epoch, Logs& logs) {
  if (trainer_->rank() != 0) return;
  json j;
  j["epoch"] = epoch;
  for (auto& [k, v] : logs) j[k] = v;
  std::ofstream f(path_, std::ios::app);
  if (!f) throw IoError("JsonlLogger: cannot write " + path_);
  f << j.dump() << "\n";
}

}  // namespace loom::trainer
