// Test helper: runs N ranks as threads of one process over a shared HashStore,
// each with its own ProcessGroup, and rethrows the first failure.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "collectives/process_group.h"
#include "collectives/store.h"

namespace loom::collectives::testing {

inline ProcessGroupOptions fast_options() {
  ProcessGroupOptions o;
  o.timeout = Millis(20000);
  o.check = false;
  return o;
}

/// Calls body(pg) on `n` threads, one ProcessGroup per rank.
inline void run_ranks(int n, const std::function<void(ProcessGroup&)>& body, ProcessGroupOptions opts = fast_options(),
                      const std::string& backend = "gloo") {
  auto store = std::make_shared<HashStore>(Millis(20000));
  std::vector<std::thread> threads;
  std::exception_ptr first;
  std::mutex mu;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        ProcessGroup pg(store, r, n, backend, opts);
        body(pg);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu);
        if (!first) first = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace loom::collectives::testing
