// Each callback on a scripted loss curve (a callback placed before it overwrites the monitored value), ModelCheckpoint
// + resume against an uninterrupted fit, the loggers, metrics and Module::summary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "checkpoint/checkpoint.h"
#include "test_model.h"
#include "trainer/trainer.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::trainer;
using loom::trainer_test::clusters;
using loom::trainer_test::TinyNet;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::path(LOOM_BINARY_DIR) / "tests_tmp" / ("trainer_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::unique_ptr<Trainer> make_trainer(uint64_t seed, double lr = 0.05, bool schedule = false) {
  manual_seed(seed);
  Generator init(seed);
  auto model = std::make_shared<TinyNet>(init);
  auto t = std::make_unique<Trainer>(model, Strategy::single_device());
  CompileOptions c;
  if (schedule) {
    nn::AdamWOptions o;
    o.lr = lr;
    c.optimizer = adamw(o);
    c.schedule = warmup_cosine(lr, lr / 10, 3);
    c.clip_grad_norm = 1.0;
  } else {
    nn::SGDOptions o;
    o.lr = lr;
    c.optimizer = sgd(o);
  }
  c.metrics = {accuracy(), top_k_accuracy(2)};
  t->compile(c);
  return t;
}

/// Overwrites logs[key] at each epoch end with script[epoch].
std::shared_ptr<LambdaCallback> script(const std::string& key, std::vector<double> values) {
  auto cb = std::make_shared<LambdaCallback>();
  cb->epoch_end = [key, values](int64_t e, Logs& logs) { logs[key] = values.at(static_cast<size_t>(e)); };
  return cb;
}

FitOptions quiet(int64_t batch = 16) {
  FitOptions o;
  o.batch_size = batch;
  o.verbose = 0;
  return o;
}

bool bit_equal(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || a[i].dtype() != b[i].dtype()) return false;
    if (std::memcmp(a[i].data_ptr(), b[i].data_ptr(), a[i].nbytes()) != 0) return false;
  }
  return true;
}

}  // namespace

