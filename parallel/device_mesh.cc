#include "parallel/device_mesh.h"

#include <algorithm>
#include <sstream>

#include "tensor/error.h"

namespace loom::parallel {

namespace {
const char* const kDimNames[] = {"dp", "fsdp", "tp"};
}

DeviceMesh::DeviceMesh(std::shared_ptr<ProcessGroup> world, std::vector<std::pair<std::string, int>> dims)
    : world_(std::move(world)), dims_(std::move(dims)) {
  LOOM_CHECK(world_ != nullptr, "DeviceMesh: the world group is null; call init_process_group first");
  LOOM_CHECK(!dims_.empty(), "DeviceMesh: give at least one dimension, e.g. {{\"dp\", ", world_->size(), "}}");
  int64_t product = 1;
  for (size_t i = 0; i < dims_.size(); ++i) {
    const auto& [name, n] = dims_[i];
    LOOM_CHECK(std::find(std::begin(kDimNames), std::end(kDimNames), name) != std::end(kDimNames),
               "DeviceMesh: unknown dimension '", name, "'; use dp, fsdp or tp");
    for (size_t j = 0; j < i; ++j) LOOM_CHECK(dims_[j].first != name, "DeviceMesh: dimension '", name, "' given twice");
    LOOM_CHECK(n >= 1, "DeviceMesh: dimension ", name, " has size ", n, "; sizes must be at least 1");
    product *= n;
  }
  LOOM_CHECK(product == world_->size(), "DeviceMesh: ", str(), " needs ", product, " ranks but the world has ",
             world_->size(), "; choose sizes whose product is the world size");
  // Coordinates of this rank (row-major, last dimension fastest).
  const int nd = static_cast<int>(dims_.size());
  coord_.assign(nd, 0);
  std::vector<int64_t> stride(nd, 1);
  for (int d = nd - 2; d >= 0; --d) stride[d] = stride[d + 1] * dims_[d + 1].second;
  for (int d = 0; d < nd; ++d) coord_[d] = static_cast<int>((world_->rank() / stride[d]) % dims_[d].second);
  // One group per line along each dimension; every rank takes part in creating
  // all of them (new_group is collective over the world) and keeps its own.
  groups_.resize(nd);
  for (int d = 0; d < nd; ++d) {
    const int n = dims_[d].second;
    for (int base = 0; base < world_->size(); ++base) {
      if ((base / stride[d]) % n != 0) continue;  // base: coordinate 0 along d
      std::vector<int> ranks;
      for (int k = 0; k < n; ++k) ranks.push_back(static_cast<int>(base + k * stride[d]));
      auto g = world_->new_group(ranks);
      if (g) groups_[d] = g;
    }
    LOOM_CHECK(groups_[d] != nullptr, "DeviceMesh: rank ", world_->rank(), " found no group along ", dims_[d].first);
  }
}

int DeviceMesh::index_of(const std::string& dim) const {
  for (size_t i = 0; i < dims_.size(); ++i)
    if (dims_[i].first == dim) return static_cast<int>(i);
  return -1;
}

bool DeviceMesh::has_dim(const std::string& dim) const { return index_of(dim) >= 0; }

int DeviceMesh::size(const std::string& dim) const {
  int i = index_of(dim);
  return i < 0 ? 1 : dims_[i].second;
}

int DeviceMesh::coordinate(const std::string& dim) const {
  int i = index_of(dim);
  return i < 0 ? 0 : coord_[i];
}

std::shared_ptr<ProcessGroup> DeviceMesh::group(const std::string& dim) const {
  int i = index_of(dim);
  LOOM_CHECK(i >= 0, "DeviceMesh::group: ", str(), " has no dimension '", dim, "'");
  return groups_[i];
}

std::string DeviceMesh::str() const {
  std::ostringstream os;
  os << "DeviceMesh(";
  for (size_t i = 0; i < dims_.size(); ++i) os << (i ? ", " : "") << dims_[i].first << "=" << dims_[i].second;
  os << ")";
  return os.str();
}

}  // namespace loom::parallel
