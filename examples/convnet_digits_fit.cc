// The fit() twin of convnet_digits.cc, as the Keras listing reads: build the model, print its summary, compile with
// AdamW + cosine schedule + clipping, fit with validation data and callbacks. Strategy::from_env() mirrors the model
// across the ranks when launched on several (trainlaunch --nproc-per-node 2 …), the same program unchanged.
//
//   .venv/bin/python scripts/digits_to_idx.py build/digits
//   build/examples/convnet_digits_fit --data build/digits
//   build/launcher/trainlaunch --standalone --nproc-per-node 2 -- build/examples/convnet_digits_fit --data build/digits
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>

#include "nn/conv.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "trainer/trainer.h"

using namespace loom;

data::InMemoryDataset load_split(const std::string& dir, const std::string& split) {
  auto path = [&](const std::string& name) {
    const std::string p = dir + "/" + split + "-" + name;
    return std::filesystem::exists(p) ? p : p + ".gz";
  };
  return data::read_mnist(path("images-idx3-ubyte"), path("labels-idx1-ubyte"));
}

int main(int argc, char** argv) {
  CLI::App app{"ConvNet on the digits set with Trainer::fit (mirrored across ranks when launched on several)"};
  std::string data_dir = "digits", checkpoint_dir, csv_log;
  int epochs = 8, batch_size = 32, seed = 0;
  double lr = 2e-3, min_accuracy = 0;
  app.add_option("--data", data_dir, "folder of the IDX files (scripts/digits_to_idx.py writes them)");
  app.add_option("--epochs", epochs, "epochs");
  app.add_option("--batch-size", batch_size, "global batch size (split across the ranks)");
  app.add_option("--lr", lr, "peak learning rate of the cosine schedule");
  app.add_option("--seed", seed, "seed of the initial weights, dropout and shuffling");
  app.add_option("--checkpoint-dir", checkpoint_dir, "ModelCheckpoint here (resumes from it when it holds one)");
  app.add_option("--csv-log", csv_log, "CSVLogger file");
  app.add_option("--min-accuracy", min_accuracy, "exit 1 when the final val_accuracy is lower (for tests)");
  CLI11_PARSE(app, argc, argv);

  try {
    auto train_set = load_split(data_dir, "train");
    auto test_set = load_split(data_dir, "t10k");

    manual_seed(static_cast<uint64_t>(seed));
    using nn::Conv2dOptions;
    auto model = std::make_shared<nn::Sequential>(
        std::make_shared<nn::Conv2d>(1, 32, 3, Conv2dOptions{.padding = {1, 1}}), std::make_shared<nn::ReLU>(),
        std::make_shared<nn::MaxPool2d>(2),  //
        std::make_shared<nn::Conv2d>(32, 64, 3, Conv2dOptions{.padding = {1, 1}}), std::make_shared<nn::ReLU>(),
        std::make_shared<nn::MaxPool2d>(2),  //
        std::make_shared<nn::Dropout>(0.25), std::make_shared<nn::Flatten>(),
        std::make_shared<nn::Linear>(64 * 7 * 7, 128), std::make_shared<nn::ReLU>(),  //
        std::make_shared<nn::Dropout>(0.5), std::make_shared<nn::Linear>(128, 10));

    trainer::Trainer trainer(model, trainer::Strategy::from_env());
    if (trainer.rank() == 0) {
      std::printf("%s", trainer.summary({1, 1, 28, 28}).c_str());
      std::printf("strategy: %s over %d rank%s\n", trainer.strategy().name().c_str(), trainer.world_size(),
                  trainer.world_size() > 1 ? "s" : "");
    }
    const int64_t steps_per_epoch = train_set.size() / batch_size;
    trainer.compile({.optimizer = trainer::adamw({.lr = lr, .weight_decay = 0.01}),
                     .loss = trainer::cross_entropy_loss(),
                     .schedule = trainer::warmup_cosine(lr, lr / 20, steps_per_epoch / 2),
                     .metrics = {trainer::accuracy()},
                     .clip_grad_norm = 1.0});

    std::vector<std::shared_ptr<trainer::Callback>> callbacks;
    if (!checkpoint_dir.empty()) callbacks.push_back(std::make_shared<trainer::ModelCheckpoint>(checkpoint_dir));
    if (!csv_log.empty()) callbacks.push_back(std::make_shared<trainer::CSVLogger>(csv_log));
    trainer::History history = trainer.fit(train_set, epochs, &test_set, callbacks,
                                           {.batch_size = batch_size, .seed = static_cast<uint64_t>(seed)});

    const double accuracy = history["val_accuracy"].back();
    if (trainer.rank() == 0) std::printf("final test accuracy: %.4f\n", accuracy);
    return accuracy >= min_accuracy ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "convnet_digits_fit: %s\n", e.what());
    return 2;
  }
}