TEST(EarlyStopping, StopsAfterPatienceAndRestoresBestWeightsBitForBit) {
  auto t = make_trainer(1);
  auto train = clusters(96, 5), val = clusters(30, 6);
  std::vector<std::vector<Tensor>> weights;  // at the end of each epoch
  auto record = std::make_shared<LambdaCallback>();
  record->epoch_end = [&](int64_t, Logs&) { weights.push_back(t->get_weights()); };
  EarlyStopping::Options eo;
  eo.patience = 2;
  eo.restore_best_weights = true;
  auto es = std::make_shared<EarlyStopping>(eo);
  // Best at epoch 1; epochs 2 and 3 do not improve: stop after epoch 3 (Keras: wait reaches patience).
  auto h = t->fit(train, 10, &val, {script("val_loss", {1.0, 0.8, 0.9, 0.85, 0.1, 0.1}), record, es}, quiet());
  EXPECT_EQ(h.epoch, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(es->stopped_epoch(), 3);
  EXPECT_EQ(es->best_epoch(), 1);
  EXPECT_EQ(h["val_loss"], (std::vector<double>{1.0, 0.8, 0.9, 0.85}));
  ASSERT_EQ(weights.size(), 4u);
  EXPECT_FALSE(bit_equal(weights[1], weights[3])) << "training did not change the weights";
  EXPECT_TRUE(bit_equal(t->get_weights(), weights[1])) << "the weights are not those of the best epoch";
}

TEST(EarlyStopping, MinDeltaAndMaxModeAndNoRestore) {
  auto train = clusters(96, 5);
  {
    // min_delta 0.1: 0.95 and 0.9 are not better than 1.0 by more than 0.1 -> stop after epoch 2.
    auto t = make_trainer(2);
    EarlyStopping::Options eo;
    eo.monitor = "loss";
    eo.patience = 2;
    eo.min_delta = 0.1;
    auto es = std::make_shared<EarlyStopping>(eo);
    std::vector<Tensor> before_end;
    auto h = t->fit(train, 10, nullptr, {script("loss", {1.0, 0.95, 0.9, 0.5}), es}, quiet());
    EXPECT_EQ(h.epoch.size(), 3u);
    EXPECT_EQ(es->best_epoch(), 0);
  }
  {
    // "val_accuracy" is maximised: 0.5, 0.7, 0.7, 0.6 with patience 1 -> stop after epoch 2; weights not restored.
    auto t = make_trainer(3);
    auto val = clusters(30, 6);
    std::vector<Tensor> last;
    auto record = std::make_shared<LambdaCallback>();
    record->epoch_end = [&](int64_t, Logs&) { last = t->get_weights(); };
    EarlyStopping::Options eo;
    eo.monitor = "val_accuracy";
    eo.patience = 1;
    auto es = std::make_shared<EarlyStopping>(eo);
    auto h = t->fit(train, 10, &val, {script("val_accuracy", {0.5, 0.7, 0.7, 0.6}), record, es}, quiet());
    EXPECT_EQ(h.epoch.size(), 3u);
    EXPECT_EQ(es->best_epoch(), 1);
    EXPECT_TRUE(bit_equal(t->get_weights(), last));
  }
}

TEST(ReduceLROnPlateau, ReducesAtTheRightEpochsWithCooldownAndMinLr) {
  auto t = make_trainer(4, 0.1);
  auto train = clusters(96, 5);
  ReduceLROnPlateau::Options ro;
  ro.monitor = "loss";
  ro.factor = 0.5;
  ro.patience = 2;
  ro.cooldown = 2;
  ro.min_lr = 0.02;
  std::vector<double> lr_used;  // the learning rate each epoch trained with
  auto probe = std::make_shared<LambdaCallback>();
  probe->epoch_begin = [&](int64_t, Logs&) { lr_used.push_back(t->learning_rate()); };
  // An improvement at epoch 5 resets the count.
  auto h = t->fit(train, 12, nullptr,
                  {probe, script("loss", {1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}),
                   std::make_shared<ReduceLROnPlateau>(ro)},
                  quiet());
  // e0 best; e1 wait 1; e2 wait 2 -> 0.05, cooldown 2; e3 cooling (counter 1, no count); e4 counter 0, wait 1;
  // e5 improves; e6 wait 1; e7 wait 2 -> 0.025, cooldown 2; e8 cooling; e9 wait 1; e10 wait 2 -> max(0.0125, min_lr
  // 0.02) = 0.02; e11 cooling.
  const std::vector<double> expect = {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02};
  ASSERT_EQ(lr_used.size(), expect.size());
  for (size_t e = 0; e < expect.size(); ++e) EXPECT_NEAR(lr_used[e], expect[e], 1e-12) << "epoch " << e;
  EXPECT_NEAR(t->learning_rate(), 0.02, 1e-12);
}

TEST(ModelCheckpoint, ResumeGivesTheSameHistoryAsAnUninterruptedFit) {
  auto train = clusters(90, 5), val = clusters(30, 6);
  auto dir = temp_dir("resume");
  auto callbacks = [&](const fs::path& root) {
    ReduceLROnPlateau::Options ro;
    ro.patience = 1;
    ro.factor = 0.5;
    ro.min_delta = 0.05;
    return std::vector<std::shared_ptr<Callback>>{std::make_shared<ReduceLROnPlateau>(ro),
                                                  std::make_shared<ModelCheckpoint>(root.string())};
  };
  // Uninterrupted: 5 epochs.
  auto a = make_trainer(11, 0.02, /*schedule=*/true);
  History ha = a->fit(train, 5, &val, callbacks(dir / "a"), quiet());
  auto wa = a->get_weights();
  // Interrupted after 2 epochs (a callback stops it), then a new process-like trainer (other initial weights, other
  // RNG state) resumes from the checkpoint.
  {
    auto b = make_trainer(11, 0.02, true);
    auto cbs = callbacks(dir / "b");
    auto stop = std::make_shared<LambdaCallback>();
    stop->epoch_end = [&](int64_t e, Logs&) { b->stop_training = e == 1; };
    cbs.push_back(stop);
    History hb = b->fit(train, 5, &val, cbs, quiet());
    EXPECT_EQ(hb.epoch.size(), 2u);
  }
  auto c = make_trainer(999, 0.02, true);
  int64_t epochs_run = 0;
  auto count = std::make_shared<LambdaCallback>();
  count->epoch_begin = [&](int64_t, Logs&) { ++epochs_run; };
  auto cbs = callbacks(dir / "b");
  cbs.push_back(count);
  History hc = c->fit(train, 5, &val, cbs, quiet());
  EXPECT_EQ(epochs_run, 3);
  EXPECT_EQ(hc.epoch, ha.epoch);
  for (auto& [k, v] : ha.history) EXPECT_EQ(hc[k], v) << k;  // exactly
  EXPECT_TRUE(bit_equal(c->get_weights(), wa)) << "resumed weights differ from the uninterrupted run's";
  EXPECT_LT(ha["learning_rate"].back(), ha["learning_rate"].front());
}

TEST(ModelCheckpoint, SaveBestOnlySavesWhenTheMonitorImproves) {
  auto t = make_trainer(5);
  auto train = clusters(48, 5);
  auto dir = temp_dir("best");
  ModelCheckpoint::Options mo;
  mo.monitor = "loss";
  mo.save_best_only = true;
  mo.keep_last = 0;
  mo.resume = false;
  t->fit(train, 4, nullptr, {script("loss", {1.0, 0.5, 0.7, 0.4}), std::make_shared<ModelCheckpoint>(dir.string(), mo)},
         quiet());
  std::vector<std::string> names;
  for (auto& d : checkpoint::complete_checkpoints(dir.string())) names.push_back(fs::path(d).filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"step_00000001", "step_00000002", "step_00000004"}));
}

