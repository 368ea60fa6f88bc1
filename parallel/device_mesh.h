// DeviceMesh: the world's ranks arranged as a named grid (dimensions `dp`,
// `fsdp`, `tp`), with one process group per dimension holding the ranks that
// differ only along it. The last dimension varies fastest, so a `tp` group
// placed last holds consecutive ranks (one node's GPUs on a cluster).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "collectives/process_group.h"

namespace loom::parallel {

using collectives::ProcessGroup;

class DeviceMesh {
 public:
  /// dims: (name, size) pairs in order, names among "dp", "fsdp", "tp", each at
  /// most once, sizes >= 1 whose product is world->size(). Collective over the
  /// world: every rank must construct the same mesh. Throws InvalidArgument naming
  /// the dimensions and the world size when they do not fit.
  DeviceMesh(std::shared_ptr<ProcessGroup> world, std::vector<std::pair<std::string, int>> dims);

  /// Size of a dimension; 1 for a dimension the mesh does not have.
  int size(const std::string& dim) const;
  /// This rank's coordinate along dim (its rank in group(dim)); 0 when absent.
  int coordinate(const std::string& dim) const;
  bool has_dim(const std::string& dim) const;
  /// The group of ranks that share every coordinate but dim's. Throws
  /// InvalidArgument naming the dimension when the mesh has no such dimension.
  std::shared_ptr<ProcessGroup> group(const std::string& dim) const;
  const std::shared_ptr<ProcessGroup>& world() const { return world_; }
  const std::vector<std::pair<std::string, int>>& dims() const { return dims_; }
  /// "DeviceMesh(fsdp=2, tp=2)".
  std::string str() const;

 private:
  int index_of(const std::string& dim) const;  // -1 when absent
  std::shared_ptr<ProcessGroup> world_;
  std::vector<std::pair<std::string, int>> dims_;
  std::vector<int> coord_;
  std::vector<std::shared_ptr<ProcessGroup>> groups_;
};

}  // namespace loom::parallel
