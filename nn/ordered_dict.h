// OrderedDict: a string-keyed map that remembers insertion order, as Python's
// dict does. Module::state_dict() returns one; checkpoints iterate it in order.
#pragma once

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace loom::nn {

template <typename V>
class OrderedDict {
 public:
  using Item = std::pair<std::string, V>;

  /// Inserts key -> value at the end, or replaces the value of an existing key in place.
  void insert(const std::string& key, V value) {
    auto it = index_.find(key);
    if (it != index_.end()) {
      items_[it->second].second = std::move(value);
      return;
    }
    index_.emplace(key, items_.size());
    items_.emplace_back(key, std::move(value));
  }
  bool contains(const std::string& key) const { return index_.count(key) != 0; }
  /// The value of key; throws InvalidArgument naming the key when absent.
  const V& at(const std::string& key) const {
    auto it = index_.find(key);
    LOOM_CHECK(it != index_.end(), "OrderedDict::at: no key '", key, "'");
    return items_[it->second].second;
  }
  V& at(const std::string& key) {
    auto it = index_.find(key);
    LOOM_CHECK(it != index_.end(), "OrderedDict::at: no key '", key, "'");
    return items_[it->second].second;
  }
  /// Pointer to the value of key, or null.
  const V* find(const std::string& key) const {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &items_[it->second].second;
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    out.reserve(items_.size());
    for (const auto& kv : items_) out.push_back(kv.first);
    return out;
  }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  auto begin() const { return items_.begin(); }
  auto end() const { return items_.end(); }
  auto begin() { return items_.begin(); }
  auto end() { return items_.end(); }
  const std::vector<Item>& items() const { return items_; }

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace loom::nn
