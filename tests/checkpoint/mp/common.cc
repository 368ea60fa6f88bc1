#include "tests/checkpoint/mp/common.h"

#include <filesystem>

#include "autograd/functions.h"
#include "nn/clip_grad.h"
#include "nn/freeze.h"
#include "parallel/tensor_parallel.h"
#include "tensor/ops.h"

namespace loom::ctest {

namespace {
constexpr double kLr = 1e-2, kWd = 0.1, kClip = 0.5;

/// Every parameter, frozen ones included, in the decay (>= 2-D) and no-decay groups.
std::vector<nn::ParamGroup> all_param_groups(const nn::Module& m) {
  nn::ParamGroup decay{{}, kLr, kWd}, no_decay{{}, kLr, 0.0};
  for (const auto& [name, p] : m.named_parameters()) (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  return {decay, no_decay};
}
}  // namespace

TrainRun::TrainRun(Layout l, bool perturb, std::shared_ptr<collectives::ProcessGroup> g, ptest::Family family,
                   const std::vector<std::string>& freeze)
    : layout(l), group(std::move(g)) {
  model = ptest::tiny_model(family);
  if (perturb) {
    autograd::NoGradGuard ng;
    for (auto& [n, p] : model->named_parameters()) {
      float* d = p.data<float>();
      for (int64_t i = 0; i < p.numel(); ++i) d[i] = 0.25f;
    }
  }
  if (!freeze.empty()) nn::freeze_parameters(*model, freeze, "test.freeze");
  if (layout == Layout::kDDP || layout == Layout::kFSDP) dp = group;
  if (layout == Layout::kTP) tp = group;
  if (layout == Layout::kFsdpTp) {
    mesh = std::make_unique<parallel::DeviceMesh>(
        group, std::vector<std::pair<std::string, int>>{{"fsdp", group->size() / 2}, {"tp", 2}});
    dp = mesh->group("fsdp");
    tp = mesh->group("tp");
    parallel::tensor_parallelize(*model, tp);
    fsdp = std::make_unique<parallel::FullyShard>(model, dp);
    opt = std::make_unique<nn::AdamW>(fsdp->param_groups(kLr, kWd), nn::AdamWOptions{});
  } else if (layout == Layout::kDDP) {
    ddp = std::make_unique<parallel::DistributedDataParallel>(model, group);
    opt = std::make_unique<nn::AdamW>(
        freeze.empty() ? nn::weight_decay_groups(model->named_parameters(), kLr, kWd) : all_param_groups(*model),
        nn::AdamWOptions{});
  } else if (layout == Layout::kFSDP) {
    fsdp = std::make_unique<parallel::FullyShard>(model, group);
    opt = std::make_unique<nn::AdamW>(fsdp->param_groups(kLr, kWd), nn::AdamWOptions{});
  } else {
    parallel::tensor_parallelize(*model, group);
    opt = std::make_unique<nn::AdamW>(
        freeze.empty() ? nn::weight_decay_groups(model->named_parameters(), kLr, kWd) : all_param_groups(*model),
        nn::AdamWOptions{});
  }
  sched = std::make_unique<nn::WarmupCosineLR>(*opt, kLr, kLr / 10, 3, 20);
}

TrainRun::~TrainRun() {
  sched.reset();
  opt.reset();
  fsdp.reset();
  ddp.reset();
  model.reset();
  dp.reset();
  tp.reset();
  mesh.reset();
}

double TrainRun::train_step(int step) {
  Tensor pick = ops::randint(0, 50, {1}, gen);
  ptest::Batch b = ptest::global_batch(step * 50 + static_cast<int>(pick.item<int64_t>()));
  // The ranks of a tp group see the same rows; data-parallel ranks their own.
  if (dp) b = ptest::rows(b, dp->rank(), dp->size());
  opt->zero_grad();
  if (fsdp) fsdp->zero_grad();
  Tensor loss = model->loss(b.idx, b.targets);
  loss.backward();
  if (layout == Layout::kDDP) nn::clip_grad_norm_(model->parameters(), kClip);
  if (layout == Layout::kFSDP) fsdp->clip_grad_norm_(kClip);
  if (layout == Layout::kFsdpTp) fsdp->clip_grad_norm_(kClip, 2.0, tp);
  if (layout == Layout::kTP) parallel::tp_clip_grad_norm_(model->parameters(), kClip, *tp);
  opt->step();
  sched->step();
  return dp ? ptest::group_mean(*dp, loss.item<double>()) : loss.item<double>();
}

double TrainRun::eval_loss() {
  ptest::Batch b = ptest::global_batch(4242);
  if (dp) b = ptest::rows(b, dp->rank(), dp->size());
  autograd::NoGradGuard ng;
  Tensor loss = model->loss(b.idx, b.targets);
  return dp ? ptest::group_mean(*dp, loss.item<double>()) : loss.item<double>();
}

checkpoint::Target TrainRun::target() {
  checkpoint::Target t;
  if (fsdp)
    t.fsdp = fsdp.get();
  else
    t.module = model.get();
  t.optimizer = opt.get();
  t.scheduler = sched.get();
  t.rngs["pick"] = &gen;
  if (dp) {
    t.coords.dp_rank = dp->rank();
    t.coords.dp_size = dp->size();
  }
  if (tp) {
    t.coords.tp_rank = tp->rank();
    t.coords.tp_size = tp->size();
  }
  return t;
}

std::string fresh_root(const std::string& name) {
  const std::string root = std::string(LOOM_BINARY_DIR) + "/checkpoint_mp_tmp/" + name;
  if (ptest::world()->rank() == 0) {
    std::filesystem::remove_all(root);
    std::filesystem::create_directories(root);
  }
  ptest::world()->barrier()->wait();
  return root;
}

}  // namespace loom::ctest
