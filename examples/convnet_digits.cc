// The ConvNet of every PyTorch-vs-TensorFlow comparison, on real handwritten digits, written as the PyTorch listing
// is: a model, an optimizer, a schedule and an explicit training loop. Under trainlaunch/mpirun/srun with more than
// one rank it trains data-parallel (DistributedDataParallel): each rank takes its part of every global batch.
//
//   .venv/bin/python scripts/digits_to_idx.py build/digits        # sklearn's 1,797 digits -> 28x28 IDX files
//   build/examples/convnet_digits --data build/digits
//   build/launcher/trainlaunch --standalone --nproc-per-node 2 -- build/examples/convnet_digits --data build/digits
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "autograd/functions.h"
#include "collectives/init.h"
#include "collectives/store.h"
#include "data/dataset.h"
#include "nn/clip_grad.h"
#include "nn/conv.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/lr_scheduler.h"
#include "nn/optim.h"
#include "parallel/ddp.h"

using namespace loom;

/// train-images-idx3-ubyte (or .gz) and the labels beside it.
data::InMemoryDataset load_split(const std::string& dir, const std::string& split) {
  auto path = [&](const std::string& name) {
    const std::string p = dir + "/" + split + "-" + name;
    return std::filesystem::exists(p) ? p : p + ".gz";
  };
  return data::read_mnist(path("images-idx3-ubyte"), path("labels-idx1-ubyte"));
}

int main(int argc, char** argv) {
  CLI::App app{"ConvNet on the digits set (explicit training loop; DDP when launched on several ranks)"};
  std::string data_dir = "digits";
  int epochs = 8, batch_size = 32, seed = 0;
  double lr = 2e-3, min_accuracy = 0;
  app.add_option("--data", data_dir, "folder of the IDX files (scripts/digits_to_idx.py writes them)");
  app.add_option("--epochs", epochs, "epochs");
  app.add_option("--batch-size", batch_size, "global batch size (split across the ranks)");
  app.add_option("--lr", lr, "peak learning rate of the cosine schedule");
  app.add_option("--seed", seed, "seed of the initial weights, dropout and shuffling");
  app.add_option("--min-accuracy", min_accuracy, "exit 1 when the final test accuracy is lower (for tests)");
  CLI11_PARSE(app, argc, argv);

  try {
    // torch.distributed.init_process_group: ranks from the launcher's environment, one rank without one.
    const bool launched =
        std::getenv("WORLD_SIZE") || std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("SLURM_NTASKS");
    auto world = launched ? collectives::init_process_group("gloo")
                          : std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0,
                                                                        1, "gloo");
    const int rank = world->rank(), world_size = world->size();

    auto train_set = load_split(data_dir, "train");
    auto test_set = load_split(data_dir, "t10k");

    // The model: the same initial weights on every rank (one seed).
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
    if (rank == 0) {
      std::printf("%s\nparameters: %lld\n", model->repr().c_str(), static_cast<long long>(model->num_parameters()));
      std::printf("train %lld images, test %lld images, %d rank%s\n", static_cast<long long>(train_set.size()),
                  static_cast<long long>(test_set.size()), world_size, world_size > 1 ? "s" : "");
    }
    std::unique_ptr<parallel::DistributedDataParallel> ddp;
    if (world_size > 1) ddp = std::make_unique<parallel::DistributedDataParallel>(model, world);

    // AdamW, cosine schedule over the whole run, gradient clipping at 1.
    data::EpochPlan plan;
    plan.global_batch = batch_size;
    plan.seed = static_cast<uint64_t>(seed);
    plan.rank = rank;
    plan.world_size = world_size;
    const int64_t steps_per_epoch = static_cast<int64_t>(data::epoch_shards(train_set.size(), 0, plan).size());
    nn::AdamW optimizer(nn::weight_decay_groups(model->named_parameters(), lr, 0.01), nn::AdamWOptions{.lr = lr});
    nn::WarmupCosineLR scheduler(optimizer, lr, lr / 20, steps_per_epoch / 2, epochs * steps_per_epoch);

    double accuracy = 0;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      model->train();
      double loss_sum = 0;
      int64_t rows = 0;
      for (const data::Shard& shard : data::epoch_shards(train_set.size(), epoch, plan)) {
        data::Batch batch = train_set.gather(shard.indices);
        // This rank's rows of the global batch: dropout draws their part of one rank's masks, and the loss is weighted
        // by the rank's share so DDP's average is the mean over the global batch.
        nn::DropoutRowShard rows_of_batch(shard.row_begin, shard.global_rows);
        Tensor logits = (*model)(batch.x);
        Tensor loss = cross_entropy(logits, batch.y);
        const double share = static_cast<double>(shard.indices.size()) * world_size / shard.global_rows;
        optimizer.zero_grad();
        (share == 1.0 ? loss : loss * share).backward();
        nn::clip_grad_norm_(model->parameters(), 1.0);
        optimizer.step();
        scheduler.step();
        loss_sum += loss.item() * static_cast<double>(shard.indices.size());
        rows += static_cast<int64_t>(shard.indices.size());
      }

      // Test accuracy: each rank counts its part, the counts are summed.
      model->eval();
      NoGradGuard no_grad;
      plan.shuffle = false;
      double counts[4] = {loss_sum, static_cast<double>(rows), 0, 0};  // train loss sum, rows, correct, tested
      for (const data::Shard& shard : data::epoch_shards(test_set.size(), 0, plan, /*for_training=*/false)) {
        if (shard.indices.empty()) continue;
        data::Batch batch = test_set.gather(shard.indices);
        auto pred = ops::argmax((*model)(batch.x), 1).to_vector<int64_t>();
        auto y = batch.y.to_vector<int64_t>();
        for (size_t i = 0; i < y.size(); ++i) counts[2] += pred[i] == y[i] ? 1 : 0;
        counts[3] += static_cast<double>(y.size());
      }
      plan.shuffle = true;
      Tensor c = from_vector(std::vector<double>(counts, counts + 4), {4});
      world->allreduce(c, collectives::AllreduceOptions{.rank_ordered = true})->wait();
      auto v = c.to_vector<double>();
      accuracy = v[2] / v[3];
      if (rank == 0)
        std::printf("epoch %d/%d: train loss %.4f, lr %.2e, test accuracy %.2f%% (%d/%d)\n", epoch + 1, epochs,
                    v[0] / v[1], optimizer.param_groups()[0].lr, 100 * accuracy, static_cast<int>(v[2]),
                    static_cast<int>(v[3]));
      std::fflush(stdout);
    }
    if (rank == 0) std::printf("final test accuracy: %.4f\n", accuracy);
    return accuracy >= min_accuracy ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "convnet_digits: %s\n", e.what());
    return 2;
  }
}
