#include "collectives/backend.h"

#include <map>
#include <mutex>

#include "collectives/gloo/gloo_backend.h"
#include "collectives/mpi/mpi_backend.h"
#ifdef LOOM_WITH_NCCL
#include "collectives/nccl/nccl_backend.h"
#endif

namespace loom::collectives {

namespace {
struct Registry {
  std::mutex mu;
  std::map<std::string, BackendFactory> factories;
  Registry() {
    // Built-ins are registered here, not by static initialisers, so that a
    // static library keeps them.
    factories["gloo"] = make_gloo_backend;
    factories["mpi"] = make_mpi_backend;
#ifdef LOOM_WITH_NCCL
    factories["nccl"] = make_nccl_backend;
#endif
  }
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void register_backend(const std::string& name, BackendFactory factory) {
  std::lock_guard<std::mutex> g(registry().mu);
  registry().factories[name] = std::move(factory);
}

bool has_backend(const std::string& name) {
  std::lock_guard<std::mutex> g(registry().mu);
  return registry().factories.count(name) > 0;
}

std::vector<std::string> backend_names() {
  std::lock_guard<std::mutex> g(registry().mu);
  std::vector<std::string> out;
  for (const auto& [n, f] : registry().factories) out.push_back(n);
  return out;
}

std::unique_ptr<Backend> create_backend(const std::string& name, const BackendContext& ctx) {
  BackendFactory f;
  {
    std::lock_guard<std::mutex> g(registry().mu);
    auto it = registry().factories.find(name);
    if (it == registry().factories.end()) {
      std::string names;
      for (const auto& [n, unused] : registry().factories) names += (names.empty() ? "" : ", ") + n;
      LOOM_THROW(InvalidArgument, "create_backend: no backend named '", name, "' in this build; available: ", names,
                 (name == "nccl" ? " (nccl needs a CUDA build with NCCL found)" : ""));
    }
    f = it->second;
  }
  return f(ctx);
}

}  // namespace loom::collectives
