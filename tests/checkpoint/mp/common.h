// Shared by the multi-rank checkpoint tests: a training "process state" (model, wrapper, AdamW, LR schedule, a data
// generator) for each layout, built fresh so a resumed run shares nothing with the run that saved, and a checkpoint
// root directory shared by the ranks of one test.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "nn/lr_scheduler.h"
#include "parallel/ddp.h"
#include "parallel/device_mesh.h"
#include "parallel/fully_shard.h"
#include "tests/parallel/harness.h"

namespace loom::ctest {

/// kFsdpTp: a DeviceMesh (fsdp = world / 2, tp = 2); the model is TP-converted over tp, then FSDP-wrapped over fsdp.
enum class Layout { kDDP, kFSDP, kTP, kFsdpTp };

/// One run's objects. perturb: overwrite the initial weights first, so only a load can make it match. freeze: globs of
/// parameters to freeze (nn::freeze_parameters) before wrapping; then the DDP and TP optimizers are built over every
/// parameter, frozen ones included, as PyTorch users do.
struct TrainRun {
  TrainRun(Layout layout, bool perturb, std::shared_ptr<collectives::ProcessGroup> group = ptest::world(),
           ptest::Family family = ptest::Family::kGPT2, const std::vector<std::string>& freeze = {});
  ~TrainRun();
  /// One optimizer step on global batch `step` (rows of this rank); returns the loss averaged over the group.
  double train_step(int step);
  /// The loss on a fixed batch (no update), averaged over the group.
  double eval_loss();
  checkpoint::Target target();

  Layout layout;
  std::shared_ptr<collectives::ProcessGroup> group;
  std::unique_ptr<parallel::DeviceMesh> mesh;         // kFsdpTp only
  std::shared_ptr<collectives::ProcessGroup> dp, tp;  // data-parallel and tensor-parallel groups (null: none)
  std::shared_ptr<nn::CausalLM> model;
  std::unique_ptr<parallel::DistributedDataParallel> ddp;
  std::unique_ptr<parallel::FullyShard> fsdp;
  std::unique_ptr<nn::AdamW> opt;
  std::unique_ptr<nn::WarmupCosineLR> sched;
  Generator gen{99};  // picks which global batch each step uses: its state must
                      // be restored for an exact resume
};

/// <build>/checkpoint_mp_tmp/<name>, emptied by rank 0; every rank returns after it exists.
std::string fresh_root(const std::string& name);

}  // namespace loom::ctest
