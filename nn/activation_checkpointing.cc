#include "nn/activation_checkpointing.h"

#include <memory>

namespace loom::nn {

ActivationCheckpointing ActivationCheckpointing::parse(const std::string& text) {
  ActivationCheckpointing s;
  if (text == "none") return s;
  if (text == "full") {
    s.mode = CheckpointMode::kFull;
    return s;
  }
  if (text == "selective") {
    s.mode = CheckpointMode::kSelective;
    return s;
  }
  const std::string prefix = "selective:";
  if (text.rfind(prefix, 0) == 0) {
    const std::string k = text.substr(prefix.size());
    bool digits = !k.empty() && k.size() <= 9;
    for (char c : k) digits = digits && c >= '0' && c <= '9';
    if (digits && std::stoi(k) >= 1) {
      s.mode = CheckpointMode::kSelective;
      s.every = std::stoi(k);
      return s;
    }
  }
  LOOM_THROW(InvalidArgument, "activation checkpointing: '", text,
             "' is not one of none, full, selective, selective:K (K a positive integer: every K-th block full)");
}

std::string ActivationCheckpointing::str() const {
  if (mode == CheckpointMode::kSelective && every > 0) return "selective:" + std::to_string(every);
  return autograd::checkpoint_mode_name(mode);
}

CheckpointMode ActivationCheckpointing::block_mode(size_t i) const {
  if (mode == CheckpointMode::kSelective && every > 0)
    return i % static_cast<size_t>(every) == 0 ? CheckpointMode::kFull : CheckpointMode::kNone;
  return mode;
}

void checkpoint_module(Module& root, const std::string& name, CheckpointMode mode) {
  Module* target = nullptr;
  for (auto& [n, m] : root.named_modules())
    if (n == name) target = m;
  LOOM_CHECK(target != nullptr, "checkpoint_module: ", root.type_name(), " has no submodule '", name,
             "'; use a dotted name from named_modules() (e.g. transformer.h.0)");
  target->set_activation_checkpointing(mode);
  if (mode == CheckpointMode::kNone) return;
  // The forward count of target when root's forward started; -1 outside a forward of root.
  auto start = std::make_shared<int64_t>(-1);
  const std::string root_type = root.type_name();
  root.register_forward_pre_hook([start, target](Module&) { *start = target->forward_count(); });
  root.register_forward_hook([start, target, name, root_type](Module&) {
    const int64_t before = *start;
    *start = -1;
    if (before < 0 || target->activation_checkpointing() == CheckpointMode::kNone) return;
    // The root itself counts its own call before its hooks run.
    LOOM_CHECK(target->forward_count() > before || name.empty(), "activation checkpointing: module '", name, "' (",
               target->type_name(), ") is set to checkpoint (",
               autograd::checkpoint_mode_name(target->activation_checkpointing()),
               ") but did not run in the forward of ", root_type,
               "; a module that does not run cannot be recomputed: checkpoint only modules the forward calls through "
               "their operator()");
  });
}

void apply_activation_checkpointing(CausalLM& model, const ActivationCheckpointing& spec) {
  const auto blocks = model.blocks();
  std::vector<std::pair<std::string, Module*>> named = model.named_modules();
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::string name;
    for (auto& [n, m] : named)
      if (m == blocks[i].get()) name = n;
    LOOM_CHECK(!name.empty(), "apply_activation_checkpointing: block ", i, " is not a submodule of ",
               model.type_name());
    const CheckpointMode mode = spec.block_mode(i);
    if (mode == CheckpointMode::kNone) {
      blocks[i]->set_activation_checkpointing(mode);
      continue;
    }
    checkpoint_module(model, name, mode);
  }
}

}  // namespace loom::nn
