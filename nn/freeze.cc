#include "nn/freeze.h"

#include <fnmatch.h>

#include <unordered_set>

namespace loom::nn {

namespace {

bool glob_match(const std::string& glob, const std::string& name) {
  return ::fnmatch(glob.c_str(), name.c_str(), 0) == 0;
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == '.') {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

/// The parameter name that looks most like `glob`: the most dotted segments matching the glob's segment at the same
/// position (first such name on ties), for the "names look like" hint.
std::string closest_name(const std::string& glob, const std::vector<std::string>& names) {
  const std::vector<std::string> g = split_dots(glob);
  std::string best = names.empty() ? std::string() : names.front();
  int best_score = -1;
  for (const auto& n : names) {
    const std::vector<std::string> parts = split_dots(n);
    int score = 0;
    for (size_t i = 0; i < g.size() && i < parts.size(); ++i) score += glob_match(g[i], parts[i]) ? 1 : 0;
    if (score > best_score) best_score = score, best = n;
  }
  return best;
}

}  // namespace

FreezeStats freeze_stats(const Module& m) {
  FreezeStats s;
  for (const auto& [name, p] : m.named_parameters()) {
    if (p.requires_grad()) {
      ++s.trainable_params;
      s.trainable_numel += p.numel();
    } else {
      ++s.frozen_params;
      s.frozen_numel += p.numel();
    }
  }
  return s;
}

FreezeStats freeze_parameters(Module& m, const std::vector<std::string>& globs, const std::string& key) {
  // Every name of every parameter (state_dict() lists tied tensors under each name; buffers are skipped).
  const NamedTensors params = m.named_parameters();
  std::vector<std::string> names;
  std::vector<Tensor> tensors;
  for (const auto& [name, t] : m.state_dict()) {
    for (const auto& [pn, p] : params)
      if (p.storage() == t.storage() && p.storage_offset() == t.storage_offset() && p.sizes() == t.sizes()) {
        names.push_back(name);
        tensors.push_back(p);
        break;
      }
  }
  std::unordered_set<const TensorImpl*> hit;
  for (size_t gi = 0; gi < globs.size(); ++gi) {
    bool any = false;
    for (size_t i = 0; i < names.size(); ++i)
      if (glob_match(globs[gi], names[i])) {
        any = true;
        hit.insert(tensors[i].impl_ptr().get());
      }
    LOOM_CHECK(any, key, "[", gi, "] '", globs[gi], "' matches none of the ", params.size(),
               " parameters; names look like ", closest_name(globs[gi], names),
               " (globs use * and ?, and * also matches dots)");
  }
  int64_t left = 0, total = 0;
  for (const auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    ++total;
    if (!hit.count(p.impl_ptr().get())) ++left;
  }
  if (total > 0)
    LOOM_CHECK(left > 0, key, " freezes all ", total, " trainable parameters (", freeze_stats(m).trainable_numel,
               " elements); nothing would train: leave at least one parameter out of the globs");
  for (const auto& [name, p] : params)
    if (hit.count(p.impl_ptr().get())) {
      Tensor t = p;
      t.set_requires_grad(false);
    }
  return freeze_stats(m);
}

}  // namespace loom::nn
