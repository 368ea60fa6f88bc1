#include "trainer/strategy.h"

#include <cstdlib>
#include <mutex>

#include "collectives/init.h"
#include "collectives/store.h"

namespace loom::trainer {

Strategy Strategy::single_device() { return Strategy{}; }

Strategy Strategy::mirrored(std::shared_ptr<collectives::ProcessGroup> group) {
  Strategy s;
  s.kind = StrategyKind::kMirrored;
  s.group = std::move(group);
  return s;
}

Strategy Strategy::fully_sharded(std::shared_ptr<collectives::ProcessGroup> group) {
  Strategy s;
  s.kind = StrategyKind::kFullyShard;
  s.group = std::move(group);
  return s;
}

Strategy Strategy::from_env() {
  if (!launched()) return single_device();
  return world_group()->size() > 1 ? mirrored() : single_device();
}

std::string Strategy::name() const {
  switch (kind) {
    case StrategyKind::kMirrored:
      return "mirrored";
    case StrategyKind::kFullyShard:
      return "fully_sharded";
    default:
      return "single_device";
  }
}

bool launched() {
  for (const char* v : {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"})
    if (const char* e = std::getenv(v); e && *e) return true;
  return false;
}

std::shared_ptr<collectives::ProcessGroup> world_group() {
  static std::mutex mu;
  static std::shared_ptr<collectives::ProcessGroup> world;
  std::lock_guard<std::mutex> lock(mu);
  if (!world) {
    if (launched()) {
      const char* b = std::getenv("LOOM_BACKEND");
      world = collectives::init_process_group(b && *b ? b : "gloo");
    } else {
      world = std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0, 1, "gloo");
    }
  }
  return world;
}

}  // namespace loom::trainer