TEST(Loggers, CsvAndJsonlHaveOneRowPerEpoch) {
  auto t = make_trainer(6);
  auto train = clusters(48, 5), val = clusters(12, 6);
  auto dir = temp_dir("loggers");
  auto h = t->fit(train, 3, &val,
                  {std::make_shared<CSVLogger>((dir / "log.csv").string()),
                   std::make_shared<JsonlLogger>((dir / "log.jsonl").string())},
                  quiet());
  std::ifstream csv(dir / "log.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "epoch,accuracy,learning_rate,loss,top_2_accuracy,val_accuracy,val_loss,val_top_2_accuracy");
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 3);
  std::ifstream jl(dir / "log.jsonl");
  rows = 0;
  while (std::getline(jl, line)) {
    EXPECT_NE(line.find("\"epoch\":" + std::to_string(rows)), std::string::npos) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3);
}

TEST(Trainer, FitLearnsAndEvaluatePredictAgree) {
  auto t = make_trainer(7, 0.01, /*schedule=*/true);
  auto train = clusters(150, 5), val = clusters(60, 6);
  auto h = t->fit(train, 15, &val, {}, quiet(16));
  EXPECT_LT(h["loss"].back(), h["loss"].front());
  EXPECT_GE(h["val_accuracy"].back(), 0.9);
  Logs ev = t->evaluate(val, 7);  // another batch size: the same sums
  EXPECT_NEAR(ev["accuracy"], h["val_accuracy"].back(), 1e-12);
  EXPECT_NEAR(ev["loss"], h["val_loss"].back(), 1e-5);
  EXPECT_GE(ev["top_2_accuracy"], ev["accuracy"]);
  Tensor p = t->predict(val, 16);
  EXPECT_EQ(p.sizes(), (Shape{60, 3}));
  Accuracy acc;
  acc.update(p, val.labels(), 0);
  EXPECT_NEAR(acc.result(), ev["accuracy"], 1e-12);
}

TEST(Trainer, ErrorsNameWhatIsMissing) {
  manual_seed(1);
  Generator g(1);
  Trainer t(std::make_shared<TinyNet>(g), Strategy::single_device());
  try {
    t.fit(clusters(10, 1), 1);
    FAIL() << "fit before compile did not throw";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("call compile() first"), std::string::npos) << e.what();
  }
}

TEST(Metrics, AccuracyAndTopK) {
  Tensor out = from_vector<float>({0.1f, 0.7f, 0.2f,  //
                                   0.5f, 0.2f, 0.3f,  //
                                   0.2f, 0.3f, 0.5f,  //
                                   0.4f, 0.4f, 0.2f},
                                  {4, 3});
  Tensor y = from_vector<int64_t>({1, 2, 0, 1}, {4});
  Accuracy a;
  a.update(out, y, 0);
  EXPECT_DOUBLE_EQ(a.result(), 0.25);  // row 0 only (row 3's tie goes to index 0)
  TopKAccuracy k2(2);
  k2.update(out, y, 0);
  EXPECT_DOUBLE_EQ(k2.result(), 0.75);  // rows 0, 1 (0.3 is 2nd), 3 (tie); row 2's 0.2 is 3rd
  TopKAccuracy k1(1);
  k1.update(out, y, 0);
  EXPECT_DOUBLE_EQ(k1.result(), 0.5);  // top-1 counts ties as inside (row 3)
}

TEST(ModuleSummary, KerasTableWithOutputShapesAndParameterCounts) {
  Generator g(1);
  TinyNet net(g);
  net.train();
  std::string s = net.summary({2, 4}, [&](const Tensor& x) { return net(x); });
  EXPECT_NE(s.find("fc1 (Linear)"), std::string::npos) << s;
  EXPECT_NE(s.find("(None, 32)"), std::string::npos) << s;
  EXPECT_NE(s.find("drop (Dropout)"), std::string::npos) << s;
  EXPECT_NE(s.find("(None, 3)"), std::string::npos) << s;
  EXPECT_NE(s.find("160"), std::string::npos) << s;  // fc1: 4*32 + 32
  EXPECT_NE(s.find("Total params: 259"), std::string::npos) << s;
  EXPECT_LT(s.find("fc1 (Linear)"), s.find("fc2 (Linear)"));
  EXPECT_TRUE(net.is_training()) << "summary must restore the training flag";
}
